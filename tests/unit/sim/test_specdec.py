"""The simulator's speculative-decoding model: acceptance 0 gives no gain and a cost; acceptance 0.8 at
K=4 gives the expected tokens per step and, at c=1 where a step is bound by reading the weights, about
that speedup; speculation stops paying past a crossover concurrency."""

from __future__ import annotations

import pytest

from perftune.hardware.ceilings import gpu
from perftune.models.resolve import model_card
from perftune.serving.specdec import iid_profile, tokens_per_step
from perftune.sim.calibration import for_gpu
from perftune.sim.config import SimConfig
from perftune.sim.specdec import (
    NGRAM_STEP_OVERHEAD_MS,
    NGRAM_STEP_OVERHEAD_MS_PER_SEQ,
    crossover,
    predict_decode,
)
from perftune.sim.timing import StepModel

H100 = gpu("h100")
MODEL = StepModel.build(model_card("llama-3.1-8b"), H100, SimConfig(), for_gpu(H100))


def test_acceptance_08_at_k4_gives_the_expected_tokens_per_step() -> None:
    prof = iid_profile(0.8, 4)
    assert prof == pytest.approx([0.8, 0.64, 0.512, 0.4096])
    # (1 - 0.8^5) / (1 - 0.8): the geometric series of a chain draft
    assert tokens_per_step(prof) == pytest.approx((1 - 0.8**5) / 0.2) == pytest.approx(3.3616)
    p = predict_decode(MODEL, 1, 1024, 4, prof)
    assert p.tokens_per_step == pytest.approx(3.3616)
    # c=1: five tokens cost about what one does (weight-read bound); the step gains the engine's measured
    # speculation overhead, so TPOT falls by 3.36 x plain step / (verify step + overhead)
    assert p.verify_step_ms == pytest.approx(p.base_step_ms, rel=0.05)
    assert p.draft_ms == pytest.approx(NGRAM_STEP_OVERHEAD_MS + NGRAM_STEP_OVERHEAD_MS_PER_SEQ)
    want = 3.3616 * p.base_step_ms / (p.verify_step_ms + p.draft_ms)
    assert p.tpot_speedup == pytest.approx(want) and 1.5 < p.tpot_speedup < 3.3616
    assert p.tok_s_ratio == pytest.approx(p.tpot_speedup)


def test_coverage_scales_what_the_drafts_buy() -> None:
    # prompt lookup drafts only where the context matches: at coverage 0.2 (chat, measured) a step
    # yields 1 + 0.2 x 2.88 tokens, and the overhead is paid on every step
    prof = [0.83, 0.75, 0.68, 0.62]
    full = predict_decode(MODEL, 1, 1024, 4, prof)
    part = predict_decode(MODEL, 1, 1024, 4, prof, coverage=0.2)
    assert full.tokens_per_step == pytest.approx(3.88)
    assert part.tokens_per_step == pytest.approx(1 + 0.2 * 2.88)
    assert part.tpot_speedup < full.tpot_speedup
    assert predict_decode(MODEL, 1, 1024, 4, prof, coverage=0.0).tpot_speedup < 1.0
    with pytest.raises(ValueError, match="not a share"):
        predict_decode(MODEL, 1, 1024, 4, prof, coverage=1.5)


def test_acceptance_zero_gives_no_gain_and_a_cost() -> None:
    for c in (1, 16, 256):
        p = predict_decode(MODEL, c, 1024, 4, iid_profile(0.0, 4))
        assert p.tokens_per_step == 1.0
        assert p.spec_tpot_ms > p.base_tpot_ms and p.tpot_speedup < 1.0 and p.draft_ms > 0


def test_k0_is_plain_decode() -> None:
    p = predict_decode(MODEL, 8, 1024, 0, [])
    assert p.tpot_speedup == pytest.approx(1.0) and p.draft_ms == 0


def test_the_gain_shrinks_with_concurrency_and_crosses_over() -> None:
    prof = iid_profile(0.6, 4)
    ladder = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    speedups = [predict_decode(MODEL, c, 1024, 4, prof).tpot_speedup for c in ladder]
    assert speedups == sorted(speedups, reverse=True)  # monotone: more load, less gain
    x = crossover(MODEL, 1024, 4, prof, ladder)
    assert x is not None and x > 8
    assert predict_decode(MODEL, x, 1024, 4, prof).tpot_speedup <= 1.0
    below = ladder[ladder.index(x) - 1]
    assert predict_decode(MODEL, below, 1024, 4, prof).tpot_speedup > 1.0
    # a perfect draft pays longer than a mediocre one
    x_hi = crossover(MODEL, 1024, 4, iid_profile(0.95, 4), ladder)
    assert x_hi is None or x_hi >= x


def test_profile_length_must_match_k() -> None:
    with pytest.raises(ValueError, match="3 positions, K is 4"):
        predict_decode(MODEL, 1, 1024, 4, [0.5, 0.4, 0.3])


def test_sim_spec_labels_itself_and_checks_its_profile() -> None:
    from perftune import api
    from perftune.errors import ConfigError

    res = api.sim_spec("llama-3.1-8b", "h100", k=3, per_pos=[0.7, 0.5, 0.3], concurrencies=[1, 64, 512])
    assert res["simulated"] is True and "fitted to vLLM 0.26.0" in res["draft"]
    assert [r["concurrency"] for r in res["rows"]] == [1, 64, 512]
    assert res["rows"][0]["tokens_per_step"] == pytest.approx(2.5)
    for bad in (
        {"per_pos": [0.3, 0.5, 0.2]},
        {"per_pos": [0.5, 0.4]},
        {"acceptance": 1.5},
        {},
        {"acceptance": 0.5, "coverage": -0.1},
    ):
        with pytest.raises(ConfigError):
            api.sim_spec("llama-3.1-8b", "h100", k=3, **bad)  # type: ignore[arg-type]
