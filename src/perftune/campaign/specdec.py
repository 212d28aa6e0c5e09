"""Phase 7: speculative decoding, measured in the engine and gated on the user's workloads.

For each real engine of the campaign and each asked method: K is screened (one deploy per K, every
workload, at the lowest concurrency), then the best K and the standing config (the campaign's levers,
no speculation) are deployed in interleaved trials (>= 3 each, a fresh deploy and a cache reset per
trial: the tuner's machinery) on every workload at every asked concurrency. Acceptance is read from
the engine per trial (vLLM's and SGLang's counters; llama-cpp-python reports none, which is said).
The gate (perftune.tune.specgate) wants a measured acceptance-length win and a TPOT win on every
workload and on the suite at the lowest concurrency; otherwise the standing config is kept. The report
shows the TPOT and tok/s ratios per workload and concurrency and the crossover concurrency.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from perftune.bench.workloads import WorkloadSpec, build_workload
from perftune.campaign.base import Ctx, Gate
from perftune.campaign.cells import hardware_label
from perftune.campaign.live_eval import LiveEvaluator
from perftune.campaign.publish import mean_or_none
from perftune.campaign.quantize import weights_on_disk
from perftune.campaign.state import Intent
from perftune.draft.gate import judge
from perftune.draft.job import PID_NAME, PROGRESS_NAME, RESULT_NAME, DraftJob, DraftResult
from perftune.errors import ConfigError, GateError
from perftune.serving.levers import translate
from perftune.serving.specdec import NEEDS_DRAFT, SPEC_LEVERS, parse_against, supported
from perftune.tune.arms import Arm
from perftune.tune.evaluate import RecordingEvaluator
from perftune.tune.search import Measure, interleave, ratio_ci
from perftune.tune.specgate import LOOP_SHARE, WorkloadAB, decide, loop_share
from perftune.util.atomic import write_text

REAL = ("vllm", "sglang", "llamacpp")
STANDING = "standing"


TRAINED = ("eagle3",)  # methods phase 6 can train a draft for


def _asked(intent: Intent) -> list[str]:
    """The methods phase 7 deploys: the candidates and the standing config's own (--against)."""
    s = intent.spec
    return list(dict.fromkeys([*s.methods, *([parse_against(s.against)[0]] if s.against else [])]))


def to_train(intent: Intent, drafts: dict[str, str] | None = None) -> list[str]:
    """Trained methods asked without a draft (none given, none trained yet): phase 6's work."""
    s = intent.spec
    return [m for m in _asked(intent) if m in TRAINED and not s.draft_model and m not in (drafts or {})]


def _spec_levers(
    intent: Intent, engine: str, version: str | None, method: str, k: int, drafts: dict[str, str] | None
) -> dict[str, Any]:
    """The campaign's levers for this engine with its own spec levers replaced by (method, K), translated
    here: an engine or version that cannot run the method fails before anything deploys."""
    s = intent.spec
    base = {k: v for k, v in intent.serving.levers.get(engine, {}).items() if k not in SPEC_LEVERS}
    levers: dict[str, Any] = {**base, "spec-method": method, "spec-k": k}
    if method not in supported(engine, version):
        translate({"spec-method": method}, engine, version)  # raises, naming what it runs
    if method in NEEDS_DRAFT:
        draft = s.draft_model or (drafts or {}).get(method)
        if not draft:
            raise ConfigError(
                f"spec method {method} needs a draft and none is given",
                hint="pass --draft-model FOLDER (a draft, or an EAGLE head trained for this model)"
                + ("; or let phase 6 train one: --ack-compute" if method in TRAINED else ""),
            )
        levers["spec-draft-model"] = draft
    translate(levers, engine, version)
    return levers


def candidates(
    intent: Intent, engine: str, version: str | None, drafts: dict[str, str] | None = None
) -> tuple[Arm, dict[str, list[Arm]]]:
    """The standing config (the campaign's levers; with --against METHOD:K, that speculation instead of
    the campaign's own) and, per method, one candidate per K, every one translated here. A candidate
    identical to the standing config is not one."""
    s = intent.spec
    base = dict(intent.serving.levers.get(engine, {}))
    if s.against:
        method, k = parse_against(s.against)
        base = _spec_levers(intent, engine, version, method, k, drafts)
    standing = Arm(engine=engine, name=STANDING, levers=base)
    out: dict[str, list[Arm]] = {}
    for method in s.methods:
        arms = [
            Arm(engine=engine, name=f"{method}-k{k}", levers=lv)
            for k in s.ks
            if (lv := _spec_levers(intent, engine, version, method, k, drafts)) != base
        ]
        if not arms:
            raise ConfigError(
                f"{method} at K={','.join(map(str, s.ks))} is the standing config itself: nothing to A/B",
                hint="ask another K or method, or change --against",
            )
        out[method] = arms
    return standing, out


def preflight(
    intent: Intent, versions: dict[str, str | None] | None = None, drafts: dict[str, str] | None = None
) -> None:
    """Every asked method translated for every real engine (a method phase 6 will train counts as
    having its draft), and phase 6's compute acknowledged: a ConfigError before anything is written."""
    train = to_train(intent, drafts)
    if train and not intent.spec.ack_compute:
        raise ConfigError(
            f"refused: {', '.join(train)} has no draft, and training one (phase 6) runs a GPU job: the "
            "target answers the training prompts, its hidden states are stored, an EAGLE-3 head is trained",
            hint="add --ack-compute to let phase 6 train it, or pass --draft-model FOLDER",
        )
    pending = {m: "<trained in phase 6>" for m in train}
    for engine in (e for e in intent.serving.engines if e in REAL):
        candidates(intent, engine, (versions or {}).get(engine), {**(drafts or {}), **pending})


def preflight_ctx(ctx: Ctx) -> None:
    preflight(ctx.intent, ctx.state.facts.engine_versions, ctx.state.facts.drafts)


def _trial_figs(run_dir: Path, m: Measure) -> tuple[dict[str, Any] | None, dict[str, float | None]]:
    """What the trial behind one measure says, its summary and records read once: the engine's acceptance
    figures (None: not reported), the share of outputs that loop, and the tokens each request's decode
    step yielded (decode tokens / (decode tokens - accepted): 1.0 without speculation)."""
    extras: dict[str, float | None] = {"loop_share": None, "tokens_per_step": None}
    if not m.path:
        return None, extras
    recs = run_dir / m.path / "records.jsonl"
    if recs.is_file():
        texts = [json.loads(line).get("text", "") for line in recs.read_text().splitlines() if line.strip()]
        extras["loop_share"] = loop_share(texts)
    p = run_dir / m.path / "summary.json"
    if not p.is_file():
        return None, extras
    trials = json.loads(p.read_text()).get("trials") or []
    spec = ((trials[0].get("engine") or {}).get("spec") or {}) if trials else {}
    if spec.get("accept_length") is None:
        return None, extras
    if spec.get("accepted") is not None:
        counts = trials[0].get("counts") or {}
        decode = int(counts.get("output_tokens") or 0) - int(counts.get("ok") or 0)
        accepted = float(spec["accepted"])
        # counters that span more than this trial's requests would overstate it: then not reported
        if decode > 0 and 0 <= accepted < decode:
            extras["tokens_per_step"] = decode / (decode - accepted)
    return spec, extras


def dummy_weights(ctx: Ctx, engine: str) -> bool:
    """Whether the engine serves random weights (`--load-format dummy`): its outputs are not a model's."""
    args = " ".join(ctx.intent.serving.engine_args.get(engine, [])).replace("=", " ").replace("_", "-")
    return "load-format dummy" in args


def _mean_profile(profiles: list[list[float]]) -> list[float]:
    """Per-position acceptance averaged over trials (positions all trials have)."""
    have = [x for x in profiles if x]
    if not have:
        return []
    n = min(len(x) for x in have)
    return [sum(x[i] for x in have) / len(have) for i in range(n)]


class _Runner:
    def __init__(self, ctx: Ctx, engine: str, method: str) -> None:
        i = ctx.intent
        self.ctx, self.engine = ctx, engine
        # one journal per method: a later method's A/B re-measures the standing config beside it
        self.dir = ctx.run_dir / "phase7" / engine / method
        self.ev = RecordingEvaluator(
            LiveEvaluator(
                ctx, self.dir, wedge_s=i.tuning.wedge_s, gpus=ctx.state.facts.tp, workloads=i.spec.workloads
            ),
            self.dir / "journal.jsonl",
            observe=ctx.observe,
        )

    def run(self, arm: Arm, concurrencies: list[int], trial: int, screening: bool) -> list[Measure]:
        out = self.ev.run(arm, concurrencies, trial, screening=screening)
        if out.failure is not None:
            raise GateError(
                f"phase 7: {arm.name} on {self.engine} failed ({out.failure.klass})",
                hint="read the log; an engine that cannot load the method fails at deploy",
                log_path=out.failure.log_path,
            )
        return out.measures


def _geo(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs and all(x > 0 for x in xs) else float("nan")


def _screen(r: _Runner, cands: list[Arm], c: int) -> tuple[Arm, list[dict[str, Any]]]:
    """One trial per K at concurrency c on every workload; the K of the lowest geometric-mean TPOT."""
    rows = []
    for arm in cands:
        ms = r.run(arm, [c], 0, screening=False)
        per: dict[str, Any] = {}
        for m in ms:
            f, extras = _trial_figs(r.dir, m)
            per[m.workload] = {
                "tpot_ms": m.tpot_ms,
                "output_tok_s": m.output_tok_s,
                "accept_length": f["accept_length"] if f else None,
                "accept_rate": f.get("accept_rate") if f else None,
                **extras,
            }
        rows.append(
            {
                "arm": arm.name,
                "k": arm.levers["spec-k"],
                "tpot_geo_ms": _geo([m.tpot_ms for m in ms]),
                "workloads": per,
            }
        )
    best = min(range(len(cands)), key=lambda j: rows[j]["tpot_geo_ms"])
    return cands[best], rows


def _ab(ctx: Ctx, r: _Runner, standing: Arm, cand: Arm) -> dict[str, Any]:
    """Interleaved trials of the standing config and the candidate at every concurrency."""
    s = ctx.intent.spec
    trials = max(3, ctx.intent.suite.trials)
    concs = s.concurrencies or [1]
    data: dict[str, dict[tuple[str, int], dict[str, list[Any]]]] = {standing.name: {}, cand.name: {}}
    for arm, t in interleave([standing, cand], range(1, trials + 1)):
        for m in r.run(arm, concs, t, screening=False):
            key = (m.workload, m.concurrency)
            d = data[arm.name].setdefault(
                key, {"tpot": [], "tok": [], "acc": [], "rate": [], "pos": [], "loop": [], "tps": []}
            )
            d["tpot"].append(m.tpot_ms)
            d["tok"].append(m.output_tok_s)
            f, x = _trial_figs(r.dir, m)
            if x["loop_share"] is not None:
                d["loop"].append(x["loop_share"])
            if x["tokens_per_step"] is not None:
                d["tps"].append(x["tokens_per_step"])
            if f is not None:
                d["acc"].append(float(f["accept_length"]))
                if f.get("accept_rate") is not None:
                    d["rate"].append(float(f["accept_rate"]))
                d["pos"].append([float(x) for x in f.get("per_pos") or []])
    cells = []
    for (wl, c), cd in sorted(data[cand.name].items(), key=lambda kv: (kv[0][1], kv[0][0])):
        sd = data[standing.name][(wl, c)]
        rp = ratio_ci(sd["tpot"], cd["tpot"])  # > 1: the candidate's TPOT is lower
        rt = ratio_ci(cd["tok"], sd["tok"])
        cells.append(
            {
                "workload": wl,
                "concurrency": c,
                "trials": len(cd["tpot"]),
                "standing_tpot_ms": sd["tpot"],
                "tpot_ms": cd["tpot"],
                "standing_tok_s": sd["tok"],
                "tok_s": cd["tok"],
                "accept_length": cd["acc"],
                "accept_rate": cd["rate"],
                "accept_per_pos": _mean_profile(cd["pos"]),
                "standing_accept_length": sd["acc"],
                "standing_accept_per_pos": _mean_profile(sd["pos"]),
                "tokens_per_step": cd["tps"],
                "standing_tokens_per_step": sd["tps"],
                "loop_share": mean_or_none(cd["loop"]),
                "standing_loop_share": mean_or_none(sd["loop"]),
                "tpot_speedup": rp[0] if rp else None,
                "tpot_speedup_ci95": list(rp[1]) if rp else None,
                "tok_s_ratio": rt[0] if rt else None,
                "tok_s_ratio_ci95": list(rt[1]) if rt else None,
            }
        )
    return {
        "trials": trials,
        "concurrencies": concs,
        "standing_speculates": "spec-method" in standing.levers,
        "cells": cells,
    }


def degenerate(cell: dict[str, Any], dummy: bool) -> str | None:
    """Why a workload's A/B is no evidence about speculation, or None."""
    if dummy:
        return "dummy weights (--load-format dummy): the outputs are not a model's, acceptance is an artifact"
    shares = [x for x in (cell.get("loop_share"), cell.get("standing_loop_share")) if x is not None]
    if shares and max(shares) >= LOOP_SHARE:
        return (
            f"{max(shares):.0%} of its outputs loop (a repeating span drafts itself: "
            "acceptance and speedup say nothing about real traffic)"
        )
    return None


def _standing_accept(ab: dict[str, Any], cell: dict[str, Any]) -> float | None:
    """The length the candidate's acceptance must beat: 1.0 when the standing config does not speculate
    (every step yields one token), else its own measured mean (None: the engine reported none)."""
    if not ab.get("standing_speculates"):
        return 1.0
    return mean_or_none(cell.get("standing_accept_length") or [])


def _workload_ab(ab: dict[str, Any], x: dict[str, Any], dummy: bool) -> WorkloadAB:
    """One cell for the gate. Against a speculating standing config, acceptance is compared as tokens per
    decode step where both arms report it: the per-draft length is conditional on a draft being proposed
    (prompt lookup proposes one on a fraction of the steps only, a draft head on every step), so a longer
    per-draft length can buy fewer tokens per step."""
    ci = (x["tpot_speedup_ci95"][0], x["tpot_speedup_ci95"][1]) if x["tpot_speedup_ci95"] else None
    common = {"ratio": x["tpot_speedup"], "ratio_ci95": ci, "degenerate": degenerate(x, dummy)}
    stps = x.get("standing_tokens_per_step") or []
    if ab.get("standing_speculates") and x.get("tokens_per_step") and stps:
        return WorkloadAB(
            x["workload"],
            x["tokens_per_step"],
            standing_accept_len=mean_or_none(stps),
            unit="tokens per step",
            **common,
        )
    return WorkloadAB(
        x["workload"], x["accept_length"], standing_accept_len=_standing_accept(ab, x), **common
    )


def _decide(ab: dict[str, Any], c: int, dummy: bool = False) -> dict[str, Any]:
    cells = [x for x in ab["cells"] if x["concurrency"] == c]
    d = decide([_workload_ab(ab, x, dummy) for x in cells])
    return {
        "concurrency": c,
        "verdict": d.verdict,
        "reasons": d.reasons,
        "suite_tpot_speedup": d.suite_ratio,
        "suite_tpot_speedup_ci95": list(d.suite_ratio_ci95) if d.suite_ratio_ci95 else None,
        "calls": [
            {"workload": w.workload, "acceptance": w.acceptance, "latency": w.latency, "why": w.reason}
            for w in d.calls
        ],
    }


def crossover(ab: dict[str, Any], workload: str | None = None) -> int | None:
    """The lowest measured concurrency at which the TPOT speedup is <= 1: one workload's, or the suite's
    geometric mean (workload None)."""
    for c in sorted(ab["concurrencies"]):
        sp = [
            x["tpot_speedup"]
            for x in ab["cells"]
            if x["concurrency"] == c and x["tpot_speedup"] and workload in (None, x["workload"])
        ]
        if sp and _geo(sp) <= 1.0:
            return int(c)
    return None


def method_report(
    best: Arm, screen: list[dict[str, Any]], ab: dict[str, Any], gate: dict[str, Any]
) -> dict[str, Any]:
    """One method's entry in specdec.json: its K screen, the A/B, the gate and the crossovers."""
    return {
        "k_screen": screen,
        "k": best.levers["spec-k"],
        "levers": best.levers,
        "ab": ab,
        "gate": gate,
        "crossover_concurrency": crossover(ab),
        "crossover_by_workload": {w: crossover(ab, w) for w in sorted({c["workload"] for c in ab["cells"]})},
        "acceptance_reported": any(x["accept_length"] for x in ab["cells"]),
    }


def phase7(ctx: Ctx) -> Gate:
    i = ctx.intent
    s = i.spec
    if not s.methods:
        return Gate(
            "skipped", "no speculative method asked (optimize --spec-method, or perftune specdec RUN)"
        )
    engines = [e for e in i.serving.engines if e in REAL]
    if not engines:
        return Gate(
            "skipped",
            "acceptance is only measurable in a real engine: the simulator's live server does not speculate "
            "(its spec model predicts from a given acceptance profile: perftune.sim.specdec)",
        )
    versions, drafts = ctx.state.facts.engine_versions, ctx.state.facts.drafts
    if missing := to_train(i, drafts):
        raise ConfigError(
            f"{', '.join(missing)} has no draft: phase 6 has not trained one",
            hint="run phase 6 first (perftune specdec train RUN --method eagle3 --ack-compute)",
        )
    plans = {e: candidates(i, e, versions.get(e), drafts) for e in engines}  # checked before any deploy
    d = ctx.run_dir / "phase7"
    # methods measured by an earlier run stay in the report beside this run's
    report: dict[str, Any] = (
        json.loads((d / "specdec.json").read_text()) if (d / "specdec.json").exists() else {"engines": {}}
    )
    for engine, (standing, by_method) in plans.items():
        concs = s.concurrencies or [1]
        eng: dict[str, Any] = {
            "version": ctx.state.facts.engine_versions.get(engine),
            "hardware": hardware_label(ctx, engine, standing.levers),
            "standing_levers": standing.levers,
            "methods": dict(report["engines"].get(engine, {}).get("methods", {})),
        }
        for method, cands in by_method.items():
            r = _Runner(ctx, engine, method)
            best, screen = _screen(r, cands, min(concs)) if len(cands) > 1 else (cands[0], [])
            ab = _ab(ctx, r, standing, best)
            gate = _decide(ab, min(concs), dummy_weights(ctx, engine))
            eng["methods"][method] = method_report(best, screen, ab, gate)
        report["engines"][engine] = eng
    write_text(d / "specdec.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(d / "SPECDEC.md", specdec_md(ctx, report))
    ctx.state.facts.spec = {
        e: {
            m: {
                "verdict": v["gate"]["verdict"],
                "levers": v["levers"],
                "concurrency": v["gate"]["concurrency"],
                "accept_length": {  # per workload at the gate's concurrency; None: not reported
                    c["workload"]: mean_or_none(c["accept_length"])
                    for c in v["ab"]["cells"]
                    if c["concurrency"] == v["gate"]["concurrency"]
                },
            }
            for m, v in x["methods"].items()
        }
        for e, x in report["engines"].items()
    }
    ctx.save()
    heads = [
        f"{e} {m} K={v['k']}: {v['gate']['verdict']}"
        + (f" (suite TPOT x{v['gate']['suite_tpot_speedup']:.2f})" if v["gate"]["suite_tpot_speedup"] else "")
        for e, x in report["engines"].items()
        for m, v in x["methods"].items()
    ]
    return Gate(
        "green",
        "; ".join(heads),
        headline="; ".join(heads),
        tier="DRAFT",
        artifacts=["phase7/SPECDEC.md", "phase7/specdec.json"],
    )


def _ci(x: float | None, ci: list[float] | None) -> str:
    return f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if x is not None and ci else "n/a"


def _pm(xs: list[float]) -> str:
    """mean +/- std (sample) of the per-trial values."""
    if not xs:
        return "n/a"
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return f"{m:.2f} +/- {sd:.2f}"


def _acc(xs: list[float]) -> str:
    if not xs:
        return "not reported"
    m = sum(xs) / len(xs)
    return f"{m:.2f}"


def _vs(standing: list[float] | None, cand: list[float], ab: dict[str, Any]) -> str:
    """The candidate's acceptance length; 'standing / candidate' when the standing config speculates."""
    return f"{_acc(standing or [])} / {_acc(cand)}" if ab.get("standing_speculates") else _acc(cand)


def _trials(cell: dict[str, Any]) -> str:
    """A cell's trial count; 'standing / candidate' where an arm has fewer (a deploy that never finished)."""
    n_s, n_c = len(cell["standing_tpot_ms"]), cell["trials"]
    return str(n_c) if n_s == n_c else f"{n_s} / {n_c}"


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _cross(x_c: int | None, concs: list[int]) -> str:
    if x_c is None:
        return "speculation lowers TPOT at every measured concurrency"
    if x_c == min(concs):
        return "speculation lowers TPOT at none of the measured concurrencies"
    below = max(c for c in concs if c < x_c)
    return f"speculation lowers TPOT at c={below} and stops by c={x_c}"


def _f2(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _screen_md(rows: list[dict[str, Any]]) -> list[str]:
    """The K screen: one trial per K at the lowest concurrency, per workload."""
    wls = sorted({w for r in rows for w in r.get("workloads", {})})
    out = [
        "K screen (1 trial per K at the lowest concurrency; the K with the lowest geometric-mean TPOT "
        "goes to the A/B). Per workload: TPOT ms / acceptance length / acceptance rate / tokens per step.",
        "",
        "| K | geo-mean TPOT ms | " + " | ".join(wls) + " |",
        "| --- | --- | " + " | ".join("---" for _ in wls) + " |",
    ]
    for r in rows:
        cells = []
        for w in wls:
            x = r.get("workloads", {}).get(w)
            if not x:
                cells.append("n/a")
                continue
            cells.append(
                f"{x['tpot_ms']:.2f} / {_f2(x['accept_length'])} / {_f2(x['accept_rate'])} / "
                f"{_f2(x.get('tokens_per_step'))}"
            )
        out.append(f"| {r['k']} | {r['tpot_geo_ms']:.2f} | " + " | ".join(cells) + " |")
    return [*out, ""]


def specdec_md(ctx: Ctx, rep: dict[str, Any]) -> str:
    i = ctx.intent
    lines = [
        "# Phase 7: speculative decoding",
        "",
        f"Model {i.model.ref}; workloads {', '.join(i.spec.workloads)}; isl/osl {i.suite.isl}/{i.suite.osl}; "
        "interleaved trials, a fresh deploy and a cache reset per trial. Tier: DRAFT (same node).",
        "TPOT speedup = standing TPOT / candidate TPOT (> 1: speculation lowers TPOT); tok/s ratio = "
        "candidate / standing. Intervals are 95%.",
        "",
    ]
    for e, x in rep["engines"].items():
        lines += [f"## {e} {x['version'] or '(version: see the trial contexts)'} on {x['hardware']}", ""]
        spec = (x["standing_levers"] or {}).get("spec-method")
        lines.append(
            f"Standing config: {x['standing_levers'] or 'engine defaults'} "
            + (
                f"(it speculates with {spec} K={x['standing_levers'].get('spec-k')}: acceptance and "
                "tokens/step columns are standing / candidate, and a candidate's tokens per step must beat "
                "the standing config's: a per-draft length is conditional on a draft being proposed)."
                if spec
                else "(no speculation)."
            )
        )
        for m, v in x["methods"].items():
            g = v["gate"]
            lines += ["", f"### {m}, K={v['k']}: **{g['verdict']}**", ""]
            if v["k_screen"]:
                lines += _screen_md(v["k_screen"])
            if not v["acceptance_reported"]:
                lines += [f"{e} reports no acceptance counts: acceptance is not measured here.", ""]
            lines.append(
                f"A/B: {v['ab']['trials']} interleaved trials per arm. Acceptance length = 1 + accepted / "
                "drafts (per draft); tokens/step = decode tokens / request decode steps (what the drafts "
                "bought, drafted or not); loops = share of outputs that end in a repeating span "
                "(standing / spec)."
            )
            lines.append("")
            lines.append(
                "| workload | c | trials | standing TPOT ms | spec TPOT ms | standing tok/s | spec tok/s | "
                "acceptance length | acceptance rate | tokens/step | loops | TPOT speedup [95%] | "
                "tok/s ratio [95%] |"
            )
            lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for c in v["ab"]["cells"]:
                lines.append(
                    f"| {c['workload']} | {c['concurrency']} | {_trials(c)} | "
                    f"{_pm(c['standing_tpot_ms'])} | {_pm(c['tpot_ms'])} | "
                    f"{_pm(c['standing_tok_s'])} | {_pm(c['tok_s'])} | "
                    f"{_vs(c.get('standing_accept_length'), c['accept_length'], v['ab'])} | "
                    f"{_acc(c['accept_rate'])} | "
                    f"{_vs(c.get('standing_tokens_per_step'), c.get('tokens_per_step') or [], v['ab'])} | "
                    f"{_share(c.get('standing_loop_share'))} / "
                    f"{_share(c.get('loop_share'))} | {_ci(c['tpot_speedup'], c['tpot_speedup_ci95'])} | "
                    f"{_ci(c['tok_s_ratio'], c['tok_s_ratio_ci95'])} |"
                )
            prof = [c for c in v["ab"]["cells"] if c["accept_per_pos"]]
            if prof:
                lines += [
                    "",
                    "Acceptance per draft position (share of drafts whose token there was accepted):",
                ]
                for c in prof:
                    lines.append(
                        f"- {c['workload']} c={c['concurrency']}: "
                        + ", ".join(f"{x:.2f}" for x in c["accept_per_pos"])
                        + (
                            " (standing: " + ", ".join(f"{x:.2f}" for x in c["standing_accept_per_pos"]) + ")"
                            if c.get("standing_accept_per_pos")
                            else ""
                        )
                    )
            lines.append("")
            lines.append(
                f"Gate at c={g['concurrency']}: {g['verdict']}; suite TPOT speedup "
                f"{_ci(g['suite_tpot_speedup'], g['suite_tpot_speedup_ci95'])}."
            )
            for reason in g["reasons"]:
                lines.append(f"- {reason}")
            concs = v["ab"]["concurrencies"]
            lines.append(f"Crossover (measured at c={concs}):")
            lines.append(f"- suite (geometric mean): {_cross(v['crossover_concurrency'], concs)}")
            for w, x_c in (v.get("crossover_by_workload") or {}).items():
                lines.append(f"- {w}: {_cross(x_c, concs)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- phase 6: train a draft


def training_prompts(n: int) -> list[dict[str, Any]]:
    """The offline chat and code sets the bench ships (WritingBench prompts, HumanEval prompts),
    interleaved: what the head is trained to draft for is the target's answers to them."""
    chat = build_workload(WorkloadSpec(kind="chat", num_requests=max(1, n - n // 4), osl=16)).items
    code = build_workload(WorkloadSpec(kind="code", num_requests=max(1, n // 4), osl=16)).items
    out = []
    for it in [*chat, *code][:n]:
        msgs = it.messages or [{"role": "user", "content": str(it.prompt or "")}]
        out.append({"conversations": [{"role": m["role"], "content": m["content"]} for m in msgs]})
    return out


def _target(ctx: Ctx) -> Path:
    p = weights_on_disk(ctx)
    if not p or not (Path(p) / "config.json").is_file():
        raise ConfigError(
            "phase 6 trains against the target's Hugging Face folder and this campaign has none"
            + (f" ({p} is not one)" if p else ""),
            hint="pass --model-path DIR (a Hugging Face folder with config.json and safetensors)",
        )
    return Path(p).resolve()


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def phase6(ctx: Ctx) -> Gate:
    i = ctx.intent
    f = ctx.state.facts
    methods = to_train(i, f.drafts)
    if not methods:
        return Gate(
            "skipped",
            "no draft to train (phase 6 trains an EAGLE-3 head for --spec-method eagle3 without a "
            "--draft-model)",
        )
    preflight(i, f.engine_versions, f.drafts)  # the ack, before anything is written
    method = methods[0]
    d = ctx.run_dir / "phase6" / method
    res_file = d / RESULT_NAME
    arts = [f"phase6/{method}/train.log", f"phase6/{method}/result.json", f"phase6/{method}/metrics.jsonl"]
    seen = d / "failure-reported"
    if res_file.exists() and seen.exists():  # a failure already reported: this run is the retry
        res_file.rename(d / f"result.failed-{len(list(d.glob('result.failed-*')))}.json")
        seen.unlink()
    if res_file.exists():
        res = DraftResult.model_validate_json(res_file.read_text())
        if res.status != "ok":
            seen.touch()
            return Gate(
                "red",
                f"training the {method} head failed: {res.error}",
                hint=f"read phase6/{method}/train.log; run it again to retry (finished steps are kept)",
                artifacts=arts,
            )
        v = judge(res.losses, res.acc0)
        if not v.passed:
            return Gate("red", f"the {method} head is degenerate: " + "; ".join(v.reasons), artifacts=arts)
        f.drafts[method] = str(res.out_path)
        ctx.save()
        head = (
            f"{method} head trained ({res.trainer}, {res.seconds / 60:.1f} min): loss {v.first_loss:.3f} -> "
            f"{v.last_loss:.3f}, validation acc_0 {v.acc0:.1%}; draft {ctx.rel(Path(str(res.out_path)))}"
        )
        return Gate("green", head, headline=head, tier="DRAFT", artifacts=arts)
    if (pid := _alive(d / PID_NAME)) is not None:
        step = (
            json.loads((d / PROGRESS_NAME).read_text()).get("step")
            if (d / PROGRESS_NAME).exists()
            else "start"
        )
        return Gate(
            "queued",
            f"training the {method} head: step {step} running (pid {pid}); resume picks the result up",
            artifacts=arts,
        )
    target = _target(ctx)
    d.mkdir(parents=True, exist_ok=True)
    write_text(
        d / "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in training_prompts(i.spec.train_samples))
    )
    job = DraftJob(
        method="eagle3",
        target=str(target),
        data=str(d / "prompts.jsonl"),
        python=i.spec.draft_python or os.environ.get("PERFTUNE_DRAFT_PYTHON") or sys.executable,
        out_dir=str(d),
        epochs=i.spec.train_epochs,
        max_samples=i.spec.train_samples,
    )
    write_text(d / "job.json", job.model_dump_json(indent=2) + "\n")
    with (d / "submit.log").open("a") as log:  # its own session: the job outlives this campaign process
        proc = subprocess.Popen(
            [sys.executable, "-m", "perftune.draft.job", str(d / "job.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    write_text(d / PID_NAME, f"{proc.pid}\n")
    return Gate(
        "queued",
        f"submitted the {method} training job (pid {proc.pid}, {job.max_samples} prompts, "
        f"{job.epochs} epochs); resume picks the result up",
        artifacts=arts,
    )
