"""Campaign intent (what the user asked), state (campaign.json) and cells. Pure data + atomic save."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from perftune.errors import ConfigError
from perftune.util.atomic import write_text

Focus = Literal["throughput", "latency"]
PhaseStatus = Literal["pending", "running", "green", "red", "skipped", "not-available", "queued"]
SCHEMA = "perftune.campaign/v1"

# Concurrency ladders of the focus tiers (phase 8): throughput pushes the batch, latency stays low.
LADDERS: dict[str, list[int]] = {"throughput": [8, 32, 64], "latency": [1, 4, 16]}
SUITE = ["random", "prefix", "chat", "code", "long"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelIntent(_Part):
    ref: str = Field(description="catalog name, model folder or hub id")
    path: str | None = Field(None, description="model folder real engines load (sim: optional)")


class HardwareIntent(_Part):
    gpu: str = Field("h100", description="GPU model (ceilings.yaml key or alias)")
    gpus: int = Field(1, ge=1, description="GPUs available on the node")


class ServingIntent(_Part):
    engines: list[str] = Field(description="engines to compare: vllm, sglang, llamacpp, sim, mock")
    engine_args: dict[str, list[str]] = Field(
        default_factory=dict, description="extra engine flags by engine"
    )
    levers: dict[str, dict[str, Any]] = Field(default_factory=dict, description="baseline levers by engine")
    ready_timeout_s: float = Field(900.0, gt=0, description="seconds an engine may take to become ready")
    baseline_from_champion: bool = Field(
        True,
        description="deploy the model's standing champion (value-findings ledger) as its engine's phase-1 "
        "baseline, so every ratio is against it; off, or levers given for that engine: the engine defaults",
    )


class SloIntent(_Part):
    focus: Focus = Field("throughput", description="what the champion optimizes")
    ttft_ms: float = Field(2000.0, gt=0, description="throughput focus: mean TTFT bound of a counted cell")
    tpot_ms: float = Field(50.0, gt=0, description="throughput focus: median TPOT bound of a counted cell")
    target_concurrency: int = Field(16, ge=1, description="latency focus: concurrency the TPOT is judged at")
    capacity: bool = Field(
        True, description="phase 8.3: search each phase-8 config's SLO capacity (throughput focus)"
    )
    capacity_slo: str = Field(
        "mlperf-server",
        description="the SLO of the capacity search: a preset (mlperf-server, mlperf-interactive: by the "
        "model's size class) or ttft=MS,tpot=MS,p=99",
    )
    capacity_max_points: int = Field(8, ge=2, description="phase 8.3: most load points per search")
    capacity_mode: Literal["open", "closed"] = Field(
        "open",
        description="phase 8.3: open (Poisson request rate, as MLPerf's Server scenario) or closed "
        "(concurrency; every trial starts with all slots at once)",
    )
    capacity_duration_s: float = Field(
        10.0, gt=0, description="phase 8.3, open loop: seconds of arrivals per trial"
    )


class SuiteIntent(_Part):
    workloads: list[str] = Field(default_factory=lambda: list(SUITE), description="phase 8 workloads")
    ladder: list[int] = Field(default_factory=list, description="phase 8 concurrencies (default: by focus)")
    isl: int = Field(1024, ge=1, description="random/prefix input tokens")
    osl: int = Field(128, ge=1, description="output tokens")
    long_isl: int = Field(8192, ge=1, description="long workload input tokens")
    trials: int = Field(3, ge=1, description="trials per cell")
    requests_per_slot: int = Field(2, ge=1, description="requests per cell = max(16, this x concurrency)")
    baseline_concurrency: int = Field(16, ge=1, description="phase 1 baseline bench concurrency")
    top_x: int = Field(
        3, ge=0, description="phase 8 benches the baseline and the top X tuned configs of each engine"
    )


class TuningIntent(_Part):
    enabled: bool = Field(False, description="run phase 3 inside optimize; `perftune tune` always does")
    budget_gpu_min: float = Field(60.0, gt=0, description="phase 3 budget, GPU-minutes")
    wedge_s: float = Field(120.0, gt=0, description="a request with no progress this long = wedge")
    workloads: list[str] = Field(
        default_factory=lambda: ["random", "prefix"],
        min_length=1,
        description="workloads every arm's deploy is measured on (score: their geometric mean)",
    )
    top_k: int = Field(3, ge=1, description="arms (besides the baseline) given the full treatment")
    stop_after_s: float | None = Field(
        None, gt=0, description="start no new deploy after this many seconds (the journal resumes)"
    )

    @field_validator("workloads")
    @classmethod
    def _known_tune_workloads(cls, v: list[str]) -> list[str]:
        if bad := [w for w in v if w not in SUITE]:
            raise ValueError(f"unknown workload(s) {bad}; known: {', '.join(SUITE)}")
        return list(dict.fromkeys(v))


class ProfileIntent(BaseModel):
    """Phase 2: which profiler layers, at which concurrencies."""

    model_config = ConfigDict(extra="forbid")
    layers: list[str] = Field(
        default_factory=lambda: ["l1", "l2", "l3", "l4"],
        description="l1 host (py-spy), l2 kernel timeline, l3 DRAM counters (GPM), l4 ncu; a layer that "
        "cannot run here is skipped with its reason",
    )
    concurrency: list[int] | None = Field(
        None, description="window concurrencies (default: 1, 8 and the ladder's highest)"
    )
    requests_per_window: int | None = Field(
        None, ge=1, description="requests per window (default 2 x c, >= 8)"
    )

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(c < 1 for c in v)):
            raise ValueError(f"window concurrencies must be integers >= 1, got {v}")
        return v

    @field_validator("layers")
    @classmethod
    def _known_layers(cls, v: list[str]) -> list[str]:
        if bad := [x for x in v if x not in ("l1", "l2", "l3", "l4")]:
            raise ValueError(f"unknown profiler layer(s) {bad}; known: l1, l2, l3, l4")
        return list(dict.fromkeys(v))


EvalTask = Literal["mmlu", "humaneval"]
EVAL_TASKS: tuple[EvalTask, ...] = ("mmlu", "humaneval")


class QuantIntent(BaseModel):
    """Phases 4 and 5: which quantization schemes, the compute acknowledgement, the accuracy gate."""

    model_config = ConfigDict(extra="forbid")
    schemes: list[str] = Field(
        default_factory=list,
        description="phase 4 targets (fp8-dynamic, w8a8-fp8, w4a16, nvfp4, gguf-q8_0...)",
    )
    ack_compute: bool = Field(False, description="phase 4 may submit compute jobs (quantization)")
    accuracy_tolerance_pts: float = Field(
        1.0, gt=0, description="phase 5: the largest accuracy drop (absolute points) a quant may have"
    )
    tasks: list[EvalTask] = Field(
        default_factory=lambda: list(EVAL_TASKS), description="phase 5 accuracy tasks"
    )
    mmlu_n: int = Field(1000, ge=1, description="MMLU items (a fixed, topic-stratified subset)")
    humaneval_n: int = Field(40, ge=1, description="HumanEval problems (the first N)")
    eval_api: Literal["auto", "chat", "completions"] = Field(
        "auto",
        description="auto: chat completions when the model has a chat template, else raw completions",
    )
    perf_concurrency: int | None = Field(
        None, ge=1, description="phase 5 perf A/B concurrency (default: the baseline concurrency)"
    )

    @field_validator("schemes")
    @classmethod
    def _known_unique(cls, v: list[str]) -> list[str]:
        from perftune.quant.schemes import scheme_for  # the scheme table, aliases resolved

        try:
            return list(dict.fromkeys(scheme_for(s).name for s in v))
        except ConfigError as e:
            raise ValueError(f"{e}; {e.hint}") from None


class SpecIntent(BaseModel):
    """Phase 7 (and 6): which speculative-decoding methods and K to measure, on which workloads."""

    model_config = ConfigDict(extra="forbid")
    methods: list[str] = Field(default_factory=list, description="ngram, draft-model, eagle, eagle3, mtp")
    ks: list[int] = Field(default_factory=lambda: [2, 4], description="K (drafted tokens per step) to screen")
    workloads: list[str] = Field(
        default_factory=lambda: ["code", "chat", "random"], description="the workloads the gate judges"
    )
    concurrencies: list[int] = Field(
        default_factory=list, description="A/B concurrencies (default [1]); the gate judges the lowest"
    )
    draft_model: str | None = Field(None, description="the draft or draft head (draft-model, eagle, eagle3)")
    against: str | None = Field(
        None,
        description="METHOD:K: the standing config speculates with it (e.g. mtp:3, ngram:3); "
        "default: the campaign's levers",
    )
    ack_compute: bool = Field(False, description="phase 6 may submit a training job (an EAGLE-3 head)")
    train_samples: int = Field(2000, ge=8, description="phase 6: prompts the target answers to train on")
    train_epochs: int = Field(3, ge=1, description="phase 6: training epochs")
    draft_python: str | None = Field(
        None, description="phase 6: Python with speculators (default $PERFTUNE_DRAFT_PYTHON, else this one)"
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        from perftune.serving.specdec import METHODS

        if bad := [m for m in v if m not in METHODS]:
            raise ValueError(f"unknown spec method(s) {bad}; known: {', '.join(METHODS)}")
        return list(dict.fromkeys(v))

    @field_validator("against")
    @classmethod
    def _against(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from perftune.serving.specdec import parse_against

        method, k = parse_against(v)
        return f"{method}:{k}"

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 or k > 16 for k in v):
            raise ValueError(f"K must be 1..16, got {v}")
        return sorted(set(v))

    @field_validator("workloads")
    @classmethod
    def _workloads(cls, v: list[str]) -> list[str]:
        if not v or [w for w in v if w not in SUITE]:
            raise ValueError(f"spec workloads must be some of {', '.join(SUITE)}, got {v}")
        return list(dict.fromkeys(v))

    @field_validator("concurrencies")
    @classmethod
    def _concs(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError(f"concurrencies must be >= 1, got {v}")
        return sorted(set(v))


# The flat form (campaign.json before the split, and the keyword form callers use): key -> (part, field).
FLAT: dict[str, tuple[str, str]] = {
    "model": ("model", "ref"),
    "model_path": ("model", "path"),
    "gpu": ("hardware", "gpu"),
    "gpus": ("hardware", "gpus"),
    "engines": ("serving", "engines"),
    "engine_args": ("serving", "engine_args"),
    "levers": ("serving", "levers"),
    "ready_timeout_s": ("serving", "ready_timeout_s"),
    "focus": ("slo", "focus"),
    "slo_ttft_ms": ("slo", "ttft_ms"),
    "slo_tpot_ms": ("slo", "tpot_ms"),
    "target_concurrency": ("slo", "target_concurrency"),
    "workloads": ("suite", "workloads"),
    "ladder": ("suite", "ladder"),
    "isl": ("suite", "isl"),
    "osl": ("suite", "osl"),
    "long_isl": ("suite", "long_isl"),
    "trials": ("suite", "trials"),
    "requests_per_slot": ("suite", "requests_per_slot"),
    "baseline_concurrency": ("suite", "baseline_concurrency"),
    "top_x": ("suite", "top_x"),
    "capacity": ("slo", "capacity"),
    "capacity_slo": ("slo", "capacity_slo"),
    "capacity_max_points": ("slo", "capacity_max_points"),
    "capacity_mode": ("slo", "capacity_mode"),
    "capacity_duration_s": ("slo", "capacity_duration_s"),
    "baseline_from_champion": ("serving", "baseline_from_champion"),
    "tune": ("tuning", "enabled"),
    "budget_gpu_min": ("tuning", "budget_gpu_min"),
    "wedge_s": ("tuning", "wedge_s"),
    "tune_workloads": ("tuning", "workloads"),
    "tune_top_k": ("tuning", "top_k"),
    "tune_stop_after_s": ("tuning", "stop_after_s"),
    "profile_layers": ("profiling", "layers"),
    "profile_concurrency": ("profiling", "concurrency"),
    "quant_schemes": ("quant", "schemes"),
    "ack_compute": ("quant", "ack_compute"),
    "accuracy_tolerance_pts": ("quant", "accuracy_tolerance_pts"),
    "eval_tasks": ("quant", "tasks"),
    "mmlu_n": ("quant", "mmlu_n"),
    "humaneval_n": ("quant", "humaneval_n"),
    "eval_api": ("quant", "eval_api"),
    "spec_methods": ("spec", "methods"),
    "spec_ks": ("spec", "ks"),
    "spec_workloads": ("spec", "workloads"),
    "spec_concurrencies": ("spec", "concurrencies"),
    "spec_draft_model": ("spec", "draft_model"),
    "spec_against": ("spec", "against"),
    "spec_ack_compute": ("spec", "ack_compute"),
    "spec_train_samples": ("spec", "train_samples"),
    "spec_train_epochs": ("spec", "train_epochs"),
}


class Intent(BaseModel):
    """What the user asked for, resolved: the campaign's SOURCE, in parts validated as a whole."""

    model_config = ConfigDict(extra="forbid")
    model: ModelIntent
    hardware: HardwareIntent = Field(default_factory=HardwareIntent)
    serving: ServingIntent
    slo: SloIntent = Field(default_factory=SloIntent)
    suite: SuiteIntent = Field(default_factory=SuiteIntent)
    tuning: TuningIntent = Field(default_factory=TuningIntent)
    profiling: ProfileIntent = Field(default_factory=ProfileIntent)
    quant: QuantIntent = Field(default_factory=QuantIntent)
    spec: SpecIntent = Field(default_factory=SpecIntent)
    registry: str | None = Field(None, description="known-good registry path")
    findings: str | None = Field(None, description="value-findings ledger path")

    @model_validator(mode="before")
    @classmethod
    def _from_flat(cls, data: Any) -> Any:
        """Flat keys (older campaign.json files, keyword callers) go into their parts; a flat key
        wins over the same field given nested (an update on top of a dump)."""
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        flat: list[tuple[str, str, Any]] = []
        for k, v in data.items():
            if k in FLAT and not (k == "model" and isinstance(v, dict)):
                flat.append((*FLAT[k], v))
            else:
                out[k] = v
        for part, field_, v in flat:
            out[part] = {**dict(out.get(part) or {}), field_: v}
        return out

    def resolved_ladder(self) -> list[int]:
        return self.suite.ladder or LADDERS[self.slo.focus]


class PhaseRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    status: PhaseStatus = "pending"
    reason: str = ""
    hint: str = Field("", description="a red gate's fix")
    headline: str = ""
    tier: str = ""
    artifacts: list[str] = Field(default_factory=list)
    gpu_minutes: float = 0.0
    started_at: str | None = None
    finished_at: str | None = None


class Cell(BaseModel):
    """One measured (config, workload, concurrency) point with its full context."""

    model_config = ConfigDict(extra="forbid")
    cell_id: str
    phase: str
    engine: str
    config: str = Field(description="config name: baseline or an arm")
    weights: str = Field(
        "base", description="the weights served: 'base' (the model as given) or a phase-4 variant's name"
    )
    levers: dict[str, Any]
    workload: str
    concurrency: int
    gpus: int
    path: str = Field(description="bench folder, relative to the run folder")
    trial_paths: list[str] = Field(
        default_factory=list,
        description="phase 3: one bench folder per trial (one deploy each), in trial order; else empty",
    )
    output_tok_s: float
    output_tok_s_std: float | None
    output_tok_s_ci95: list[float] | None
    tpot_median_ms: float | None = Field(description="mean over trials of the per-trial median TPOT")
    tpot_ci95: list[float] | None
    ttft_mean_ms: float | None
    trials: int
    sol_pct: float | None = Field(description="decode roofline floor / measured median TPOT")
    ceiling_key: str | None
    sol_rigor: str = Field(
        "L0 analytical",
        description="how the cell's %SoL is grounded: L0 analytical (roofline bytes / measured TPOT), "
        "L3 DRAM counters (GPM bandwidth measured in every trial), L4 per-kernel (ncu)",
    )
    dram_bw_util_pct: float | None = Field(
        None, description="GPM DRAM bandwidth utilisation, mean over the trials' busy samples (L3)"
    )
    dram_tb_s: float | None = Field(None, description="measured DRAM bytes/s (L3), TB/s")
    sol_bytes_pct: float | None = Field(
        None, description="byte-grounded %SoL: measured DRAM bytes/s over the ceiling's HBM bandwidth"
    )
    tier: str
    simulated: bool
    prefix_cache: bool | None = Field(description="prefix caching on/off as configured")
    context: dict[str, Any] = Field(description="the bench MeasurementContext")
    requests_sent: int | None = Field(None, description="requests sent over the counted trials")
    requests_ok: int | None = Field(None, description="of those, completed (None: an older bundle)")
    flags: list[str] = Field(
        default_factory=list,
        description="the bench's quality flags: outlier trials, high CV, compilation during a trial, a "
        "simulator that fell behind its virtual schedule, a throttled GPU or clock drift",
    )
    notes: list[str] = Field(
        default_factory=list,
        description="what the bench saw that did not flag it: the token accounting used and merged "
        "chunks, the GPU's power cap and clocks, the first wave, the server's CPU",
    )


class Ranked(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str
    config: str
    gpus: int
    levers: dict[str, Any]
    prefix_cache: bool | None
    cell_id: str | None = Field(description="the cell the value comes from (None: no eligible cell)")
    value: float | None = Field(description="tok/s/GPU (throughput) or median TPOT ms (latency)")
    ci95: list[float] | None
    concurrency: int | None
    eligible: bool
    reason: str = ""
    tied_with_leader: bool = False
    load: str = Field("", description="where the value was measured: 'c=64', or '29.3 req/s' (SLO capacity)")

    def where(self) -> str:
        return self.load or f"c={self.concurrency}"


class ChampionFact(Ranked):
    """The crowned candidate as later phases read it: the ranked row plus its tier and gates."""

    tier: str
    metric: str
    failing_gates: list[str] = Field(default_factory=list)


class TunedConfig(BaseModel):
    """One of an engine's best tuned configurations (phase 3), in rank order."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="config name as phase 8 cells carry it: tuned, tuned-2, tuned-3, ...")
    arm: str = Field(description="the tuner's arm name")
    levers: dict[str, Any]
    score: float | None = Field(description="the tuner's score (its focus's metric)")
    crowned: bool = Field(description="the tuner crowned it (its ratio's 95% interval above 1)")


class CapacityFact(BaseModel):
    """Phase 8.3: one config's SLO capacity on the primary workload (closed loop)."""

    model_config = ConfigDict(extra="forbid")
    engine: str
    config: str
    levers: dict[str, Any]
    slo: str = Field(description="the SLO statement, e.g. p99 TTFT <= 2 s and p99 TPOT <= 100 ms")
    mode: str = Field("closed", description="closed (load = concurrency) or open (load = Poisson req/s)")
    capacity: float | None = Field(description="the highest load that met the SLO (None: none did)")
    at_least: bool = Field(description="the top of the search's range still met it")
    interval: list[float | None] = Field(description="[highest pass, lowest fail]")
    output_tok_s: float | None = Field(description="mean output tok/s at the capacity point")
    output_tok_s_ci95: list[float] | None
    points: int = Field(description="load points the search measured")
    statement: str
    path: str = Field(description="the search's folder, relative to the run folder")
    tier: str
    simulated: bool


class Weights(BaseModel):
    """Phase 4: one weight variant on disk (a quantized checkpoint, or the base it is judged against)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the variant's name: a scheme, or 'base' / 'base-f16'")
    path: str = Field(description="the checkpoint folder or GGUF file, absolute")
    scheme: str | None = Field(description="the quantization scheme (None: the base weights)")
    backend: str | None
    engines: list[str] = Field(description="engines that load this format")
    coverage: dict[str, Any] = Field(default_factory=dict, description="the coverage guard's counts")
    levers: dict[str, Any] = Field(
        default_factory=dict, description="serving levers the variant implies (the simulator's quantization)"
    )
    simulated: bool = Field(False, description="a modelled variant (the simulator): no checkpoint exists")


class Facts(BaseModel):
    """Outputs of phases that later phases read: typed, not a blackboard of strings."""

    model_config = ConfigDict(extra="forbid")
    tp: int = Field(1, ge=1, description="phase 0: the tensor parallelism every deploy uses")
    registry_explicit: bool = Field(False, description="phase 0: --registry was given")
    prior_baseline: dict[str, Any] | None = Field(None, description="phase 0: the standing champion")
    engine_versions: dict[str, str | None] = Field(default_factory=dict, description="phase 1, by engine")
    tuned: dict[str, dict[str, Any]] = Field(default_factory=dict, description="phase 3: crowned levers")
    tuned_top: dict[str, list[TunedConfig]] = Field(
        default_factory=dict, description="phase 3: each engine's best tuned configs, ranked"
    )
    baseline_source: dict[str, str] = Field(
        default_factory=dict,
        description="phase 0: per engine, where its baseline levers come from (a standing champion)",
    )
    capacity: dict[str, CapacityFact] = Field(
        default_factory=dict, description="phase 8.3: SLO capacity by 'engine/config'"
    )
    champion: ChampionFact | None = Field(None, description="phase 8.4")
    ledger_arms: list[dict[str, Any]] = Field(
        default_factory=list, description="phase 2.5: the ledger's top levers, phase 3's first arms"
    )
    gguf: str | None = Field(
        None, description="phase 0: the F16 GGUF llama.cpp serves, converted from the model's HF folder"
    )
    weights: dict[str, Weights] = Field(
        default_factory=dict, description="phase 4: weight variants by name (base-f16, fp8-dynamic, ...)"
    )
    shipped: list[str] = Field(
        default_factory=list, description="phase 5: quantized variants that passed accuracy and perf"
    )
    spec: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="phase 7: per engine and method, the gate's verdict and levers"
    )
    drafts: dict[str, str] = Field(
        default_factory=dict, description="phase 6: method -> the trained draft folder that passed its gate"
    )


class Deployment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str
    pgid: int
    run_id: str


class CampaignState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: str = SCHEMA
    run_id: str
    created_at: str
    intent: Intent
    phases: dict[str, PhaseRecord]
    cells: dict[str, Cell] = Field(default_factory=dict)
    live: list[Deployment] = Field(default_factory=list, description="servers this campaign has up")
    facts: Facts = Field(default_factory=Facts, description="outputs of phases later phases use")

    def save(self, run_dir: Path) -> None:
        write_text(run_dir / "campaign.json", self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> CampaignState:
        f = run_dir / "campaign.json"
        if not f.exists():
            raise ConfigError(f"no campaign.json in {run_dir}", hint="check the run id and --runs-dir")
        try:
            return cls.model_validate(json.loads(f.read_text()))
        except (ValueError, ValidationError) as e:
            raise ConfigError(
                f"{f}: not a perftune campaign ({e})", hint="was it written by perftune?"
            ) from e


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", Path(text.rstrip("/")).name.lower()).strip("-")
    return s[:40] or "model"


def new_run_id(intent: Intent, now: float | None = None) -> str:
    """slug + date + short hash: the experiment id and the campaign id."""
    t = time.time() if now is None else now
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(t))
    h = hashlib.sha1(f"{intent.model_dump_json()}{t}".encode()).hexdigest()[:6]
    return f"{slug(intent.model.ref)}-{stamp}-{h}"
