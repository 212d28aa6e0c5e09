"""The public facade. The CLI and (later) the MCP server are thin adapters over these functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perftune.bench.calibrate import (
    DEFAULT_LADDER,
    CalibrationPoint,
    MockTruth,
    ceiling,
    point,
    requests_for,
)
from perftune.bench.runner import BenchConfig, run_bench
from perftune.bench.session import bench_to_dir
from perftune.bench.session import run_async as run_async  # re-exported: the facade's event loop
from perftune.bench.workloads import WorkloadSpec
from perftune.errors import ConfigError

if TYPE_CHECKING:  # heavier modules load only where they are used: `bench run` needs none of them
    from perftune.advisors.loader import LoaderAdvice
    from perftune.advisors.tp import TpAdvice
    from perftune.bench.capacity import CapacityConfig, CapacityObserver, CapacityResult
    from perftune.bench.slo import Slo
    from perftune.models.card import ModelCard as ModelCard_
    from perftune.registry.check import CheckResult
    from perftune.registry.schema import ModelEntry
    from perftune.report.render import ReportResult


# Run a bench and write its evidence folder: the facade exposes the bench session as it is.
bench = bench_to_dir


def calibration_point(endpoint: str, concurrency: int, truth: MockTruth) -> CalibrationPoint:
    """One closed-loop level against a mock with known timing, judged against ground truth."""
    cfg = BenchConfig(
        endpoint=endpoint,
        model="mock",
        workload=WorkloadSpec(
            kind="random", isl=truth.isl, osl=truth.osl, num_requests=requests_for(concurrency)
        ),
        concurrency=concurrency,
        trials=1,
        warmup_requests=min(concurrency, 64),
        warmup_until_stable=False,  # the mock's timing is fixed: nothing to wait for
        engine="perftune-mock",
    )
    t = run_async(run_bench(cfg)).result.trials[0]
    return point(concurrency, t.ttft_ms.mean or float("nan"), t.output_tok_s, truth, itl_ms=t.itl_ms.mean)


def calibrate(
    truth: MockTruth | None = None,
    ladder: Sequence[int] = DEFAULT_LADDER,
    *,
    on_point: Callable[[CalibrationPoint], None] | None = None,
    stop_after_unfaithful: int = 2,
) -> tuple[list[CalibrationPoint], CalibrationPoint | None]:
    """Measure this host's faithful client ceiling against a mock server in a child process."""
    from perftune.mock.process import mock_process

    truth = truth or MockTruth()
    points: list[CalibrationPoint] = []
    with mock_process(truth.ttft_ms, truth.itl_ms, truth.tokens_per_chunk) as endpoint:
        misses = 0
        for c in ladder:
            p = calibration_point(endpoint, c, truth)
            points.append(p)
            if on_point:
                on_point(p)
            misses = 0 if p.faithful else misses + 1
            if misses >= stop_after_unfaithful:
                break
    return points, ceiling(points)


# ---------------------------------------------------------------- SLO capacity


def capacity(
    cfg: CapacityConfig, out_dir: str | Path | None = None, observer: CapacityObserver | None = None
) -> tuple[CapacityResult, Path]:
    """Search the highest load cfg's endpoint sustains inside cfg.slo; returns the result and its folder
    (default runs/capacity-<time>-<id>), which holds capacity.json, capacity.md and points/<mode>-<load>."""
    from perftune.bench.capacity import run_capacity
    from perftune.bench.session import default_run_dir

    out = Path(out_dir) if out_dir is not None else default_run_dir("capacity")
    return run_capacity(cfg, out, observer), out


def capacity_slo(
    text: str,
    *,
    model_size: str | None = None,
    model_card: str | None = None,
    served_model: str | None = None,
    moe: bool = False,
    presets_file: str | Path | None = None,
) -> Slo:
    """Resolve --slo (a preset, a size-class family or ttft=..,tpot=..,p=..) for a model."""
    from perftune.bench.slo import slo_for_model

    return slo_for_model(
        text,
        model_size=model_size,
        model_card=model_card,
        served_model=served_model,
        moe=moe,
        presets_file=Path(presets_file) if presets_file is not None else None,
    )


def slo_presets(presets_file: str | Path | None = None) -> list[dict[str, Any]]:
    """The SLO presets and families (shipped, plus a user file's), one row each with its source."""
    from perftune.bench.slo import preset_rows

    return preset_rows(Path(presets_file) if presets_file is not None else None)


# ---------------------------------------------------------------- known-good registry


def known_good_record(
    model_id: str,
    *,
    registry: str | Path | None = None,
    slug: str,
    engine: str,
    required_flags: Sequence[str] = (),
    grind_frontier: str,
    engine_versions: str = "",
    hardware: str = "",
    arch_note: str = "",
    fallback: str = "",
    champion: dict[str, str] | None = None,
) -> tuple[Path, ModelEntry]:
    """Append a model's known-good entry (append-only, comment-preserving, locked, atomic)."""
    from perftune.registry.store import record_entry

    return record_entry(
        model_id,
        registry=registry,
        slug=slug,
        engine=engine,
        required_flags=required_flags,
        grind_frontier=grind_frontier,
        engine_versions=engine_versions,
        hardware=hardware,
        arch_note=arch_note,
        fallback=fallback,
        champion=champion,
    )


def known_good_check(
    model: str | None,
    *,
    registry: str | Path | None = None,
    serve_args: str | None = None,
    deploy_file: str | Path | None = None,
    engine_version: str | None = None,
    require_registered: bool = False,
) -> tuple[Path, CheckResult]:
    """Check a deploy (serve args or deploy file) against the registry. Pure decision, fail-closed."""
    from perftune.registry.check import check_deploy
    from perftune.registry.deploy_args import parse_deploy_file, parse_serve_args
    from perftune.registry.store import load_for_check, resolve_registry

    if (serve_args is None) == (deploy_file is None):
        raise ConfigError(
            "give exactly one of --serve-args or --deploy-file",
            hint='e.g. --serve-args "vllm serve MODEL -tp 4"',
        )
    if deploy_file is not None:
        p = Path(deploy_file)
        if not p.exists():
            raise ConfigError(
                f"deploy file not found: {p}", hint="pass a Kubernetes manifest, script or serve spec"
            )
        deploy = parse_deploy_file(p.read_text(encoding="utf-8"), p.name)
    else:
        assert serve_args is not None
        deploy = parse_serve_args(serve_args)
    if engine_version:
        deploy.engine_version = engine_version
    model = model or deploy.model
    if not model:
        raise ConfigError("no model given and none found in the deploy", hint="pass --model MODEL_ID")
    path = resolve_registry(registry)
    reg = load_for_check(path, must_exist=True)  # the entries shipped with perftune are always consulted
    return path, check_deploy(model, reg.models.get(model), deploy, require_registered=require_registered)


def known_good_validate(registry: str | Path | None = None) -> tuple[Path, int]:
    """Validate a whole registry file; returns its path and the number of model entries."""
    from perftune.registry.store import load_registry, resolve_registry

    path = resolve_registry(registry)
    return path, len(load_registry(path).models)


# ---------------------------------------------------------------- model intelligence and advisors


def inspect_model(ref: str) -> ModelCard_:
    from perftune.models.resolve import model_card

    return model_card(ref)


def advise_tp(
    ref: str,
    gpu_name: str,
    *,
    dtype: str | None = None,
    kv_dtype: str | None = None,
    levers: dict[str, Any] | None = None,
    current_tp: int | None = None,
    concurrency: int = 64,
    context: int = 4096,
    usd_per_gpu_hour: float = 2.5,
    emit: str | Path | None = None,
) -> TpAdvice:
    from perftune.advisors.tp import advise_tp as _advise
    from perftune.advisors.tp import tp_markdown
    from perftune.hardware.ceilings import gpu
    from perftune.models.resolve import model_card
    from perftune.util.atomic import write_text

    a = _advise(
        model_card(ref),
        gpu(gpu_name),
        dtype=dtype,
        kv_dtype=kv_dtype,
        levers=levers,
        current_tp=current_tp,
        concurrency=concurrency,
        context=context,
        usd_per_gpu_hour=usd_per_gpu_hour,
    )
    if emit:
        d = Path(emit)
        write_text(d / "tp_rightsize.json", a.model_dump_json(indent=2) + "\n")
        write_text(d / "TP-RIGHTSIZE.md", tp_markdown(a))
    return a


def advise_sol(
    ref: str,
    gpu_name: str,
    *,
    dtype: str | None = None,
    kv_dtype: str | None = None,
    levers: dict[str, Any] | None = None,
    tp: int = 1,
    batch: int = 1,
    context: int = 1024,
    measured_tpot_ms: float | None = None,
) -> dict[str, Any]:
    from perftune.hardware.ceilings import gpu
    from perftune.hardware.roofline import roofline, sol_pct
    from perftune.models.resolve import model_card

    r = roofline(
        model_card(ref),
        gpu(gpu_name),
        tp=tp,
        weight_dtype=dtype,
        kv_dtype=kv_dtype,
        levers=levers,
        batch=batch,
        context=context,
    )
    out: dict[str, Any] = {**r.model_dump(), "bound": r.decode_bound, "model": ref}
    if measured_tpot_ms is not None:
        out["measured_tpot_ms"] = measured_tpot_ms
        out["sol_pct"] = sol_pct(r.decode_step_floor_ms, measured_tpot_ms)
    return out


def advise_loader(
    *,
    model: str | None = None,
    model_gb: float | None = None,
    serve_args: str = "",
    hub_egress: bool = True,
    runai_streamer: bool = False,
    object_store: bool = False,
    local_nvme: bool = True,
    emit: str | Path | None = None,
) -> tuple[LoaderAdvice, float]:
    from perftune.advisors.loader import advise_loader as _advise
    from perftune.advisors.loader import loader_markdown
    from perftune.models.resolve import model_card
    from perftune.util.atomic import write_text

    if model_gb is None:
        if model is None:
            raise ConfigError("give --model or --model-gb", hint="e.g. --model llama-3.1-70b")
        model_gb = model_card(model).native_weight_bytes / 1e9
    a = _advise(
        model_gb=model_gb,
        serve_args=serve_args,
        hub_egress=hub_egress,
        runai_streamer=runai_streamer,
        object_store=object_store,
        local_nvme=local_nvme,
    )
    if emit:
        d = Path(emit)
        write_text(d / "loader_advisor.json", a.model_dump_json(indent=2) + "\n")
        write_text(d / "LOADER.md", loader_markdown(a, model_gb))
    return a, model_gb


def synth_model(ref: str, out: str | Path) -> dict[str, Any]:
    from perftune.models.resolve import load_config
    from perftune.models.synth import synth

    cfg, _, _ = load_config(ref)
    return synth(cfg, Path(out))


# ---------------------------------------------------------------- the simulator


def sim_setup(
    model: str, gpu_name: str, flags: Sequence[str] = (), calibration: str | Path | None = None
) -> tuple[Any, Any, Any, Any, str | None]:
    """(ModelCard, Gpu, SimConfig, Calibration, model_dir) for a model ref, a GPU and vLLM flags."""
    from perftune.hardware.ceilings import gpu
    from perftune.models.resolve import model_card
    from perftune.sim.calibration import for_gpu
    from perftune.sim.config import parse_vllm_flags

    card = model_card(model)
    g = gpu(gpu_name)
    cfg = parse_vllm_flags(list(flags))
    model_dir = model if Path(model).is_dir() else None
    return card, g, cfg, for_gpu(g, calibration), model_dir


def sim_predict(
    model: str,
    gpu_name: str,
    workload: WorkloadSpec,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    trials: int = 3,
    flags: Sequence[str] = (),
    calibration: str | Path | None = None,
    scheduler: str = "vllm",
) -> Any:
    """Bench-identical metrics in virtual time (a BenchResult labelled simulated); `scheduler` picks
    whose step composition is simulated (vllm or sglang)."""
    from perftune.sim.predict import PredictSpec, predict

    if scheduler not in ("vllm", "sglang"):
        raise ConfigError(f"unknown scheduler '{scheduler}'", hint="vllm or sglang")
    card, g, cfg, cal, model_dir = sim_setup(model, gpu_name, flags, calibration)
    cfg = cfg.model_copy(update={"scheduler": scheduler})
    spec = PredictSpec(workload=workload, concurrency=concurrency, rate=rate, trials=trials)
    return predict(card, g, cfg, cal, spec, model_dir=model_dir)


def sim_intervals(
    model: str,
    gpu_name: str,
    result: Any,
    workload: str,
    concurrency: int | None,
    *,
    flags: Sequence[str] = (),
    calibration: str | Path | None = None,
) -> list[Any]:
    """The interval each predicted metric (TPOT, TTFT, output tok/s) carries: the calibration's residuals
    in the prediction's regime, or the nearest calibrated one (flagged extrapolated), or none (said)."""
    from perftune.sim.errorbars import METRICS, interval, regime

    _, _, cfg, cal, _ = sim_setup(model, gpu_name, flags, calibration)
    reg = regime(concurrency or 1, cfg.weight_dtype, cfg.kv_dtype, workload)
    return [interval(k, result.metric(k).mean, reg, cal.residuals) for k in METRICS]


def sim_spec(
    model: str,
    gpu_name: str,
    *,
    k: int,
    acceptance: float | None = None,
    per_pos: Sequence[float] | None = None,
    coverage: float = 1.0,
    context: int = 1024,
    concurrencies: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256),
    flags: Sequence[str] = (),
    calibration: str | Path | None = None,
) -> dict[str, Any]:
    """The simulator's steady-state decode with and without speculation (n-gram drafting) per
    concurrency, from an acceptance profile (given, or i.i.d. at `acceptance`); every figure SIMULATED."""
    from dataclasses import asdict

    from perftune.serving.specdec import iid_profile
    from perftune.sim.specdec import (
        NGRAM_STEP_OVERHEAD_MS,
        NGRAM_STEP_OVERHEAD_MS_PER_SEQ,
        crossover,
        predict_decode,
    )
    from perftune.sim.timing import StepModel

    if (acceptance is None) == (per_pos is None):
        raise ConfigError("give exactly one of --acceptance and --per-pos", hint="e.g. --acceptance 0.6")
    try:
        prof = list(per_pos) if per_pos is not None else iid_profile(float(acceptance or 0.0), k)
    except ValueError as e:
        raise ConfigError(str(e), hint="acceptance is a probability in [0, 1]") from None
    if len(prof) != k or any(not 0 <= x <= 1 for x in prof) or prof != sorted(prof, reverse=True):
        raise ConfigError(
            f"--per-pos needs {k} shares in [0, 1], non-increasing (position i is reached only through i-1)",
            hint="e.g. --k 3 --per-pos 0.7,0.5,0.3",
        )
    card, g, cfg, cal, _ = sim_setup(model, gpu_name, flags, calibration)
    m = StepModel.build(card, g, cfg, cal)
    if not 0.0 <= coverage <= 1.0:
        raise ConfigError(
            f"--coverage {coverage} is not a share in [0, 1]",
            hint="the share of decode steps that carry a draft (prompt lookup: where the context matches)",
        )
    rows = [predict_decode(m, c, context, k, prof, coverage=coverage) for c in concurrencies]
    return {
        "simulated": True,
        "model": card.name,
        "gpu": g.key,
        "k": k,
        "per_pos": prof,
        "context": context,
        "coverage": coverage,
        "draft": (
            f"n-gram: {NGRAM_STEP_OVERHEAD_MS:g} ms + {NGRAM_STEP_OVERHEAD_MS_PER_SEQ:g} ms x concurrency "
            "per step beyond a plain step, fitted to vLLM 0.26.0 on one H200 (held-out error about 21%: "
            "benchmarks/spec_sim_vs_gpu.py)"
        ),
        "rows": [{**asdict(r), "tpot_speedup": r.tpot_speedup, "tok_s_ratio": r.tok_s_ratio} for r in rows],
        "crossover": crossover(m, context, k, prof, concurrencies, coverage=coverage),
    }


def sim_calibrate(
    measurements: Sequence[str | Path],
    out: str | Path,
    *,
    bundles: Sequence[str | Path] = (),
    model: str = "llama-3.1-8b",
    gpu_name: str | None = None,
    device_memory_mib: float | None = None,
    kv_tokens: int | None = None,
    maxiter: int = 200,
    skipped: dict[str, int] | None = None,
) -> Any:
    """Fit the simulator's efficiency factors to measured points (files, and every calibrating cell under
    `bundles`); writes and returns the Calibration, with per-regime residuals. `skipped` (when given)
    receives what the bundles held that cannot calibrate, counted by reason."""
    from perftune.hardware.ceilings import gpu
    from perftune.models.resolve import model_card
    from perftune.sim.calibrate import base_calibration, fit, from_bundles, load_measurements
    from perftune.sim.calibration import save_calibration

    if not measurements and not bundles:
        raise ConfigError("nothing to calibrate from", hint="pass summary.json files or --from BUNDLE")
    override = gpu(gpu_name).key if gpu_name else None
    points = load_measurements(measurements, gpu_override=override) if measurements else []
    if bundles:
        found, why = from_bundles(bundles, gpu_override=override)
        points += found
        if skipped is not None:
            skipped.update(why)
    keys = {m.gpu for m in points}
    if len(keys) > 1:
        raise ConfigError(
            f"measurements mix GPUs: {', '.join(sorted(keys))}", hint="calibrate one GPU at a time"
        )
    g = gpu(keys.pop())
    card = model_card(model)
    base = base_calibration(card, g, device_memory_mib, kv_tokens)
    cal = fit(card, g, points, base, maxiter=maxiter)
    save_calibration(cal, out)
    return cal


# ---------------------------------------------------------------- campaign, lake, frontier


def optimize(
    *,
    runs_dir: str | Path = "runs",
    intent: Any = None,
    resume: str | None = None,
    until: str | None = None,
    start_phase: str | None = None,
    skip: Sequence[str] = (),
    confirm: Callable[[str], bool] | None = None,
    observe: Callable[[str], None] | None = None,
    lake: str | Path | None = None,
) -> tuple[Path, Any]:
    """Run (or resume) a campaign through its gated phases; publishes to the lake at the end."""
    from perftune.campaign.pipeline import run_campaign
    from perftune.lake.db import default_lake

    return run_campaign(
        runs_dir=Path(runs_dir),
        intent=intent,
        resume=resume,
        until=until,
        start_phase=start_phase,
        skip=list(skip),
        confirm=confirm,
        observe=observe,
        lake=Path(lake) if lake else default_lake(),
    )


def lake_query(sql: str, lake: str | Path | None = None) -> list[dict[str, Any]]:
    from perftune.lake.db import default_lake, query

    return query(lake or default_lake(), sql)


def lake_show(what: str, lake: str | Path | None = None, model: str | None = None) -> list[dict[str, Any]]:
    from perftune.lake.db import default_lake, query

    tables = {
        "campaigns": "SELECT campaign_id, model, gpu, engines, focus, status, tier, created_at, gaps "
        "FROM campaigns",
        "champions": "SELECT campaign_id, model, rank, recommended, engine, config, gpus, metric, value, "
        "ci_lo, ci_hi, concurrency, tier, eligible, reason, failing_gates FROM champions",
    }
    if what not in tables:
        raise ConfigError(f"cannot show '{what}'", hint="one of: campaigns, champions")
    sql = tables[what] + (" WHERE model = ?" if model else "") + " ORDER BY 1, 2"
    return query(lake or default_lake(), sql, [model] if model else None)


def frontier(findings: str | Path | None = None, model: str | None = None) -> list[dict[str, Any]]:
    from perftune.registry import findings as ledger

    path = Path(findings) if findings else ledger.default_path()
    if not path.exists():
        raise ConfigError(
            f"no value-findings ledger at {path}", hint="run a campaign first, or pass --findings"
        )
    return ledger.frontier(path, model)


def profile(
    run_id: str,
    *,
    runs_dir: str | Path = "runs",
    layers: Sequence[str] | None = None,
    concurrency: Sequence[int] | None = None,
    observe: Callable[[str], None] | None = None,
    lake: str | Path | None = None,
    reparse: bool = False,
) -> tuple[Path, Any]:
    """Phases 2 (profile: L1 py-spy, L2 kernel timeline, L3 GPM counters, L4 ncu) and 2.5 (the cited
    lever ledger) of an existing campaign, in its bundle."""
    from perftune.campaign.pipeline import run_profile
    from perftune.lake.db import default_lake

    update: dict[str, Any] = {}
    if layers:
        update["profile_layers"] = list(layers)
    if concurrency:
        update["profile_concurrency"] = list(concurrency)
    return run_profile(
        run_id,
        runs_dir=Path(runs_dir),
        update=update,
        observe=observe,
        lake=Path(lake) if lake else default_lake(),
        reparse=reparse,
    )


def quantize(
    run_id: str,
    *,
    schemes: Sequence[str],
    ack_compute: bool,
    runs_dir: str | Path = "runs",
    observe: Callable[[str], None] | None = None,
    lake: str | Path | None = None,
) -> tuple[Path, Any]:
    """Phase 4 of an existing campaign: quantize its model with each scheme (compute jobs: refused
    before anything runs unless ack_compute), each output gated on its own tensors."""
    from perftune.campaign.pipeline import run_phases
    from perftune.campaign.quantize import refuse_without_ack
    from perftune.lake.db import default_lake

    return run_phases(
        run_id,
        runs_dir=Path(runs_dir),
        update={"quant_schemes": list(schemes), "ack_compute": ack_compute},
        phases=("4",),
        what="quantize",
        observe=observe,
        lake=Path(lake) if lake else default_lake(),
        before=refuse_without_ack,
    )


def validate(
    run_id: str,
    *,
    runs_dir: str | Path = "runs",
    accuracy_tolerance_pts: float | None = None,
    tasks: Sequence[str] | None = None,
    mmlu_n: int | None = None,
    humaneval_n: int | None = None,
    eval_api: str | None = None,
    observe: Callable[[str], None] | None = None,
    lake: str | Path | None = None,
) -> tuple[Path, Any]:
    """Phase 5 of an existing campaign: the known-answer gate, the paired accuracy suite and the perf
    A/B of every phase-4 variant against the reference weights, on the same node."""
    from perftune.campaign.pipeline import run_phases
    from perftune.lake.db import default_lake

    update: dict[str, Any] = {}
    for k, v in (
        ("accuracy_tolerance_pts", accuracy_tolerance_pts),
        ("eval_tasks", list(tasks) if tasks else None),
        ("mmlu_n", mmlu_n),
        ("humaneval_n", humaneval_n),
        ("eval_api", eval_api),
    ):
        if v is not None:
            update[k] = v
    return run_phases(
        run_id,
        runs_dir=Path(runs_dir),
        update=update,
        phases=("5",),
        what="validate",
        observe=observe,
        lake=Path(lake) if lake else default_lake(),
    )


def specdec(
    run_id: str,
    *,
    methods: Sequence[str],
    ks: Sequence[int] | None = None,
    workloads: Sequence[str] | None = None,
    concurrencies: Sequence[int] | None = None,
    draft_model: str | None = None,
    against: str | None = None,
    runs_dir: str | Path = "runs",
    observe: Callable[[str], None] | None = None,
    lake: str | Path | None = None,
) -> tuple[Path, Any]:
    """Phase 7 of an existing campaign: each speculative method, K screened, then A/B'd against the
    standing config (the campaign's levers; `against` "METHOD:K" makes it speculate with that) in
    interleaved trials on the workloads; acceptance read from the engine; gated."""
    from perftune.campaign.pipeline import run_phases
    from perftune.campaign.specdec import preflight_ctx
    from perftune.lake.db import default_lake

    update: dict[str, Any] = {"spec_methods": list(methods)}
    for k, v in (
        ("spec_ks", list(ks) if ks else None),
        ("spec_workloads", list(workloads) if workloads else None),
        ("spec_concurrencies", list(concurrencies) if concurrencies else None),
        ("spec_draft_model", draft_model),
        ("spec_against", against),
    ):
        if v is not None:
            update[k] = v
    return run_phases(
        run_id,
        runs_dir=Path(runs_dir),
        update=update,
        phases=("7",),
        what="specdec",
        observe=observe,
        lake=Path(lake) if lake else default_lake(),
        before=preflight_ctx,
    )


def specdec_train(
    run_id: str,
    *,
    method: str = "eagle3",
    ack_compute: bool,
    samples: int | None = None,
    epochs: int | None = None,
    runs_dir: str | Path = "runs",
    observe: Callable[[str], None] | None = None,
    lake: str | Path | None = None,
) -> tuple[Path, Any]:
    """Phase 6 of an existing campaign: submit (or pick up) the job that trains a draft head for the
    campaign's model. Refused before anything is written without ack_compute."""
    from perftune.campaign.pipeline import run_phases
    from perftune.campaign.specdec import preflight_ctx
    from perftune.lake.db import default_lake

    update: dict[str, Any] = {"spec_ack_compute": ack_compute}
    if samples is not None:
        update["spec_train_samples"] = samples
    if epochs is not None:
        update["spec_train_epochs"] = epochs
    run_dir = Path(runs_dir) / run_id
    if (run_dir / "campaign.json").exists():  # the method joins the campaign's spec methods
        from perftune.campaign.state import CampaignState

        have = CampaignState.load(run_dir).intent.spec.methods
        update["spec_methods"] = list(dict.fromkeys([*have, method]))
    return run_phases(
        run_id,
        runs_dir=Path(runs_dir),
        update=update,
        phases=("6",),
        what="specdec train",
        observe=observe,
        lake=Path(lake) if lake else default_lake(),
        before=preflight_ctx,
    )


def tune(
    run_id: str,
    *,
    runs_dir: str | Path = "runs",
    engines: Sequence[str] | None = None,
    budget_gpu_min: float = 60.0,
    observe: Callable[[str], None] | None = None,
    lake: str | Path | None = None,
    workloads: Sequence[str] | None = None,
    top_k: int | None = None,
    stop_after_s: float | None = None,
    focus: str | None = None,
    target_concurrency: int | None = None,
) -> tuple[Path, Any]:
    """Run phase 3 (tuning) of an existing campaign, in its bundle. Re-running resumes from the
    phase's journal; stop_after_s time-boxes this invocation (no deploy starts after it). focus and
    target_concurrency override the campaign's (latency: arms scored on median TPOT at the target)."""
    from perftune.campaign.pipeline import run_tune
    from perftune.lake.db import default_lake

    update: dict[str, Any] = {"budget_gpu_min": budget_gpu_min, "tune_stop_after_s": stop_after_s}
    if engines:
        update["engines"] = list(engines)
    if workloads:
        update["tune_workloads"] = list(workloads)
    if top_k is not None:
        update["tune_top_k"] = top_k
    if focus is not None:
        update["focus"] = focus
    if target_concurrency is not None:
        update["target_concurrency"] = target_concurrency
    return run_tune(
        run_id,
        runs_dir=Path(runs_dir),
        update=update,
        observe=observe,
        lake=Path(lake) if lake else default_lake(),
    )


# ---------------------------------------------------------------- the report


def report(
    run_id: str,
    *,
    runs_dir: str | Path = "runs",
    fmt: str = "html",
    out: str | Path | None = None,
    timeout_s: float = 120.0,
    pages: str | None = None,
) -> ReportResult:
    """Render a campaign bundle (runs_dir/run_id, or a bundle folder) as one self-contained HTML file,
    or as a PDF printed from it by headless Chromium; default out: report.html|pdf in the bundle.
    pages: all, or champion (the champion and roofline pages); default all for HTML, champion for PDF."""
    from perftune.report.render import render_report

    return render_report(
        run_id,
        runs_dir=Path(runs_dir),
        fmt=fmt,
        out=Path(out) if out is not None else None,
        timeout_s=timeout_s,
        pages=pages,
    )
