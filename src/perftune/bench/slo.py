"""SLOs for a capacity search: named presets (MLPerf's published limits by model size class) and user ones.

An SLO here is a pair of upper bounds on a percentile of the per-trial distributions: p99 TTFT and p99
TPOT, say. Presets ship in `slo_presets.yaml` with their source; a family name (`mlperf-server`) picks its
member by the model's size class, which is why resolving one needs the model's total parameter count.
Everything here is pure except reading the preset files.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from perftune.errors import ConfigError, PerftuneError, config_error_from

Percentile = Literal[50, 90, 95, 99]
SizeClass = Literal["8b", "70b", "405b", "r1"]
PERCENTILE_VALUES: tuple[int, ...] = get_args(Percentile)
SIZE_CLASSES: tuple[str, ...] = get_args(SizeClass)

# Size-class boundaries, in total parameters. MLPerf publishes limits for four LLMs; a model takes the
# limits of the one it is closest to in per-token cost:
# - <= 20B: the 8B class (Llama-3.1-8B; 7-14B models decode at comparable speed on one GPU);
# - <= 150B: the 70B class (Llama-2-70B; MLPerf gives Mixtral-8x7B, 47B MoE, the same server limits; a
#   120B MoE like gpt-oss-120b, 5B active, is served on the same hardware and stays here);
# - above 150B, dense: the 405B class (Llama-3.1-405B);
# - above 150B, MoE: the R1 class (DeepSeek-R1, 671B total / 37B active): a large MoE reads and computes
#   per token like a 20-40B dense model, far closer to R1 than to dense 405B's looser limits.
SMALL_MAX_PARAMS = 20e9
MEDIUM_MAX_PARAMS = 150e9

CUSTOM_FORM = "ttft=MS,tpot=MS[,p=50|90|95|99]"
CUSTOM_KEYS = {"ttft": "ttft_ms", "ttft_ms": "ttft_ms", "tpot": "tpot_ms", "tpot_ms": "tpot_ms"}


class SloPreset(BaseModel):
    """One named SLO as written in a preset file."""

    model_config = ConfigDict(extra="forbid")
    ttft_ms: float = Field(gt=0, description="upper bound on the percentile TTFT, ms")
    tpot_ms: float = Field(gt=0, description="upper bound on the percentile TPOT, ms")
    percentile: Percentile = Field(99, description="the percentile of each trial's distribution bounded")
    description: str = Field("", description="what this SLO stands for")
    source: str = Field("", description="where the numbers come from (a citation)")
    family: str | None = Field(None, description="the family this preset is the size-class member of")
    size_class: SizeClass | None = Field(None, description="the model size class it applies to (a family)")

    @model_validator(mode="after")
    def _family_and_class_together(self) -> SloPreset:
        if (self.family is None) != (self.size_class is None):
            raise ValueError("family and size_class go together: give both or neither")
        return self


class PresetFile(BaseModel):
    """A preset file: family descriptions and named presets."""

    model_config = ConfigDict(extra="forbid")
    families: dict[str, str] = Field(
        default_factory=dict, description="family name -> description; members resolve by size class"
    )
    presets: dict[str, SloPreset] = Field(description="preset name -> preset")


class Slo(BaseModel):
    """A resolved SLO: both bounds hold at `percentile` of each trial's TTFT and TPOT distributions."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="preset name, or the normalized user form ttft=..,tpot=..,p=..")
    ttft_ms: float = Field(gt=0, description="upper bound on the percentile TTFT, ms")
    tpot_ms: float = Field(gt=0, description="upper bound on the percentile TPOT, ms")
    percentile: Percentile = Field(description="the percentile of each trial's distribution bounded")
    description: str = Field("", description="what this SLO stands for")
    source: str = Field("", description="where the numbers come from (user-defined: 'user')")
    size_class: SizeClass | None = Field(
        None, description="the model size class a family preset resolved to (None: not a class preset)"
    )

    def statement(self) -> str:
        """'p99 TTFT <= 2 s and p99 TPOT <= 100 ms'."""
        p = f"p{self.percentile}"
        return f"{p} TTFT <= {fmt_ms(self.ttft_ms)} and {p} TPOT <= {fmt_ms(self.tpot_ms)}"

    def bench_slo(self) -> dict[str, float]:
        """The bounds as the bench's per-request goodput SLO (BenchConfig.slo)."""
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms}


def fmt_ms(ms: float) -> str:
    """A latency for a sentence: '2 s', '2.31 s', '100 ms', '12.5 ms', '0.85 ms'."""
    if ms >= 1000:
        return f"{_trim(ms / 1000)} s"
    return f"{_trim(ms)} ms"


def _trim(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}" if x >= 1 else f"{x:.2g}"


def size_class(total_params: float, *, moe: bool = False) -> SizeClass:
    """The MLPerf size class of a model with `total_params` weights (boundaries: see SMALL_MAX_PARAMS)."""
    if total_params <= SMALL_MAX_PARAMS:
        return "8b"
    if total_params <= MEDIUM_MAX_PARAMS:
        return "70b"
    return "r1" if moe else "405b"


# ---------------------------------------------------------------- preset files (the only I/O here)


def _parse_preset_file(text: str, what: str) -> PresetFile:
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as e:
        raise ConfigError(f"{what}: not valid YAML ({str(e).splitlines()[0]})", hint=_FILE_HINT) from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a mapping with a 'presets' key", hint=_FILE_HINT)
    try:
        return PresetFile.model_validate(data)
    except ValidationError as e:
        raise config_error_from(e, f"{what}: ", hint=_FILE_HINT) from e


_FILE_HINT = (
    "a preset file is YAML: presets: {NAME: {ttft_ms: 2000, tpot_ms: 100, percentile: 99, "
    "description: ..., source: ...}}"
)


def shipped_presets() -> PresetFile:
    """The presets perftune ships (MLPerf Inference's Server-scenario limits)."""
    text = resources.files("perftune.bench").joinpath("slo_presets.yaml").read_text(encoding="utf-8")
    return _parse_preset_file(text, "slo_presets.yaml")


def load_presets(presets_file: Path | None = None) -> PresetFile:
    """The shipped presets, with a user file's families and presets on top (the user's win a clash)."""
    base = shipped_presets()
    if presets_file is None:
        return base
    p = Path(presets_file)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"cannot read the SLO preset file {p}: {e.strerror or e}", hint="check the --slo-file path"
        ) from e
    user = _parse_preset_file(text, str(p))
    return PresetFile(families={**base.families, **user.families}, presets={**base.presets, **user.presets})


# ---------------------------------------------------------------- resolving


def _names_hint(presets: PresetFile) -> str:
    names = sorted(presets.families) + sorted(presets.presets)
    return f"a preset ({', '.join(names)}) or {CUSTOM_FORM}; `perftune capacity --list-presets` shows them"


def parse_custom(text: str) -> Slo:
    """`ttft=2000,tpot=100,p=99` (p defaults to 99; ttft_ms/tpot_ms are accepted too) -> Slo."""
    hint = f"write {CUSTOM_FORM}, e.g. ttft=2000,tpot=100,p=99"
    vals: dict[str, float] = {}
    p = 99
    for part in text.split(","):
        term = part.strip()
        if not term:
            continue
        key, sep, raw = term.partition("=")
        key, raw = key.strip().lower(), raw.strip()
        if not sep or (key not in CUSTOM_KEYS and key not in ("p", "percentile")):
            raise ConfigError(f"bad SLO term '{term}'", hint=hint)
        if key in ("p", "percentile"):
            digits = raw.lower().removeprefix("p")
            if not digits.isdigit() or int(digits) not in PERCENTILE_VALUES:
                raise ConfigError(
                    f"SLO percentile '{raw}' is not one of {', '.join(map(str, PERCENTILE_VALUES))}",
                    hint="the bench summarizes each trial at p50, p90, p95 and p99, e.g. p=99",
                )
            p = int(digits)
            continue
        try:
            v = float(raw)
        except ValueError as e:
            raise ConfigError(f"SLO value for {key} is not a number: '{raw}'", hint=hint) from e
        if not math.isfinite(v) or v <= 0:
            raise ConfigError(f"SLO bound {key}={raw} must be a positive number of ms", hint=hint)
        vals[CUSTOM_KEYS[key]] = v
    missing = [k for k in ("ttft", "tpot") if f"{k}_ms" not in vals]
    if missing:
        raise ConfigError(f"the SLO '{text}' has no {' and no '.join(missing)} bound", hint=hint)
    t, o = vals["ttft_ms"], vals["tpot_ms"]
    return Slo(
        name=f"ttft={t:g},tpot={o:g},p={p}",
        ttft_ms=t,
        tpot_ms=o,
        percentile=p,  # checked against PERCENTILE_VALUES above
        description="user-defined",
        source="user",
    )


def _from_preset(name: str, preset: SloPreset) -> Slo:
    return Slo(
        name=name,
        ttft_ms=preset.ttft_ms,
        tpot_ms=preset.tpot_ms,
        percentile=preset.percentile,
        description=preset.description,
        source=preset.source,
        size_class=preset.size_class,
    )


def resolve_slo(
    text: str, *, total_params: float | None = None, moe: bool = False, presets_file: Path | None = None
) -> Slo:
    """A preset name, a family name (resolved by the model's size class) or `ttft=..,tpot=..,p=..` -> Slo.

    A ConfigError (one line and a hint) for anything else, and for a family without a model size.
    """
    raw = text.strip()
    if not raw:
        raise ConfigError("empty SLO", hint=_names_hint(load_presets(presets_file)))
    if "=" in raw:
        return parse_custom(raw)
    presets = load_presets(presets_file)
    name = raw.lower()
    if name in presets.presets:
        return _from_preset(name, presets.presets[name])
    if name in presets.families:
        if total_params is None:
            members = sorted(n for n, p in presets.presets.items() if p.family == name)
            raise ConfigError(
                f"the SLO preset '{name}' depends on the model's size and none is known",
                hint="give --model-size (e.g. 8b, 70b, 671b with --moe) or --model-card (a catalog name or "
                f"model folder), or name the class directly: {', '.join(members)}",
            )
        if not math.isfinite(total_params) or total_params <= 0:
            raise ConfigError(
                f"model size {total_params:g} is not a positive parameter count", hint="e.g. --model-size 8b"
            )
        cls = size_class(total_params, moe=moe)
        for member, preset in sorted(presets.presets.items()):
            if preset.family == name and preset.size_class == cls:
                return _from_preset(member, preset)
        raise ConfigError(
            f"the SLO family '{name}' has no preset for the {cls} size class",
            hint=f"add one with family: {name} and size_class: {cls} to the --slo-file, or name a preset",
        )
    raise ConfigError(f"unknown SLO preset '{raw}'", hint=_names_hint(presets))


# ---------------------------------------------------------------- the model's size


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1e9, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_params(text: str) -> float:
    """'8b' / '70B' / '1.5t' / '405e9' -> a parameter count; a bare number below 1e6 is billions."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(
            f"model size '{text}' is not a parameter count", hint="e.g. --model-size 8b, 70B or 671b"
        )
    v, unit = float(m.group(1)), m.group(2).lower()
    if unit == "" and v >= 1e6:
        return v  # a plain count such as 8030261248
    out = v * _SCALE[unit]
    if out <= 0:
        raise ConfigError(f"model size '{text}' must be positive", hint="e.g. --model-size 8b")
    return out


def find_model_size(
    *, model_size: str | None = None, model_card: str | None = None, served_model: str | None = None
) -> tuple[float, bool, str] | None:
    """(total parameters, is MoE, where it came from) for a capacity search's SLO class, or None.

    `model_size` is a count such as '70b' (never MoE: pass moe yourself); `model_card` a catalog name,
    model folder or config.json; otherwise a served model name that is a catalog name is used (no
    network lookups for a plain served name).
    """
    from perftune.models.resolve import catalog_config
    from perftune.models.resolve import model_card as card_of

    if model_size is not None:
        return parse_params(model_size), False, f"--model-size {model_size}"
    ref = model_card
    if ref is None and served_model is not None and catalog_config(served_model) is not None:
        ref = served_model
    if ref is None:
        return None
    try:
        card = card_of(ref)
    except PerftuneError as e:
        raise ConfigError(e.message, hint=e.hint or "give --model-size instead, e.g. --model-size 70b") from e
    return float(card.total_params), card.moe is not None, f"model card {card.name}"


def slo_for_model(
    text: str,
    *,
    model_size: str | None = None,
    model_card: str | None = None,
    served_model: str | None = None,
    moe: bool = False,
    presets_file: Path | None = None,
) -> Slo:
    """resolve_slo with the model's size found from --model-size, --model-card or a catalog served name.

    The size is looked up only when the SLO is a family (a plain preset or a custom SLO needs none).
    """
    presets = load_presets(presets_file) if "=" not in text else None
    needs_size = presets is not None and text.strip().lower() in presets.families
    total: float | None = None
    is_moe = moe
    if needs_size:
        found = find_model_size(model_size=model_size, model_card=model_card, served_model=served_model)
        if found is not None:
            total, card_moe, _ = found
            is_moe = moe or card_moe
    return resolve_slo(text, total_params=total, moe=is_moe, presets_file=presets_file)


def preset_rows(presets_file: Path | None = None) -> list[dict[str, Any]]:
    """One row per preset and per family, for `--list-presets` (families list their class members)."""
    presets = load_presets(presets_file)
    rows: list[dict[str, Any]] = []
    for fam, desc in sorted(presets.families.items()):
        members = {p.size_class: n for n, p in sorted(presets.presets.items()) if p.family == fam}
        rows.append(
            {
                "name": fam,
                "kind": "family",
                "slo": ", ".join(f"{c}: {members[c]}" for c in SIZE_CLASSES if c in members),
                "description": desc,
                "source": "resolved by size class: <= 20B -> 8b, <= 150B -> 70b, dense > 150B -> 405b, "
                "MoE > 150B -> r1",
            }
        )

    def order(item: tuple[str, SloPreset]) -> tuple[str, int, str]:
        name, p = item
        rank = SIZE_CLASSES.index(p.size_class) if p.size_class is not None else len(SIZE_CLASSES)
        return (p.family or name, rank, name)

    for name, p in sorted(presets.presets.items(), key=order):
        s = _from_preset(name, p)
        rows.append(
            {
                "name": name,
                "kind": "preset",
                "slo": s.statement(),
                "description": p.description,
                "source": p.source,
            }
        )
    return rows
