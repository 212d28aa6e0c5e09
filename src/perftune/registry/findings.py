"""The value-findings ledger: per model, the current baseline and the next lever to try (phase 8.5).

YAML, edited by people and by perftune alike: round-trip loading keeps comments and key order;
writes are atomic. `frontier()` ranks every model's open levers.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from perftune.errors import RegistryError
from perftune.util.atomic import write_text

BANNER = """\
# perftune value-findings ledger: for each model, the baseline to beat (the last champion) and the
# next lever worth a campaign. perftune appends to it after each champion (phase 8.5); edit freely,
# comments are kept.
schema: value_findings_v1
models: {}
"""
ENV_VAR = "PERFTUNE_FINDINGS"


class OpenLever(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lever: str
    value: str
    priority: int = Field(description="1 = try first")
    rationale: str


class ModelFindings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    baseline: dict[str, Any] = Field(
        description="the current champion: campaign, engine, levers, value, tier"
    )
    next_lever: str
    next_value: str
    rationale: str = ""
    open_levers: list[OpenLever] = Field(default_factory=list)
    history: list[dict[str, Any]] = Field(default_factory=list, description="earlier baselines, oldest first")


def default_path() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "perftune" / "value-findings.yaml"


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _load(path: Path) -> Any:
    text = path.read_text(encoding="utf-8") if path.exists() else BANNER
    try:
        doc = _yaml().load(text)
    except YAMLError as e:
        raise RegistryError(f"{path}: not valid YAML ({e})", hint="fix the file by hand") from e
    if not isinstance(doc, CommentedMap) or doc.get("schema") != "value_findings_v1":
        raise RegistryError(
            f"{path}: not a value-findings ledger", hint="expected `schema: value_findings_v1`"
        )
    if doc.get("models") is None:
        doc["models"] = CommentedMap()
    return doc


def load(path: Path) -> dict[str, ModelFindings]:
    doc = _load(path)
    try:
        return {str(k): ModelFindings.model_validate(_plain(v)) for k, v in doc["models"].items()}
    except ValidationError as e:
        raise RegistryError(
            f"{path}: bad entry ({e.errors()[0]['msg']})", hint="fix the entry by hand"
        ) from e


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def record(path: Path, model: str, findings: ModelFindings) -> None:
    """Set the model's entry; the previous baseline moves to its history. Atomic, comment-preserving."""
    doc = _load(path)
    prev = doc["models"].get(model)
    data = findings.model_dump()
    if prev is not None:
        old = _plain(prev)
        history = list(old.get("history") or [])
        if old.get("baseline") and old["baseline"].get("campaign") != data["baseline"].get("campaign"):
            history.append(old["baseline"])
        data["history"] = history
    doc["models"][model] = data
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    write_text(path, buf.getvalue())


def frontier(path: Path, model: str | None = None) -> list[dict[str, Any]]:
    """Open levers of every model (or one), ranked: the next lever first, then by priority."""
    rows = []
    for name, f in load(path).items():
        if model and name != model:
            continue
        for lv in sorted(f.open_levers, key=lambda x: x.priority):
            rows.append(
                {
                    "model": name,
                    "lever": lv.lever,
                    "value": lv.value,
                    "priority": lv.priority,
                    "is_next": lv.lever == f.next_lever,
                    "rationale": lv.rationale,
                    "baseline_value": f.baseline.get("value"),
                    "baseline_tier": f.baseline.get("tier"),
                }
            )
    return sorted(rows, key=lambda r: (not r["is_next"], r["priority"], r["model"]))
