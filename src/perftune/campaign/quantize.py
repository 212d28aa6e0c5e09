"""Phases 4 and 5: quantize the model (ack-gated compute jobs, each gated on the checkpoint it wrote),
then decide, on the same node, whether a quantized variant may ship: a known-answer sanity gate, an
accuracy suite paired item by item against the reference weights, and a perf A/B through the tuner's
interleaved machinery. A variant that wins perf and loses accuracy is no-ship; when an accuracy gate
fails, a control run (the reference weights through the same gate) says whether the model or the gate
is at fault."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from perftune.bench.session import run_async
from perftune.bench.workloads import WorkloadSpec, build_workload
from perftune.campaign.base import Ctx, Gate
from perftune.campaign.cells import card_of, live_server, synthetic_workload
from perftune.campaign.live_eval import LiveEvaluator
from perftune.campaign.state import Intent, Weights
from perftune.errors import ConfigError, GateError, PerftuneError
from perftune.evals import data as evdata
from perftune.evals import stats as evstats
from perftune.evals import suite as evsuite
from perftune.quant import convert, coverage, families, gguf_tools, schemes
from perftune.quant.backends import QuantJob, backend_for
from perftune.quant.job import QuantResult
from perftune.tune.arms import Arm
from perftune.tune.evaluate import RecordingEvaluator
from perftune.tune.search import interleave, ratio_ci
from perftune.util.atomic import write_text

GGUF_ENGINES = ["llamacpp"]
HF_ENGINES = ["vllm", "sglang"]
REAL = ("vllm", "sglang", "llamacpp")


# ------------------------------------------------------------------ phase 4


@dataclass(frozen=True)
class PlannedJob:
    """One quantization the phase would run: validated (scheme, family, backend, source) before any."""

    name: str
    scheme: schemes.Scheme
    family: families.Family
    source: Path
    out: Path

    def describe(self) -> str:
        return f"{self.scheme.backend} {self.name} on {self.source.name}"


def weights_on_disk(ctx: Ctx) -> str | None:
    """The model's folder or GGUF file: --model-path, or the model argument when it is a local path."""
    m = ctx.intent.model
    return m.path or (m.ref if Path(m.ref).exists() else None)


def _source(ctx: Ctx) -> Path:
    p = weights_on_disk(ctx)
    if not p or not Path(p).exists():
        raise ConfigError(
            "phase 4 needs the model's weights on disk and this campaign has none"
            + (f" ({p} does not exist)" if p else ""),
            hint="pass --model-path DIR (a Hugging Face folder) or a .gguf file",
        )
    return Path(p).resolve()


def is_gguf(p: Path) -> bool:
    return p.is_file() and p.suffix == ".gguf"


UNQUANTIZED_FTYPES = (0, 1, 32)  # llama.cpp's ALL_F32, MOSTLY_F16, MOSTLY_BF16


def gguf_meta(
    path: Path, keys: tuple[str, ...] = ("general.file_type", "tokenizer.chat_template")
) -> dict[str, Any]:
    """A few scalar metadata values of a GGUF file (gguf's reader memory-maps it; no tensor is read)."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    out: dict[str, Any] = {}
    for k in keys:
        f = r.fields.get(k)
        if f is not None:
            out[k] = f.contents()
    return out


def llamacpp_gguf(ctx: Ctx) -> str | None:
    """Phase 0: llama.cpp serves GGUF only, so a campaign on it from a Hugging Face folder converts the
    folder once to an F16 GGUF (llama.cpp's own converter) in the bundle; later phases serve that file
    and phase 4 quantizes it. None when nothing needed converting."""
    p = weights_on_disk(ctx)
    if "llamacpp" not in ctx.intent.serving.engines or not p or not Path(p).is_dir():
        return None
    f = ctx.state.facts
    if f.gguf and Path(f.gguf).is_file():
        return f.gguf
    out = ctx.run_dir / "phase0" / f"{Path(p).name}-f16.gguf"
    ctx.observe(f"phase 0: converting {Path(p).name} to an F16 GGUF for llama.cpp (llama.cpp's converter)")
    convert.hf_to_gguf(Path(p), out)
    f.gguf = str(out.resolve())
    ctx.save()
    return f.gguf


def plan(ctx: Ctx) -> list[PlannedJob]:
    """Every job phase 4 would run, validated as a whole before the first one starts: a known scheme,
    a registered model family, a format the scheme takes (GGUF schemes need a GGUF, the others a
    Hugging Face folder) and an installed backend. Raises ConfigError on the first problem."""
    q = ctx.intent.quant
    src = _source(ctx)
    folder = src
    fam = families.family_for(card_of(ctx).model_type)
    d = ctx.run_dir / "phase4"
    jobs: list[PlannedJob] = []
    for name in q.schemes:
        sc = schemes.scheme_for(name)
        src = Path(ctx.state.facts.gguf) if sc.gguf_file_type is not None and ctx.state.facts.gguf else folder
        if sc.gguf_file_type is not None and not is_gguf(src):
            raise ConfigError(
                f"scheme {name} writes GGUF and needs a GGUF model, got the folder {src}",
                hint="serve it on llama.cpp (phase 0 converts the folder to GGUF), point --model-path at "
                "a .gguf file, or pick an llm-compressor/ModelOpt scheme",
            )
        if sc.gguf_file_type is None and is_gguf(src):
            raise ConfigError(
                f"scheme {name} needs a Hugging Face folder, got the GGUF file {src.name}",
                hint="export the model to a Hugging Face folder, or pick gguf-q8_0 / gguf-q4_k_m",
            )
        if sc.backend not in fam.backends:
            raise ConfigError(
                f"the {fam.model_type} family does not list the {sc.backend} backend (scheme {name})",
                hint=f"its backends: {', '.join(fam.backends)}; the registry is {families.FAMILIES_YAML}",
            )
        why = backend_for(sc).available()
        if why is not None:
            raise ConfigError(f"scheme {name}: {why}", hint="install the backend, or drop the scheme")
        jobs.append(PlannedJob(name, sc, fam, src, d / "jobs" / name))
    return jobs


def gguf_base(ctx: Ctx, src: Path) -> Path | None:
    """A GGUF given already quantized (e.g. SmolLM2's Q4_1) is judged against its dequantized F16 copy,
    the closest thing to the trained weights on disk; an F16/BF16/F32 GGUF is its own reference."""
    if not is_gguf(src) or gguf_meta(src).get("general.file_type") in UNQUANTIZED_FTYPES:
        return None
    return ctx.run_dir / "phase4" / "base-f16.gguf"


def calibration_texts(n: int = 64) -> list[str]:
    """Calibration data from the offline chat set the bench ships (WritingBench prompts)."""
    wl = build_workload(WorkloadSpec(kind="chat", num_requests=n, osl=16))
    out = []
    for it in wl.items:
        msgs = it.messages or []
        out.append("\n".join(m["content"] for m in msgs) if msgs else str(it.prompt or ""))
    return [t for t in out if t]


def _gate_checkpoint(job: PlannedJob, out: Path) -> coverage.GateResult:
    if job.scheme.gguf_file_type is not None:
        return coverage.check_gguf(out, job.scheme)
    return coverage.check_checkpoint(out, job.scheme, job.family)


def run_job(job: PlannedJob, calib: list[str]) -> QuantResult:
    """Submit one quantization as its own process (`python -m perftune.quant.job JOB.json`): a job the
    deploy target runs (a background process here, a batch job on a cluster); its quant.log, result.json
    and output land in the job's folder. Returns its result.json. An interrupted campaign kills it."""
    job.out.mkdir(parents=True, exist_ok=True)
    spec = QuantJob(
        model_dir=job.source,
        out_dir=job.out,
        scheme=job.name,
        family=job.family.model_type,
        calibration_texts=calib if job.scheme.needs_calibration else [],
        num_calibration_samples=max(1, len(calib)) if job.scheme.needs_calibration else 512,
    )
    jf = job.out / "job.json"
    write_text(jf, spec.model_dump_json(indent=2) + "\n")
    (job.out / "result.json").unlink(missing_ok=True)  # an earlier attempt's result is not this one's
    with (job.out / "submit.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "perftune.quant.job", str(jf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    res_file = job.out / "result.json"
    if not res_file.exists():
        raise GateError(
            f"quantization job {job.name} exited {rc} without a result.json",
            hint="read its log",
            log_path=str(job.out / "submit.log"),
        )
    return QuantResult.model_validate_json(res_file.read_text())


# Schemes the simulator models: FP8 weights (its bytes per parameter and the GPU's FP8 FLOP rate).
SIM_FP8 = ("fp8-dynamic", "w8a8-fp8", "modelopt-fp8")


def preflight(intent: Intent) -> None:
    """`optimize --quant-target` refuses, before a run folder exists, what phase 4 would refuse hours
    later: a scheme the simulator does not model, a backend not installed, no compute acknowledgement."""
    q = intent.quant
    if not q.schemes:
        return
    if not any(e in REAL for e in intent.serving.engines):
        _sim_names(intent)
        return
    for name in q.schemes:
        why = backend_for(schemes.scheme_for(name)).available()
        if why is not None:
            raise ConfigError(f"--quant-target {name}: {why}", hint="install the backend, or drop the scheme")
    if not q.ack_compute:
        raise ConfigError(
            f"refused: --quant-target would run {len(q.schemes)} quantization job(s) in phase 4 "
            f"({', '.join(q.schemes)}); nothing was run",
            hint="pass --ack-compute to let perftune run them",
        )


def sim_schemes(ctx: Ctx) -> list[str]:
    """The campaign's schemes as the simulator models them; one it does not model is a ConfigError."""
    return _sim_names(ctx.intent)


def _sim_names(intent: Intent) -> list[str]:
    names = [schemes.scheme_for(s).name for s in intent.quant.schemes]
    if "sim" not in intent.serving.engines:
        raise ConfigError("phase 4 needs a real engine or the simulator", hint="--engines sim, vllm, ...")
    bad = [n for n in names if n not in SIM_FP8]
    if bad:
        raise ConfigError(
            f"the simulator models FP8 weights only, not {', '.join(bad)}",
            hint=f"use --quant-target {SIM_FP8[0]} on sim, or a real engine for {', '.join(bad)}",
        )
    return names


def simulated_variants(ctx: Ctx) -> Gate:
    """Phase 4 on the simulator: no checkpoint to write, so each FP8 scheme becomes a modelled variant
    served with the simulator's quantization=fp8 (weight bytes and FLOP rate from the ceilings),
    labelled SIMULATED; a scheme it does not model is a one-line error before anything is recorded."""
    names = sim_schemes(ctx)
    f = ctx.state.facts
    for n in names:
        f.weights[n] = Weights(
            name=n,
            path=ctx.intent.model.ref,
            scheme=n,
            backend="simulated",
            engines=["sim"],
            levers={"quantization": "fp8"},
            simulated=True,
        )
    ctx.save()
    body = "\n".join(f"- {n}: SIMULATED, served as quantization=fp8; no checkpoint exists" for n in names)
    write_text(ctx.run_dir / "phase4" / "quantize.md", "# Phase 4: quantize (SIMULATED)\n\n" + body + "\n")
    return Gate(
        "green",
        f"SIMULATED: {', '.join(names)} modelled as FP8 weights (bytes and FLOP rate from the ceilings); "
        "no checkpoint was written and no job ran",
        tier="SIMULATED",
        artifacts=["phase4/quantize.md"],
    )


def phase4(ctx: Ctx) -> Gate:
    q = ctx.intent.quant
    if not q.schemes:
        return Gate(
            "skipped", "no quantization target (optimize --quant-target SCHEME, or perftune quantize)"
        )
    if not any(e in REAL for e in ctx.intent.serving.engines):
        return simulated_variants(ctx)
    jobs = plan(ctx)  # everything validated before anything runs
    base = gguf_base(ctx, jobs[0].source) if jobs else None
    if not q.ack_compute:
        what = ([f"llama.cpp dequantize {jobs[0].source.name} -> base-f16.gguf"] if base else []) + [
            j.describe() for j in jobs
        ]
        return Gate(
            "red",
            f"refused: phase 4 would run {len(what)} compute job(s) ({'; '.join(what)}); nothing was run",
            hint="pass --ack-compute to let perftune run them",
        )
    d = ctx.run_dir / "phase4"
    f = ctx.state.facts
    if base is not None and "base-f16" not in f.weights:
        ctx.observe(f"phase 4: dequantizing {jobs[0].source.name} to F16 (the accuracy reference)")
        gguf_tools.dequantize_to_f16(jobs[0].source, base)
        f.weights["base-f16"] = Weights(
            name="base-f16", path=str(base), scheme=None, backend="gguf", engines=GGUF_ENGINES
        )
        ctx.save()
    calib: list[str] | None = None
    lines, red = [], []
    for job in jobs:
        if job.name in f.weights:
            lines.append(f"{job.name}: kept from an earlier run ({f.weights[job.name].path})")
            continue
        src = Path(f.weights["base-f16"].path) if "base-f16" in f.weights else job.source
        job = PlannedJob(job.name, job.scheme, job.family, src, job.out)
        if job.scheme.needs_calibration and calib is None:
            calib = calibration_texts()
        ctx.observe(f"phase 4: {job.describe()}")
        t0 = time.monotonic()
        res = run_job(job, calib or [])
        if res.status != "ok" or res.out_path is None:
            red.append(f"{job.name}: job failed: {res.error or 'no error recorded'}")
            continue
        out = Path(res.out_path)
        g = _gate_checkpoint(job, out)
        cov = g.coverage.model_dump() if g.coverage is not None else {}
        write_text(
            d / "jobs" / job.name / "gate.json",
            json.dumps({"ok": g.ok, "reasons": g.reasons, "coverage": cov}, indent=2) + "\n",
        )
        if not g.ok:
            red.append(f"{job.name}: " + "; ".join(g.reasons))
            continue
        f.weights[job.name] = Weights(
            name=job.name,
            path=str(out.resolve()),
            scheme=job.name,
            backend=job.scheme.backend,
            engines=GGUF_ENGINES if job.scheme.gguf_file_type is not None else HF_ENGINES,
            coverage=cov,
        )
        ctx.save()
        n = cov.get("quantized", "?")
        lines.append(
            f"{job.name}: {n} of {cov.get('in_scope', '?')} in-scope weights quantized, "
            f"{time.monotonic() - t0:.0f} s"
        )
    write_text(d / "quantize.md", "# Phase 4: quantize\n\n" + "\n".join(f"- {x}" for x in lines + red) + "\n")
    arts = ["phase4/quantize.md", "phase4/jobs/"]
    if red:
        return Gate(
            "red", "; ".join(red), hint="read phase4/jobs/<scheme>/ (job log, gate.json)", artifacts=arts
        )
    return Gate("green", "; ".join(lines), tier="DRAFT", artifacts=arts)


# ------------------------------------------------------------------ phase 5

Api = Literal["chat", "completions"]


def has_chat_template(path: str) -> bool:
    """Whether the model carries a chat template: an instruct model must be asked through it."""
    p = Path(path)
    if is_gguf(p):
        return bool(gguf_meta(p).get("tokenizer.chat_template"))
    if p.is_dir():
        if (p / "chat_template.jinja").exists() or (p / "chat_template.json").exists():
            return True
        tc = p / "tokenizer_config.json"
        if tc.exists():
            return bool(json.loads(tc.read_text()).get("chat_template"))
    return False


def eval_api(ctx: Ctx) -> Api:
    q = ctx.intent.quant
    if q.eval_api != "auto":
        return q.eval_api
    return "chat" if has_chat_template(weights_on_disk(ctx) or "") else "completions"


def reference_name(ctx: Ctx) -> str:
    return "base-f16" if "base-f16" in ctx.state.facts.weights else "base"


def _engine_for(ctx: Ctx, weights: str) -> str | None:
    w = ctx.state.facts.weights.get(weights)
    loads = w.engines if w is not None else list(REAL)
    return next((e for e in ctx.intent.serving.engines if e in loads and e in REAL), None)


def evaluate(
    ctx: Ctx, engine: str, weights: str, api: Api, items: dict[str, Any], tag: str = ""
) -> dict[str, Any]:
    """Deploy `weights` on `engine` through phase 1's path and run the sanity gate and the tasks;
    writes phase5/evals/<engine>.<weights><tag>.json and returns it."""
    d = ctx.run_dir / "phase5"
    out = d / "evals" / f"{engine}.{weights}.{api}{tag}.json"
    if out.exists():  # a resumed phase 5 keeps what it measured, if it asked the same questions
        cached: dict[str, Any] = json.loads(out.read_text())
        have = {t: set(v["items"]) for t, v in cached["tasks"].items()}
        if all(have.get(t) == {x.id for x in xs} for t, xs in items.items()):
            return cached
    levers = dict(ctx.intent.serving.levers.get(engine, {}))
    ctx.observe(f"phase 5: evaluating {weights} on {engine} ({api} API){' (control)' if tag else ''}")
    with live_server(ctx, engine, d, levers, weights=weights) as rec:
        sanity = run_async(evsuite.run_sanity(rec.endpoint, rec.served_name, api))
        scores: dict[str, Any] = {}
        if "mmlu" in items:
            scores["mmlu"] = run_async(evsuite.run_mmlu(rec.endpoint, rec.served_name, items["mmlu"], api))
        if "humaneval" in items:
            scores["humaneval"] = run_async(
                evsuite.run_humaneval(rec.endpoint, rec.served_name, items["humaneval"], api)
            )
    res = {
        "engine": engine,
        "weights": weights,
        "api": api,
        "sanity": sanity.model_dump(mode="json"),
        "tasks": {k: v.model_dump(mode="json") for k, v in scores.items()},
    }
    write_text(out, json.dumps(res, indent=2) + "\n")
    return res


def _score(d: dict[str, Any]) -> evsuite.TaskScore:
    return evsuite.TaskScore.model_validate(d)


def perf_ab(ctx: Ctx, engine: str, ref: str, cand: str) -> dict[str, Any]:
    """The reference and the candidate weights, deployed in interleaved trials (>= 3 each, the order
    alternating, a fresh deploy and a cache reset per trial: the tuner's machinery) at one concurrency
    on the random workload (code prompts on llama.cpp, which takes text only); the tok/s and TPOT
    ratios with 95% intervals."""
    i = ctx.intent
    c = i.quant.perf_concurrency or i.suite.baseline_concurrency
    trials = max(3, i.suite.trials)
    workload = synthetic_workload(engine)
    d = ctx.run_dir / "phase5" / "perf" / cand  # its own journal: the reference re-measured beside it
    levers = dict(i.serving.levers.get(engine, {}))
    arms = [Arm(engine=engine, name=ref, levers=levers), Arm(engine=engine, name=cand, levers=levers)]
    ev = RecordingEvaluator(
        LiveEvaluator(
            ctx,
            d,
            wedge_s=i.tuning.wedge_s,
            gpus=ctx.state.facts.tp,
            workloads=(workload,),
            weights={a.name: a.name for a in arms},
        ),
        d / "journal.jsonl",
        observe=ctx.observe,
    )
    tok: dict[str, list[float]] = {ref: [], cand: []}
    tpot: dict[str, list[float]] = {ref: [], cand: []}
    for arm, t in interleave(arms, range(trials)):
        out = ev.run(arm, [c], t, screening=False)
        if out.failure is not None:
            raise GateError(
                f"phase 5 perf A/B: {arm.name} on {engine} failed ({out.failure.klass})",
                hint="read the log",
                log_path=out.failure.log_path,
            )
        for m in out.measures:
            tok[arm.name].append(m.output_tok_s)
            tpot[arm.name].append(m.tpot_ms)
    rt = ratio_ci(tok[cand], tok[ref])
    rp = ratio_ci(tpot[ref], tpot[cand])  # > 1: the candidate's TPOT is lower
    focus_ratio = rt if i.slo.focus == "throughput" else rp
    win = focus_ratio is not None and focus_ratio[1][0] > 1.0
    return {
        "engine": engine,
        "concurrency": c,
        "workload": workload,
        "trials": trials,
        "tok_s": tok,
        "tpot_ms": tpot,
        "tok_s_ratio": rt[0] if rt else None,
        "tok_s_ratio_ci95": list(rt[1]) if rt else None,
        "tpot_speedup": rp[0] if rp else None,
        "tpot_speedup_ci95": list(rp[1]) if rp else None,
        "focus": i.slo.focus,
        "win": win,
    }


def _items(ctx: Ctx) -> dict[str, Any]:
    q = ctx.intent.quant
    out: dict[str, Any] = {}
    if "mmlu" in q.tasks:
        out["mmlu"] = evdata.load_mmlu(q.mmlu_n)
    if "humaneval" in q.tasks:
        out["humaneval"] = evdata.load_humaneval(q.humaneval_n)
    return out


def judge(
    ref: dict[str, Any], cand: dict[str, Any], tolerance_pts: float
) -> tuple[bool, list[str], dict[str, Any]]:
    """(accuracy passed, why not, per-task paired comparison) of a candidate against the reference."""
    why: list[str] = []
    san = cand["sanity"]
    if san["passed"] < san["total"]:
        why.append(f"known-answer sanity {san['passed']}/{san['total']}")
    tasks: dict[str, Any] = {}
    for task, sc in cand["tasks"].items():
        cmp = evsuite.compare(_score(ref["tasks"][task]), _score(sc), tolerance_pts)
        if cmp["decision"] == "inconclusive":
            pd = evstats.PairedDelta(
                **{k: cmp[k] for k in ("delta_pts", "ci95", "n", "b01", "b10", "mcnemar_p")}
            )
            more = cmp["items_to_decide"] = evstats.items_to_pass(pd, tolerance_pts)
            if more is not None and more > evdata.TASK_SIZES.get(task, more):
                # the whole dataset cannot bound a drop this small (HumanEval's 164 problems: about
                # 2.3 points at best): it gates as a fail-only check, reported as underpowered
                cmp["decision"] = "underpowered"
                cmp["reason"] = (
                    f"{cmp['reason']}; the whole {task} set ({evdata.TASK_SIZES[task]} items) cannot "
                    f"bound a {tolerance_pts:g}-point drop: it can only fail, not pass"
                )
        tasks[task] = cmp
        if cmp["decision"] not in ("pass", "underpowered"):
            lo, hi = cmp["ci95"]
            more = cmp.get("items_to_decide")
            why.append(
                f"{task} {cmp['decision']}: delta {cmp['delta_pts']:+.1f} pts [{lo:+.1f}, {hi:+.1f}] "
                f"vs tolerance -{tolerance_pts:g}"
                + (
                    (
                        f" (raise the item count to decide: about {more} at this discordance)"
                        if more
                        else " (raise the item count to decide)"
                    )
                    if cmp["decision"] == "inconclusive"
                    else ""
                )
            )
    return not why, why, tasks


def phase5(ctx: Ctx) -> Gate:
    i = ctx.intent
    f = ctx.state.facts
    if not any(e in REAL for e in i.serving.engines):
        return simulated_validation(ctx)
    ref = reference_name(ctx)
    engine = _engine_for(ctx, ref)
    if engine is None:
        return Gate("skipped", f"no engine of this campaign loads the reference weights ({ref})")
    items = _items(ctx)  # a missing dataset is a one-line error before any deploy
    api = eval_api(ctx)
    tol = i.quant.accuracy_tolerance_pts
    d = ctx.run_dir / "phase5"
    variants = [n for n, w in f.weights.items() if w.scheme is not None]
    if ref != "base":
        variants.insert(0, "base")  # the model as given (e.g. a Q4_1 GGUF) is a quantization too
    ref_res = evaluate(ctx, engine, ref, api, items)
    ref_ok = ref_res["sanity"]["passed"] == ref_res["sanity"]["total"]
    report: dict[str, Any] = {
        "reference": ref,
        "engine": engine,
        "api": api,
        "tolerance_pts": tol,
        "weights": {
            ref: {
                "accuracy_pass": ref_ok,
                "sanity": ref_res["sanity"],
                "scores": {k: _summary(v) for k, v in ref_res["tasks"].items()},
                "decision": "reference",
            }
        },
    }
    shipped: list[str] = []
    for name in variants:
        eng = _engine_for(ctx, name)
        if eng is None:
            report["weights"][name] = {"decision": "not evaluated", "why": "no engine here loads it"}
            continue
        res = evaluate(ctx, eng, name, api, items)
        acc_ok, why, tasks = judge(ref_res, res, tol)
        entry: dict[str, Any] = {
            "accuracy_pass": acc_ok,
            "sanity": res["sanity"],
            "scores": {k: _summary(v) for k, v in res["tasks"].items()},
            "paired": tasks,
            "why": why,
        }
        failed = [t for t, c in tasks.items() if c["decision"] == "fail"]
        sanity_failed = res["sanity"]["passed"] < res["sanity"]["total"]
        if failed or sanity_failed:  # a failure, not an inconclusive interval: who failed, gate or model?
            entry["control"] = control(ctx, eng, ref, api, items, ref_res, failed, sanity_failed, tol)
        if name == "base":  # the user's own weights: judged and reported, never shipped or dropped
            entry["decision"] = "as given"
            entry["accuracy_pass"] = res["sanity"]["passed"] == res["sanity"]["total"]
        else:
            entry["perf"] = perf_ab(ctx, eng, ref, name)
            ship = acc_ok and entry["perf"]["win"]
            entry["decision"] = "ship" if ship else "no-ship"
            if ship:
                shipped.append(name)
        report["weights"][name] = entry
    f.shipped = shipped
    ctx.save()
    write_text(d / "accuracy.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(d / "ACCURACY.md", accuracy_md(ctx, report))
    arts = ["phase5/ACCURACY.md", "phase5/accuracy.json", "phase5/evals/"]
    if not ref_ok:
        s = ref_res["sanity"]
        return Gate(
            "red",
            f"the reference weights ({ref}) fail the known-answer gate ({s['passed']}/{s['total']}): "
            "accuracy is not measurable with them (dummy weights?) or the gate is misconfigured",
            hint="real weights are needed for accuracy; check --eval-api (an instruct model needs chat)",
            artifacts=arts,
        )
    verdicts = [f"{n}: {e['decision']}" for n, e in report["weights"].items() if n != ref]
    return Gate(
        "green",
        f"reference {ref} passes sanity; "
        + ("; ".join(verdicts) if verdicts else "no quantized variant to judge"),
        headline="; ".join(_headline(n, e) for n, e in report["weights"].items()),
        tier="DRAFT",
        artifacts=arts,
    )


NOT_MEASURABLE = "accuracy is not measurable on the simulator (it has no weights)"


def simulated_validation(ctx: Ctx) -> Gate:
    """Phase 5 on the simulator: the perf A/B runs (SIMULATED, the same interleaved machinery), the
    accuracy step says it is not measurable, and so no variant ships: a skipped gate, never a pass."""
    f = ctx.state.facts
    variants = [n for n, w in f.weights.items() if w.simulated]
    if not variants:
        return Gate("skipped", f"{NOT_MEASURABLE}; no modelled variant (optimize --quant-target fp8)")
    report: dict[str, Any] = {"reference": "base", "engine": "sim", "simulated": True, "weights": {}}
    lines = []
    for name in variants:
        perf = perf_ab(ctx, "sim", "base", name)
        report["weights"][name] = {
            "accuracy_pass": False,
            "accuracy": NOT_MEASURABLE,
            "perf": perf,
            "decision": "no-ship",
            "why": [NOT_MEASURABLE],
        }
        r, (lo, hi) = perf["tok_s_ratio"] or float("nan"), perf["tok_s_ratio_ci95"] or (float("nan"),) * 2
        lines.append(
            f"{name}: tok/s x{r:.2f} [{lo:.2f}, {hi:.2f}] (SIMULATED, "
            f"{perf['trials']} trials, c={perf['concurrency']}); no-ship: accuracy not measured"
        )
    f.shipped = []
    ctx.save()
    d = ctx.run_dir / "phase5"
    write_text(d / "accuracy.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(
        d / "ACCURACY.md",
        "# Phase 5: validate (SIMULATED)\n\n"
        f"{NOT_MEASURABLE}: no variant can ship from a simulated campaign.\n\n"
        + "\n".join(f"- {x}" for x in lines)
        + "\n",
    )
    return Gate(
        "skipped",
        f"{NOT_MEASURABLE}: no variant ships; " + "; ".join(lines),
        tier="SIMULATED",
        artifacts=["phase5/ACCURACY.md", "phase5/accuracy.json"],
    )


def control(
    ctx: Ctx,
    engine: str,
    ref: str,
    api: Api,
    items: dict[str, Any],
    ref_res: dict[str, Any],
    failed_tasks: list[str],
    sanity_failed: bool,
    tol: float,
) -> dict[str, Any]:
    """Attribute a failed accuracy gate (a sanity failure, or a task whose drop is beyond tolerance,
    not an inconclusive one) by putting the reference weights through the same gate. The gate is at
    fault when the reference fails it too: it shares the sanity failure (a wrong API, a broken prompt),
    or it fails against its own re-run (a nondeterministic server or extractor); otherwise the model."""
    failures: list[str] = []
    san = ref_res["sanity"]
    if sanity_failed and san["passed"] < san["total"]:
        failures.append(f"the reference also fails known-answer sanity ({san['passed']}/{san['total']})")
    if failed_tasks:
        again = evaluate(ctx, engine, ref, api, {t: items[t] for t in failed_tasks}, tag=".control")
        for t in failed_tasks:
            cmp = evsuite.compare(_score(ref_res["tasks"][t]), _score(again["tasks"][t]), tol)
            if cmp["decision"] == "fail":
                lo, hi = cmp["ci95"]
                failures.append(
                    f"{t}: the reference fails against its own re-run ({cmp['delta_pts']:+.1f} pts "
                    f"[{lo:+.1f}, {hi:+.1f}])"
                )
    return {
        "ran": f"reference weights ({ref}) through the same gate",
        "attributed_to": "gate" if failures else "model",
        "evidence": failures or ["the reference passes the same gate: the quantized weights are at fault"],
    }


def _summary(t: dict[str, Any]) -> dict[str, Any]:
    return {k: t[k] for k in ("n", "correct", "score_pct", "ci95")}


def _headline(name: str, e: dict[str, Any]) -> str:
    s = ", ".join(f"{k} {v['score_pct']:.1f}%" for k, v in e.get("scores", {}).items())
    return f"{name} {s} ({e.get('decision')})"


def accuracy_md(ctx: Ctx, rep: dict[str, Any]) -> str:
    i = ctx.intent
    lines = [
        "# Phase 5: accuracy and perf gate",
        "",
        f"Model {i.model.ref}; engine {rep['engine']} ({rep['api']} API); reference weights "
        f"{rep['reference']}; tolerance {rep['tolerance_pts']:g} absolute points. Deltas are paired on "
        "the same items (Tango paired score 95% interval, exact McNemar p). DRAFT.",
        "",
        "| weights | sanity | task | n | score % [95%] | delta pts [95%] | McNemar p | decision |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, e in rep["weights"].items():
        san = e.get("sanity") or {}
        for task, sc in (e.get("scores") or {"-": None}).items():
            p = (e.get("paired") or {}).get(task)
            sc_s = f"{sc['score_pct']:.1f} [{sc['ci95'][0]:.1f}, {sc['ci95'][1]:.1f}]" if sc else "-"
            dl = f"{p['delta_pts']:+.1f} [{p['ci95'][0]:+.1f}, {p['ci95'][1]:+.1f}]" if p else "-"
            lines.append(
                f"| {name} | {san.get('passed', '-')}/{san.get('total', '-')} | {task} | "
                f"{sc['n'] if sc else '-'} | {sc_s} | {dl} | {p['mcnemar_p']:.3g} | {p['decision']} |"
                if p
                else f"| {name} | {san.get('passed', '-')}/{san.get('total', '-')} | {task} | "
                f"{sc['n'] if sc else '-'} | {sc_s} | - | - | {e.get('decision')} |"
            )
    lines += ["", "## Perf A/B (interleaved trials, fresh deploy each)", ""]
    lines.append("| weights | engine | c | trials | tok/s ratio [95%] | TPOT speedup [95%] | win |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for name, e in rep["weights"].items():
        pf = e.get("perf")
        if not pf:
            continue

        def r(v: float | None, ci: list[float] | None) -> str:
            return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if v is not None and ci else "-"

        lines.append(
            f"| {name} | {pf['engine']} | {pf['concurrency']} | {pf['trials']} | "
            f"{r(pf['tok_s_ratio'], pf['tok_s_ratio_ci95'])} | "
            f"{r(pf['tpot_speedup'], pf['tpot_speedup_ci95'])} "
            f"| {'yes' if pf['win'] else 'no'} |"
        )
    lines += ["", "## Decisions", ""]
    for name, e in rep["weights"].items():
        lines.append(
            f"- **{name}**: {e.get('decision')}" + (f" ({'; '.join(e['why'])})" if e.get("why") else "")
        )
        if e.get("control"):
            c = e["control"]
            lines.append(
                f"  - control: {c['ran']} -> attributed to the **{c['attributed_to']}**: "
                + "; ".join(c["evidence"])
            )
    return "\n".join(lines) + "\n"


def accuracy_evidence(run_dir: Path) -> dict[str, bool] | None:
    """Phase 5's per-weights accuracy verdicts (None: no evidence on file), for the champion's gate."""
    f = run_dir / "phase5" / "accuracy.json"
    if not f.exists():
        return None
    try:
        rep = json.loads(f.read_text())
    except ValueError:
        return None
    out = {n: bool(e.get("accuracy_pass")) for n, e in rep.get("weights", {}).items()}
    if rep.get("reference") == "base":
        out.setdefault("base", out.get("base", False))
    return out


__all__ = ["PerftuneError", "evstats", "phase4", "phase5", "plan"]


def refuse_without_ack(ctx: Ctx) -> None:
    """`perftune quantize` without the compute acknowledgement: a one-line error naming the jobs it
    would run, before anything is written (the plan itself is validated first)."""
    if not ctx.intent.quant.schemes:
        raise ConfigError("no scheme to quantize with", hint="pass --scheme fp8-dynamic (or gguf-q8_0, ...)")
    if not any(e in REAL for e in ctx.intent.serving.engines):
        sim_schemes(ctx)  # modelled variants run no compute job: nothing to acknowledge
        return
    jobs = plan(ctx)
    if not ctx.intent.quant.ack_compute:
        raise ConfigError(
            f"refused: quantizing would run {len(jobs)} compute job(s) ("
            + "; ".join(j.describe() for j in jobs)
            + ")",
            hint="pass --ack-compute to run them",
        )
