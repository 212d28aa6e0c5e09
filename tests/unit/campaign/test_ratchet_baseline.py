"""Phase 8's configs (baseline + top X tuned), and the standing champion as the next baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perftune.campaign.base import Ctx
from perftune.campaign.phases import champion_as_baseline, suite_configs
from perftune.campaign.state import CampaignState, Intent, TunedConfig


def _ctx(tmp: Path, **kw: Any) -> Ctx:
    intent = Intent.model_validate({"model": "llama-3.1-8b", "engines": ["sim", "vllm"], **kw})
    return Ctx(tmp, CampaignState(run_id="r", created_at="t", intent=intent, phases={}), lambda _m: None)


def _top(*levers: dict[str, Any]) -> list[TunedConfig]:
    return [
        TunedConfig(
            name="tuned" if k == 0 else f"top{k + 1}", arm=f"a{k}", levers=lv, score=1.0, crowned=k == 0
        )
        for k, lv in enumerate(levers)
    ]


def test_phase8_benches_the_baseline_and_the_top_x_once_each(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, top_x=2)
    ctx.state.facts.tuned_top["sim"] = _top({"batch-cap": 512}, {}, {"prefill-chunk": 16384}, {"x": 1})
    names = [n for n, _ in suite_configs(ctx, "sim")]
    # top 2 of phase 3: one of them equals the baseline's levers, so it is not benched twice
    assert names == ["baseline", "tuned"]
    ctx.state.intent = ctx.intent.model_copy(
        update={"suite": ctx.intent.suite.model_copy(update={"top_x": 3})}
    )
    assert [n for n, _ in suite_configs(ctx, "sim")] == ["baseline", "tuned", "top3"]
    assert suite_configs(ctx, "vllm") == [("baseline", {})]  # not tuned


def test_an_older_bundle_with_only_the_crowned_levers_still_benches_them(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    ctx.state.facts.tuned["sim"] = {"batch-cap": 512}
    assert suite_configs(ctx, "sim") == [("baseline", {}), ("tuned", {"batch-cap": 512})]


CHAMP = {
    "campaign": "c1",
    "engine": "sim",
    "config": "tuned",
    "levers": {"batch-cap": 512},
    "value": "9.0 tok/s/GPU",
    "tier": "DRAFT",
    "simulated": True,
}


def test_the_standing_champion_becomes_its_engines_baseline(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    decisions = champion_as_baseline(ctx, CHAMP)
    assert ctx.intent.serving.levers == {"sim": {"batch-cap": 512}}
    assert "campaign c1" in ctx.state.facts.baseline_source["sim"]
    assert "champions WHERE campaign_id = 'c1'" in decisions[0][0]
    assert suite_configs(ctx, "sim")[0] == ("baseline", {"batch-cap": 512})


def test_levers_given_or_fresh_baseline_or_another_engine_keep_the_defaults(tmp_path: Path) -> None:
    for kw, why in [
        ({"levers": {"sim": {"prefill-chunk": 2048}}}, "levers given"),
        ({"baseline_from_champion": False}, "--fresh-baseline"),
        ({"engines": ["vllm"]}, "not in this campaign"),
    ]:
        ctx = _ctx(tmp_path, **kw)
        before = ctx.intent.serving.levers
        (decision,) = champion_as_baseline(ctx, CHAMP)
        assert (
            why in decision[1] and ctx.intent.serving.levers == before and not ctx.state.facts.baseline_source
        )
