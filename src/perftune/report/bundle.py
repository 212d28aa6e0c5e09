"""Read a campaign bundle as plain data: typed views over campaign.json and the phase files.

The report sits beside the tuner (below `campaign`), so it never imports `perftune.campaign`: it reads
what the campaign wrote. The views below keep only the fields the report shows, ignore the rest
(`extra="ignore"`: a newer bundle with more fields still renders) and default what older bundles lack.
Loading is the imperative shell; everything that decides what a page says is in `report.pages`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perftune.bench.capacity import CapacityResult
from perftune.bench.records import RequestRecord
from perftune.errors import ConfigError


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore")


# campaign.json's intent is nested (model/hardware/serving/slo/suite/tuning parts); older bundles wrote
# it flat. This maps the nested fields the report reads to their flat names (the same names as
# campaign.state.FLAT, checked by tests/unit/report/test_bundle.py), so both forms read alike.
NESTED: dict[str, dict[str, str]] = {
    "model": {"ref": "model", "path": "model_path"},
    "hardware": {"gpu": "gpu", "gpus": "gpus"},
    "serving": {"engines": "engines"},
    "slo": {
        "focus": "focus",
        "ttft_ms": "slo_ttft_ms",
        "tpot_ms": "slo_tpot_ms",
        "target_concurrency": "target_concurrency",
        "capacity": "capacity",
        "capacity_slo": "capacity_slo",
    },
    "suite": {
        "workloads": "workloads",
        "ladder": "ladder",
        "isl": "isl",
        "osl": "osl",
        "long_isl": "long_isl",
        "trials": "trials",
    },
    "tuning": {"enabled": "tune", "budget_gpu_min": "budget_gpu_min"},
}


class IntentView(_View):
    """What the user asked for, flattened."""

    model: str = Field(description="catalog name, model folder or hub id")
    model_path: str | None = None
    gpu: str = "h100"
    gpus: int = 1
    engines: list[str] = Field(default_factory=list)
    focus: str = "throughput"
    slo_ttft_ms: float = Field(2000.0, description="throughput focus: mean TTFT bound of a counted cell")
    slo_tpot_ms: float = Field(50.0, description="throughput focus: median TPOT bound of a counted cell")
    target_concurrency: int = 16
    capacity: bool = True
    capacity_slo: str = "mlperf-server"
    workloads: list[str] = Field(default_factory=list)
    ladder: list[int] = Field(default_factory=list)
    isl: int = 1024
    osl: int = 128
    long_isl: int = 8192
    trials: int = 3
    tune: bool = False
    budget_gpu_min: float | None = None


def flatten_intent(d: dict[str, Any]) -> dict[str, Any]:
    """A nested or flat intent as the flat keys of IntentView (a flat key wins, as in the campaign)."""
    out: dict[str, Any] = {}
    for part, fields in NESTED.items():
        sub = d.get(part)
        if isinstance(sub, dict):
            out.update({flat: sub[k] for k, flat in fields.items() if k in sub})
    out.update({k: v for k, v in d.items() if k not in NESTED or not isinstance(v, dict)})
    return out


class PhaseView(_View):
    id: str
    name: str
    status: str = "pending"
    reason: str = ""
    hint: str = ""
    headline: str = ""
    tier: str = ""
    gpu_minutes: float = 0.0


class CellView(_View):
    """One measured (config, workload, concurrency) point, as campaign.json holds it."""

    cell_id: str
    phase: str
    engine: str
    config: str
    levers: dict[str, Any] = Field(default_factory=dict)
    workload: str
    concurrency: int
    gpus: int = 1
    path: str
    trial_paths: list[str] = Field(default_factory=list)
    output_tok_s: float
    output_tok_s_ci95: list[float] | None = None
    tpot_median_ms: float | None = None
    tpot_ci95: list[float] | None = None
    ttft_mean_ms: float | None = None
    trials: int = 0
    sol_pct: float | None = None
    ceiling_key: str | None = None
    tier: str = "DRAFT"
    simulated: bool = False
    context: dict[str, Any] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)

    @property
    def folders(self) -> list[str]:
        """The bench folders behind the cell: one per trial (phase 3) or the one folder."""
        return self.trial_paths or [self.path]


class ChampionView(_View):
    engine: str
    config: str
    gpus: int = 1
    levers: dict[str, Any] = Field(default_factory=dict)
    cell_id: str | None = None
    value: float | None = None
    ci95: list[float] | None = None
    concurrency: int | None = None
    tier: str = "DRAFT"
    metric: str = ""
    failing_gates: list[str] = Field(default_factory=list)


class CapacityFactView(_View):
    engine: str
    config: str
    levers: dict[str, Any] = Field(default_factory=dict)
    slo: str = ""
    capacity: float | None = None
    at_least: bool = False
    interval: list[float | None] = Field(default_factory=list)
    output_tok_s: float | None = None
    output_tok_s_ci95: list[float] | None = None
    points: int = 0
    statement: str = ""
    path: str
    tier: str = "DRAFT"
    simulated: bool = False


class FactsView(_View):
    tp: int = 1
    engine_versions: dict[str, str | None] = Field(default_factory=dict)
    capacity: dict[str, CapacityFactView] = Field(default_factory=dict)
    champion: ChampionView | None = None


class CampaignView(_View):
    run_id: str
    created_at: str = ""
    intent: IntentView
    phases: dict[str, PhaseView] = Field(default_factory=dict)
    cells: dict[str, CellView] = Field(default_factory=dict)
    facts: FactsView = Field(default_factory=FactsView)


def parse_campaign(doc: dict[str, Any], where: str) -> CampaignView:
    """campaign.json (as data) -> CampaignView; a bad document is one ConfigError line."""
    try:
        if isinstance(doc.get("intent"), dict):
            doc = {**doc, "intent": flatten_intent(doc["intent"])}
        return CampaignView.model_validate(doc)
    except (ValidationError, AttributeError, TypeError) as e:
        first = e.errors()[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e)}
        at = ".".join(map(str, first["loc"]))
        raise ConfigError(
            f"{where}: not a perftune campaign ({at}: {first['msg']})", hint="was it written by perftune?"
        ) from e


class Extras(_View):
    """What a cell's bench summary adds to campaign.json: tail latencies, engine version."""

    ttft_p99_ms: float | None = Field(None, description="mean over trials of the per-trial p99 TTFT")
    tpot_p99_ms: float | None = Field(None, description="mean over trials of the per-trial p99 TPOT")
    found: bool = Field(False, description="a summary.json was read")


class Bundle(BaseModel):
    """Everything the report reads from one run folder; `missing` says which files were absent."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    run_dir: Path
    campaign: CampaignView
    extras: dict[str, Extras] = Field(default_factory=dict, description="by cell id")
    tune: dict[str, Any] | None = Field(None, description="phase3/tune.json")
    capacity: dict[str, CapacityResult] = Field(default_factory=dict, description="by 'engine/config'")
    selection: dict[str, Any] | None = Field(None, description="phase8.4/champion_select.json")
    model_card: dict[str, Any] | None = Field(None, description="phase0/model_card.json")
    missing: list[str] = Field(default_factory=list, description="files the report wanted and did not find")


def resolve_run_dir(run_id: str, runs_dir: Path) -> Path:
    """runs_dir/run_id, or run_id itself when it is a bundle folder (a committed bundle elsewhere)."""
    for cand in (runs_dir / run_id, Path(run_id)):
        if (cand / "campaign.json").is_file():
            return cand
    if (runs_dir / run_id).is_dir():
        raise ConfigError(
            f"{runs_dir / run_id} holds no campaign.json", hint="is it a campaign's run folder?"
        )
    raise ConfigError(
        f"no campaign '{run_id}' in {runs_dir}",
        hint="check the run id and --runs-dir (ls runs/), or pass the bundle's folder",
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e})", hint="is the bundle complete?") from e


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _trial_p99(summary: dict[str, Any], metric: str) -> list[float]:
    vals = []
    for t in summary.get("trials") or []:
        v = (t.get(metric) or {}).get("p99") if isinstance(t, dict) else None
        if isinstance(v, int | float):
            vals.append(float(v))
    return vals


def cell_extras(run_dir: Path, cell: CellView) -> Extras:
    """p99 TTFT/TPOT of a cell from its bench summary (or summaries: one per trial in phase 3)."""
    ttft: list[float] = []
    tpot: list[float] = []
    found = False
    for folder in cell.folders:
        f = run_dir / folder / "summary.json"
        if not f.is_file():
            continue
        try:
            s = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found = True
        ttft += _trial_p99(s, "ttft_ms")
        tpot += _trial_p99(s, "tpot_ms")
    return Extras(ttft_p99_ms=_mean(ttft), tpot_p99_ms=_mean(tpot), found=found)


def load_records(folder: Path) -> list[RequestRecord] | None:
    """A bench folder's counted requests (warmup dropped) from records.jsonl(.gz); None: no file."""
    for name in ("records.jsonl", "records.jsonl.gz"):
        f = folder / name
        if not f.is_file():
            continue
        try:
            raw = gzip.decompress(f.read_bytes()) if name.endswith(".gz") else f.read_bytes()
            recs = [RequestRecord.from_json(orjson.loads(ln)) for ln in raw.splitlines() if ln.strip()]
        except (OSError, ValueError, TypeError, KeyError, EOFError) as e:
            raise ConfigError(f"{f}: unreadable records ({e})", hint="is the bundle complete?") from e
        return [r for r in recs if r.trial >= 0]
    return None


def load_bundle(run_dir: Path, campaign: dict[str, Any] | None = None) -> Bundle:
    """Read a run folder. `campaign` (campaign.json as data) overrides the file: the campaign passes
    its in-memory state when it renders at the end of phase 8.4, before it saves."""
    doc = campaign if campaign is not None else _read_json(run_dir / "campaign.json")
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{run_dir / 'campaign.json'}: not a JSON object", hint="was it written by perftune?"
        )
    view = parse_campaign(doc, str(run_dir / "campaign.json"))
    missing: list[str] = []
    extras: dict[str, Extras] = {}
    for cid, c in view.cells.items():
        if c.phase not in ("3", "8"):
            continue
        extras[cid] = cell_extras(run_dir, c)
        if not extras[cid].found:
            missing.append(f"{c.folders[0]}/summary.json (cell {cid}: no p99 TTFT)")
    tune = None
    if (run_dir / "phase3" / "tune.json").is_file():
        t = _read_json(run_dir / "phase3" / "tune.json")
        tune = t if isinstance(t, dict) else None
    elif "3" in view.phases and view.phases["3"].status == "green":
        missing.append("phase3/tune.json (phase 3 is green)")
    capacity: dict[str, CapacityResult] = {}
    for key, fact in view.facts.capacity.items():
        f = run_dir / fact.path / "capacity.json"
        if not f.is_file():
            missing.append(f"{fact.path}/capacity.json ({key})")
            continue
        try:
            capacity[key] = CapacityResult.model_validate(_read_json(f))
        except ValidationError:
            missing.append(f"{fact.path}/capacity.json ({key}: not a capacity result)")
    sel_f = run_dir / "phase8.4" / "champion_select.json"
    selection = _read_json(sel_f) if sel_f.is_file() else None
    if selection is None and view.phases.get("8.4", PhaseView(id="8.4", name="")).status == "green":
        missing.append("phase8.4/champion_select.json (phase 8.4 is green)")
    card_f = run_dir / "phase0" / "model_card.json"
    card = _read_json(card_f) if card_f.is_file() else None
    return Bundle(
        run_dir=run_dir,
        campaign=view,
        extras=extras,
        tune=tune,
        capacity=capacity,
        selection=selection if isinstance(selection, dict) else None,
        model_card=card if isinstance(card, dict) else None,
        missing=missing,
    )
