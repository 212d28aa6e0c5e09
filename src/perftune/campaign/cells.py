"""The campaign's service layer: deploy one engine and keep it live, bench one cell into the bundle,
build a Cell from a bench result. Every phase (and the tuner's live evaluator) goes through these."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from perftune.bench.runner import BenchConfig, BenchResult, BenchRun
from perftune.bench.runner import Observer as BenchObserver
from perftune.bench.runner import Progress as BenchProgress
from perftune.bench.session import bench_to_dir
from perftune.bench.stats import across_trials
from perftune.bench.workloads import WorkloadSpec
from perftune.campaign.base import Ctx, EngineReady, EngineStarting, TrialProgress, wants_events
from perftune.campaign.state import Cell, Deployment, TunedConfig
from perftune.deploy import DeployRecord, deploy
from perftune.errors import ConfigError
from perftune.hardware.ceilings import gpu
from perftune.hardware.roofline import effective_dtypes, roofline
from perftune.models.card import ModelCard
from perftune.models.resolve import model_card
from perftune.serving.registry import engine as engine_info
from perftune.serving.spec import ServeSpec
from perftune.targets.local import LocalDeployment, WaitProgress, down, last_log_line


@cache
def _card_for(ref: str) -> ModelCard:
    return model_card(ref)


def card_of(ctx: Ctx, weights: str = "base") -> ModelCard:
    """The campaign model's card, read once per process (every cell's %SoL needs it); for a phase-4
    weight variant, that checkpoint's own card (its config.json declares the quantized dtype)."""
    if weights != "base" and (w := ctx.state.facts.weights.get(weights)) is not None:
        return _card_for(w.path)
    return _card_for(ctx.intent.model.path or ctx.intent.model.ref)


def model_to_serve(ctx: Ctx, engine: str, weights: str = "base") -> str:
    """What an engine is pointed at: the simulator and the mock take the model's name; a real engine
    its folder (or GGUF file), or a phase-4 variant's checkpoint."""
    i = ctx.intent
    if weights != "base":
        w = ctx.state.facts.weights.get(weights)
        if w is None:
            raise ConfigError(
                f"no weight variant '{weights}' in this campaign",
                hint="phase 4 (perftune quantize) writes the variants; known: "
                + (", ".join(ctx.state.facts.weights) or "none"),
            )
        return i.model.ref if w.simulated else w.path
    if engine == "llamacpp" and ctx.state.facts.gguf:  # phase 0 converted the HF folder for it
        return ctx.state.facts.gguf
    return i.model.ref if engine in ("sim", "mock") else (i.model.path or i.model.ref)


def on_cpu(ctx: Ctx, engine: str, levers: dict[str, Any] | None = None) -> bool:
    """A llama.cpp deploy without GPU layers computes on this host's CPU: no GPU roofline bounds it."""
    lv = ctx.intent.serving.levers.get(engine, {}) if levers is None else levers
    return engine == "llamacpp" and not lv.get("gpu-layers")


def hardware_label(ctx: Ctx, engine: str, levers: dict[str, Any] | None = None) -> str:
    """What a measurement ran on, for its context: the GPUs, or this host's CPU for a CPU engine."""
    if on_cpu(ctx, engine, levers):
        return f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    return f"{ctx.intent.hardware.gpus}x{ctx.intent.hardware.gpu}"


def synthetic_workload(engine: str) -> str:
    """The workload a single-workload measurement (a profile window, phase 5's perf A/B) uses on an
    engine: random token ids, except on llama-cpp-python's server, which takes text prompts only
    (HumanEval's short code prompts there)."""
    return "code" if engine == "llamacpp" else "random"


def workload_spec(ctx: Ctx, kind: str, concurrency: int) -> WorkloadSpec:
    i = ctx.intent
    n = max(16, i.suite.requests_per_slot * concurrency)
    if kind in ("random", "prefix"):
        return WorkloadSpec(kind=kind, isl=i.suite.isl, osl=i.suite.osl, num_requests=n)
    if kind == "long":
        card = card_of(ctx)
        return WorkloadSpec(
            kind="long",
            isl=min(i.suite.long_isl, card.max_context - i.suite.osl - 16),
            osl=i.suite.osl,
            num_requests=n,
        )
    return WorkloadSpec(
        kind=kind, osl=i.suite.osl, num_requests=n, max_context=card_of(ctx).max_context or None
    )


def speed_of_light(
    ctx: Ctx,
    tpot_ms: float | None,
    concurrency: int,
    context: int,
    levers: dict[str, Any] | None = None,
    weights: str = "base",
    engine: str | None = None,
) -> tuple[float | None, str | None]:
    """(decode roofline floor / measured median TPOT in %, the binding ceiling) for a cell. The floor
    counts the bytes really read: the checkpoint's weight dtype, a quantization lever and the KV-cache
    dtype lever of the cell's config (hardware.roofline.effective_dtypes)."""
    if not tpot_ms or (engine is not None and on_cpu(ctx, engine, levers)):
        return None, None  # no TPOT, or a CPU engine: the GPU's roofline does not bound it
    tp = ctx.state.facts.tp
    rf = roofline(
        card_of(ctx, weights),
        gpu(ctx.intent.hardware.gpu),
        tp=tp,
        batch=concurrency,
        context=max(1, context),
        levers=levers or {},
    )
    return 100.0 * rf.decode_step_floor_ms / tpot_ms, rf.ceiling_key


def serving_context(ctx: Ctx, levers: dict[str, Any], weights: str = "base") -> dict[str, Any]:
    """What the deploy knew, for the cell's MeasurementContext: model folder, parallelism, weight
    quantization, KV-cache dtype and the levers the deploy was given, so no cell carries an empty
    context its deploy could have filled (the bench client alone cannot know them)."""
    dt = effective_dtypes(card_of(ctx, weights), levers)
    w = ctx.state.facts.weights.get(weights) if weights != "base" else None
    out: dict[str, Any] = {
        "model_path": w.path if w is not None else (ctx.intent.model.path or ctx.intent.model.ref),
        "weights": weights if w is None or w.scheme is None else f"{weights} ({w.scheme}, {w.backend})",
        "parallelism": {"tp": ctx.state.facts.tp},
        "quantization": f"{dt.weight_dtype} weights ({dt.weight_source})",
        "kv_cache_dtype": f"{dt.kv_dtype} ({dt.kv_source})",
        "levers": dict(levers),
    }
    return out


def baseline_name(ctx: Ctx, engine: str) -> str:
    """The named baseline every cell of an engine is compared to: its phase-1 baseline config, and
    where that came from (the standing champion, levers given, or the engine's defaults)."""
    src = ctx.state.facts.baseline_source.get(engine)
    if src:
        return f"{engine} baseline = {src.split('; lake row')[0]}"
    given = ctx.intent.serving.levers.get(engine)
    return f"{engine} baseline ({'levers given: ' + str(given) if given else 'engine defaults'})"


def make_cell(
    ctx: Ctx,
    run: BenchRun,
    *,
    phase: str,
    engine: str,
    config: str,
    workload: str,
    path: Path,
    levers: dict[str, Any] | None = None,
    weights: str = "base",
) -> Cell:
    r = run.result
    tok = r.metric("output_tok_s")
    med = across_trials([t.tpot_ms.p50 for t in r.trials])
    ok = sum(t.counts.ok for t in r.trials)
    in_tok = sum(t.counts.input_tokens for t in r.trials)
    ctx_len = round(in_tok / ok + ctx.intent.suite.osl / 2) if ok else ctx.intent.suite.isl
    conc = r.context.workload.concurrency or 1
    tp = ctx.state.facts.tp
    levers = dict(ctx.intent.serving.levers.get(engine, {}) if levers is None else levers)
    sol, key = speed_of_light(ctx, med.mean, conc, ctx_len, levers, weights, engine)
    grounded = byte_grounded(r, gpu(ctx.intent.hardware.gpu).hbm_tb_s)
    prefix = levers.get("prefix-cache", engine_info(engine).prefix_cache_default)
    return Cell(
        cell_id=path.name,
        phase=phase,
        engine=engine,
        config=config,
        weights=weights,
        levers=levers,
        workload=workload,
        concurrency=conc,
        gpus=tp,
        path=ctx.rel(path),
        output_tok_s=tok.mean or 0.0,
        output_tok_s_std=tok.std,
        output_tok_s_ci95=list(tok.ci95) if tok.ci95 else None,
        tpot_median_ms=med.mean,
        tpot_ci95=list(med.ci95) if med.ci95 else None,
        ttft_mean_ms=r.metric("ttft_ms").mean,
        trials=len(r.trials),
        sol_pct=sol,
        ceiling_key=key,
        **grounded,
        tier=r.context.tier,
        simulated=r.context.stack.simulated,
        prefix_cache=None if prefix is None else bool(prefix),
        context={**r.context.model_dump(mode="json"), **serving_context(ctx, levers, weights)},
        flags=r.flags(),
        notes=_notes(r),
        requests_sent=sum(t.counts.sent for t in r.trials),
        requests_ok=ok,
    )


def byte_grounded(r: BenchResult, hbm_tb_s: float) -> dict[str, Any]:
    """The cell's L3 grounding: GPM DRAM bandwidth measured in every trial (mean over trials), as TB/s
    and as % of the ceiling's HBM bandwidth. A cell with a trial without GPM stays L0 analytical: a
    byte-grounded figure must rest on every counted trial, not on the lucky ones."""
    utils = [t.gpu.dram_bw_util_pct if t.gpu is not None else None for t in r.trials]
    if not utils or any(u is None for u in utils):
        return {"sol_rigor": "L0 analytical"}
    util = sum(u for u in utils if u is not None) / len(utils)
    # GPM reports utilisation of the DRAM's peak; the ceilings file names the peak %SoL is against
    # (hardware/ceilings.yaml: the datasheet figure, checked against a measured copy on the host).
    return {
        "sol_rigor": "L3 DRAM counters",
        "dram_bw_util_pct": util,
        "dram_tb_s": util / 100.0 * hbm_tb_s,
        "sol_bytes_pct": util,
    }


def _notes(r: BenchResult) -> list[str]:
    acct = r.summary.accounting
    head = [f"tokens: {acct.used} usage ({acct.reason})", *acct.notes] if acct is not None else []
    return [*head, *r.summary.drift_notes]


def failed_share(ctx: Ctx, cell: Cell) -> float:
    """The share of a cell's requests that failed: from the counts the cell was built with; a cell of
    an older bundle, built without them, reads its summary.json."""
    if cell.requests_sent is not None and cell.requests_ok is not None:
        sent, ok = cell.requests_sent, cell.requests_ok
        return 1 - ok / sent if sent else 1.0
    data = json.loads((ctx.run_dir / cell.path / "summary.json").read_text())
    sent = sum(t["counts"]["sent"] for t in data["trials"])
    ok = sum(t["counts"]["ok"] for t in data["trials"])
    return 1 - ok / sent if sent else 1.0


@contextlib.contextmanager
def live_server(
    ctx: Ctx,
    engine: str,
    phase_dir: Path,
    levers: dict[str, Any] | None = None,
    *,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    launch_prefix: list[str] | None = None,
    ready_timeout_s: float | None = None,
    weights: str = "base",
) -> Iterator[DeployRecord]:
    """Deploy one engine for a phase (known-good check, readiness, smoke gate), tear it down after.
    `extra_args`, `env` and `launch_prefix` are phase 2's profiler hooks (trace folder, ncu)."""
    i = ctx.intent
    model = model_to_serve(ctx, engine, weights)
    variant = ctx.state.facts.weights.get(weights)
    spec = ServeSpec(
        engine=engine,
        model=model,
        served_name=Path(i.model.ref.rstrip("/")).name,
        tp=ctx.state.facts.tp,
        levers={
            **(i.serving.levers.get(engine, {}) if levers is None else levers),
            **(variant.levers if variant is not None else {}),
        },
        extra_args=[*i.serving.engine_args.get(engine, []), *(extra_args or [])],
        env=dict(env or {}),
        launch_prefix=list(launch_prefix or []),
        gpu=i.hardware.gpu if engine == "sim" else None,
    )
    started: list[int] = []

    def record_group(dep: LocalDeployment) -> None:
        # Saved before the readiness wait: a campaign killed while the engine loads leaves a group
        # that --resume must find and reap (the deploy's own run id is its log folder's name).
        started.append(dep.pgid)
        ctx.state.live.append(Deployment(engine=engine, pgid=dep.pgid, run_id=dep.log_path.parent.name))
        ctx.save()

    on_wait: WaitProgress | None = None
    if wants_events(ctx.observe):

        def on_wait(elapsed_s: float, line: str) -> None:
            ctx.progress(EngineStarting(engine, elapsed_s, line))

    try:
        rec, dep = deploy(
            spec,
            runs_dir=phase_dir / "servers",
            registry=i.registry,
            ready_timeout_s=ready_timeout_s or i.serving.ready_timeout_s,
            on_up=record_group,
            on_wait=on_wait,
        )
    except BaseException:
        _forget(ctx, started)  # deploy tore its group down before raising
        raise
    if on_wait is not None:
        ctx.progress(EngineReady(engine, rec.ready_s, last_log_line(Path(rec.log_path))))
    try:
        yield rec
    finally:
        down(dep)
        _forget(ctx, started)


def _forget(ctx: Ctx, pgids: list[int]) -> None:
    if pgids:
        ctx.state.live = [d for d in ctx.state.live if d.pgid not in pgids]
        ctx.save()


class TrialRate:
    """A trial's live output tok/s from the bench's progress, whose token count runs over the whole
    session (warmup and every trial): a trial starts where the previous one left off. The bench's
    count is a cheap estimate read from each response's last network read; where it stays at 0 (the
    server sent its usage and [DONE] in separate reads) the requests done times `osl` stand in. Pure:
    the caller passes the clock."""

    def __init__(self, now: float, osl: int | None = None) -> None:
        self.osl = osl
        self.key: tuple[str, int] | None = None
        self.t0, self.tok0 = now, 0
        self.last_t, self.last_tok = now, 0

    def update(self, p: BenchProgress, now: float) -> float:
        if (p.phase, p.trial) != self.key:
            self.key, self.t0, self.tok0 = (p.phase, p.trial), self.last_t, self.last_tok
        self.last_t, self.last_tok = now, p.output_tokens
        tokens = p.output_tokens - self.tok0
        if tokens <= 0 and self.osl:
            tokens = p.done * self.osl
        return tokens / max(now - self.t0, 1e-6)


def trial_observer(ctx: Ctx, cell_id: str, trials: int, osl: int | None) -> BenchObserver | None:
    """A bench observer that turns the bench's per-request progress into TrialProgress events (trials
    only, not the warmup); None when the campaign's observer takes no events."""
    if not wants_events(ctx.observe):
        return None
    rate = TrialRate(time.monotonic(), osl)

    def observe(p: BenchProgress) -> None:
        tok_s = rate.update(p, time.monotonic())
        if p.phase == "trial":
            ctx.progress(TrialProgress(cell_id, p.trial + 1, trials, p.done, p.total, tok_s))

    return observe


def bench_cell(
    ctx: Ctx,
    rec: DeployRecord,
    *,
    phase: str,
    engine: str,
    config: str,
    workload: str,
    concurrency: int,
    cell_dir: Path,
    levers: dict[str, Any] | None = None,
    weights: str = "base",
) -> Cell:
    """Bench one cell into cell_dir (written beside it, then renamed in: never half a folder)."""
    i = ctx.intent
    tmp = cell_dir.with_name(cell_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(cell_dir, ignore_errors=True)
    wl = workload_spec(ctx, workload, concurrency)
    # the deployed levers (a baseline cell's are the intent's)
    served = dict(i.serving.levers.get(engine, {}) if levers is None else levers)
    cfg = BenchConfig(
        endpoint=rec.endpoint,
        model=rec.served_name,
        workload=wl,
        concurrency=concurrency,
        trials=i.suite.trials,
        warmup_requests=min(4, concurrency),
        hardware=hardware_label(ctx, engine, levers),
        engine=None,
        server_log=rec.log_path,  # compilation logged during a trial flags it
        claim=i.slo.focus,
        baseline=None if config == "baseline" else baseline_name(ctx, engine),  # not compared to itself
        # the %SoL dtypes and the token accounting (a speculative lever asks for per-chunk usage) read
        # the deployed levers
        sol_levers=served,
        text_vocab=rec.plan.text_prompts_only,
        # the cell's summary.json names its config itself (levers, dtypes, weights, TP)
        serving=serving_context(ctx, served, weights),
    )
    run, _ = bench_to_dir(
        cfg, out_dir=tmp, observer=trial_observer(ctx, cell_dir.name, i.suite.trials, wl.osl)
    )
    tmp.rename(cell_dir)
    return make_cell(
        ctx,
        run,
        phase=phase,
        engine=engine,
        config=config,
        workload=workload,
        path=cell_dir,
        levers=levers,
        weights=weights,
    )


def suite_configs(ctx: Ctx, engine: str) -> list[tuple[str, dict[str, Any]]]:
    """The configs phase 8 benches for an engine: its baseline, then the top X tuned configs of phase
    3 in rank order (crowned or not: a config that wins the tune's workloads and loses the suite must
    be seen losing), then each speculative config phase 7 shipped, each once. A bundle from before the
    ranking kept only the crowned levers."""
    i = ctx.intent
    base = dict(i.serving.levers.get(engine, {}))
    out: list[tuple[str, dict[str, Any]]] = [("baseline", base)]
    top = ctx.state.facts.tuned_top.get(engine)
    if top is None and (tuned := ctx.state.facts.tuned.get(engine)) is not None:
        top = [TunedConfig(name="tuned", arm="tuned", levers=tuned, score=None, crowned=True)]
    for t in (top or [])[: i.suite.top_x]:
        if all(t.levers != lv for _n, lv in out):
            out.append((t.name, dict(t.levers)))
    # phase 7: a speculative config that passed its gate (acceptance and TPOT wins on every workload)
    for method, v in ctx.state.facts.spec.get(engine, {}).items():
        if v.get("verdict") == "ship" and all(v["levers"] != lv for _n, lv in out):
            out.append((f"spec-{method}", dict(v["levers"])))
    return out


def suite_weights(ctx: Ctx, engine: str) -> list[str]:
    """The weights phase 8 benches an engine's configs with: the base, then every phase-4 variant that
    phase 5 shipped (accuracy within tolerance and a perf win) and this engine loads."""
    f = ctx.state.facts
    return ["base"] + [n for n in f.shipped if n in f.weights and engine in f.weights[n].engines]
