"""Arms: one lever changed per arm against each engine's baseline (round 1), generated from the lever
catalog and the ModelCard, written to an editable arms.tsv. Pure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from perftune.errors import ConfigError, PerftuneError
from perftune.models.card import ModelCard
from perftune.serving.levers import lookup, parse_value, translate
from perftune.util.atomic import write_text


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str
    name: str
    levers: dict[str, Any] = Field(default_factory=dict)
    source: str = Field("catalog", description="where the arm came from: the catalog, or a ledger row")

    @property
    def key(self) -> str:
        return f"{self.engine}/{self.name}"


def _candidates(card: ModelCard) -> list[tuple[str, list[Any]]]:
    """(lever, values) worth one arm each, for this model."""
    out: list[tuple[str, list[Any]]] = [
        ("batch-cap", [64, 256, 512]),
        ("prefill-chunk", [2048, 16384]),
        ("memory-fraction", [0.95]),
        ("kv-cache-dtype", ["fp8"]),
        ("cuda-graphs", [False]),
        ("prefix-cache", [False]),
    ]
    if card.moe is not None:  # MoE: expert parallel and its kernels
        out.append(("expert-parallel", [True]))
    if card.max_context >= 65536:  # long context: larger prefill chunks matter
        out.append(("prefill-chunk", [32768]))
    return out


def generate_arms(
    card: ModelCard,
    engines: list[str],
    baselines: dict[str, dict[str, Any]] | None = None,
    seeds: list[dict[str, Any]] | None = None,
) -> list[Arm]:
    """Per engine: the baseline first, then the ledger's seeds (phase 2.5: lever, value, source), then
    one arm per catalog (lever, value) the engine supports and no seed already tries."""
    arms: list[Arm] = []
    for engine in engines:
        base = dict((baselines or {}).get(engine, {}))
        arms.append(Arm(engine=engine, name="baseline", levers=base))
        flag_engine = "vllm" if engine in ("sim", "mock") else engine
        for sd in seeds or []:
            if sd.get("engine") != engine or engine == "mock":
                continue
            try:
                levers = {**base, sd["lever"]: parse_value(lookup(sd["lever"]), str(sd["value"]))}
                translate(levers, flag_engine)
            except PerftuneError:
                continue  # a seed this engine cannot run (or a value that is advice, not a setting)
            if levers == base or any(a.levers == levers for a in arms if a.engine == engine):
                continue
            arms.append(
                Arm(
                    engine=engine,
                    name=f"{sd['lever']}={sd['value']}",
                    levers=levers,
                    source=str(sd["source"]),
                )
            )
        for lever, values in _candidates(card):
            for v in values:
                levers = {**base, lever: v}
                try:
                    translate(levers, flag_engine)
                except PerftuneError:
                    continue  # not supported by this engine: no arm, and the TSV says nothing false
                if engine == "mock" or any(a.levers == levers for a in arms if a.engine == engine):
                    continue
                arms.append(Arm(engine=engine, name=f"{lever}={v}", levers=levers))
    return arms


def prefix_cache_states(arms: list[Arm], defaults: dict[str, bool | None]) -> dict[str, bool | None]:
    """Each engine's baseline prefix-cache state (its lever, else the engine's default; None: unknown)."""
    out: dict[str, bool | None] = {}
    for a in arms:
        if a.engine not in out:
            v = a.levers.get("prefix-cache", defaults.get(a.engine))
            out[a.engine] = None if v is None else bool(v)
    return out


def prefix_cache_mismatch(arms: list[Arm], defaults: dict[str, bool | None]) -> str | None:
    """Engines compared with prefix caching on in one and off in another would credit the cache (a
    radix-cache replay is a phantom win), not the engine: say which, or None when they match."""
    states = {e: v for e, v in prefix_cache_states(arms, defaults).items() if v is not None}
    if len(set(states.values())) <= 1:
        return None
    return "baselines differ in prefix caching: " + ", ".join(
        f"{e} {'on' if v else 'off'}" for e, v in sorted(states.items())
    )


def compose(engine: str, winners: list[Arm], base: dict[str, Any]) -> Arm:
    """The baseline with every winner's lever changes. Winners come best first: when two change the
    same lever (prefill-chunk=16384 and prefill-chunk=8192), the better one's value is kept and the
    other winner adds nothing (nor its name)."""
    levers = dict(base)
    taken: set[str] = set()
    used = []
    for w in winners:
        change = {k: v for k, v in w.levers.items() if base.get(k) != v and k not in taken}
        if change:
            levers.update(change)
            taken |= set(change)
            used.append(w)
    name = "+".join(w.name for w in used) or "baseline"
    return Arm(engine=engine, name=f"composed:{name}", levers=levers)


def write_tsv(arms: list[Arm], path: Path) -> None:
    lines = [
        "# engine\tarm\tlevers (k=v;k=v)\tsource (catalog, or the ledger row it came from). The first row "
        "per engine is its baseline. Edit freely."
    ]
    for a in arms:
        lines.append(
            f"{a.engine}\t{a.name}\t" + ";".join(f"{k}={v}" for k, v in a.levers.items()) + f"\t{a.source}"
        )
    write_text(path, "\n".join(lines) + "\n")


def read_tsv(path: Path) -> list[Arm]:
    arms = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ConfigError(f"{path}:{n}: expected engine<TAB>arm<TAB>levers", hint="see the header line")
        levers: dict[str, Any] = {}
        for item in filter(None, (parts[2] if len(parts) > 2 else "").split(";")):
            k, sep, v = item.partition("=")
            if not sep:
                raise ConfigError(f"{path}:{n}: bad lever '{item}'", hint="write NAME=VALUE")
            levers[k] = parse_value(lookup(k), v)
        src = parts[3].strip() if len(parts) > 3 and parts[3].strip() else "catalog"
        arms.append(Arm(engine=parts[0], name=parts[1], levers=levers, source=src))
    return arms


def grid_arms(engine: str, base: dict[str, Any], space: dict[str, list[Any]]) -> list[Arm]:
    """Round-1 arms inside a search space: the baseline, then each other value of each lever alone."""
    arms = [Arm(engine=engine, name="baseline", levers=dict(base))]
    for lever, values in space.items():
        for v in values:
            if base.get(lever) != v:
                arms.append(Arm(engine=engine, name=f"{lever}={v}", levers={**base, lever: v}))
    return arms
