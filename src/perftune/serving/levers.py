"""The cross-engine lever catalog (data in levers.yaml) and its pure translation to engine flags.

A lever the engine lacks, a value out of range, or an unknown lever is an error before anything
launches; nothing is ever dropped silently.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any, Literal

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field
from ruamel.yaml import YAML

from perftune.errors import ConfigError
from perftune.serving.specdec import SPEC_LEVERS, SpecConfig, from_levers, supported, translate_spec

Render = Literal["value", "bool_flag", "negated_flag", "bool_pair", "json_key", "copy_tp", "spec"]


class EngineLever(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flag: str | None = Field(None, description="the engine's flag")
    render: Render = Field(description="how the value becomes argv")
    true_flag: str | None = None
    false_flag: str | None = None
    key: str | None = Field(None, description="json_key: the key inside the JSON-valued flag")
    values: dict[str, str] | None = Field(None, description="enum value -> engine spelling")
    versions: str = Field("", description="engine versions that have it (PEP 440 specifier); empty: all")
    also: str | None = Field(None, description="a second flag that takes the same value")


class Lever(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    aliases: list[str] = Field(default_factory=list, description="engine-native names that mean this lever")
    type: Literal["int", "float", "bool", "enum", "json", "str"]
    description: str
    min: float | None = None
    max: float | None = None
    choices: list[str] | None = None
    engines: dict[str, EngineLever]


@cache
def catalog() -> dict[str, Lever]:
    data = YAML(typ="safe").load(resources.files("perftune.serving").joinpath("levers.yaml").read_text())
    return {k: Lever(name=k, **v) for k, v in data.items()}


def parse_value(lever: Lever, raw: Any) -> Any:
    """Validate and type a user-given value (strings from the CLI, or typed values from specs)."""
    name = lever.name
    try:
        if lever.type == "bool":
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("true", "1", "on", "yes"):
                return True
            if s in ("false", "0", "off", "no"):
                return False
            raise ValueError
        if lever.type == "int":
            v: Any = int(raw)
        elif lever.type == "float":
            v = float(raw)
        elif lever.type == "str":
            v = str(raw).strip()
            if not v:
                raise ValueError
            return v
        elif lever.type == "enum":
            v = str(raw)
            if lever.choices and v not in lever.choices:
                raise ConfigError(
                    f"lever {name}={v}: not one of {', '.join(lever.choices)}",
                    hint=f"see `perftune levers` for {name}'s values",
                )
            return v
        else:
            v = json.loads(raw) if isinstance(raw, str) else raw
            return v
    except (ValueError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"lever {name}: '{raw}' is not a valid {lever.type}",
            hint=f"e.g. {name}={'true' if lever.type == 'bool' else lever.min or 1}",
        ) from e
    if (lever.min is not None and v < lever.min) or (lever.max is not None and v > lever.max):
        raise ConfigError(
            f"lever {name}={v} is out of range [{lever.min:g}, {lever.max:g}]",
            hint=f"{name}: {lever.description}",
        )
    return v


def lookup(name: str) -> Lever:
    cat = catalog()
    if name in cat:
        return cat[name]
    for lever in cat.values():
        if name in lever.aliases:
            return lever
    known = list(cat) + [a for lv in cat.values() for a in lv.aliases]
    close = difflib.get_close_matches(name, known, n=1)
    raise ConfigError(
        f"unknown lever '{name}'",
        hint=(f"did you mean {close[0]}? " if close else "") + "`perftune levers` lists them",
    )


def _supported(lever: Lever, engine: str, version: str | None) -> EngineLever:
    el = lever.engines.get(engine)
    ver = f" {version}" if version else ""
    if el is None:
        raise ConfigError(
            f"lever {lever.name} is not supported by {engine}{ver}",
            hint=f"{engine} has no equivalent; supported by: {', '.join(lever.engines) or 'none'}",
        )
    if el.versions and version:
        try:
            ok = Version(version) in SpecifierSet(el.versions)
        except InvalidVersion:
            ok = True  # an unparseable version cannot prove absence
        if not ok:
            raise ConfigError(
                f"lever {lever.name} is not supported by {engine}{ver} (needs {el.versions})",
                hint=f"upgrade {engine} or drop {lever.name}",
            )
    return el


def render(lever: Lever, el: EngineLever, value: Any, *, tp: int = 1) -> list[str]:
    """argv for one lever value."""
    if el.render == "value":
        v = (
            el.values.get(str(value), str(value))
            if el.values
            else (json.dumps(value) if isinstance(value, dict | list) else str(value))
        )
        out = [str(el.flag), v]
        if el.also:
            out += [el.also, v]
        return out
    if el.render == "bool_flag":
        return [str(el.flag)] if value else []
    if el.render == "negated_flag":
        return [] if value else [str(el.flag)]
    if el.render == "bool_pair":
        return [str(el.true_flag if value else el.false_flag)]
    if el.render == "json_key":
        return [str(el.flag), json.dumps({el.key: value})]
    if el.render == "copy_tp":
        return [str(el.flag), str(tp)] if value else []
    raise AssertionError(el.render)  # "spec" levers are rendered together, by translate


def translate(levers: dict[str, Any], engine: str, version: str | None = None, *, tp: int = 1) -> list[str]:
    """All levers -> engine argv, validated; json_key levers that share a flag are merged into one JSON;
    the spec-* levers make one speculative-decoding config, translated by `serving.specdec`."""
    argv: list[str] = []
    merged: dict[str, dict[str, Any]] = {}
    spec: dict[str, Any] = {}
    for name, raw in levers.items():
        lever = lookup(name)
        value = parse_value(lever, raw)
        if lever.name in SPEC_LEVERS:  # checked together below: the method before its knobs
            spec[lever.name] = value
            continue
        el = _supported(lever, engine, version)
        if el.render == "json_key":
            merged.setdefault(str(el.flag), {})[str(el.key)] = value
            continue
        argv += render(lever, el, value, tp=tp)
    for flag, obj in merged.items():
        argv += [flag, json.dumps(obj)]
    if (m := spec.get("spec-method")) is not None and m not in supported(engine, version):
        translate_spec(SpecConfig(method=m, k=1), engine, version)  # raises, naming what the engine runs
    if (cfg := from_levers(spec)) is not None:
        spec_argv = translate_spec(cfg, engine, version)  # an engine that cannot run the method says so
        for name in spec:
            _supported(lookup(name), engine, version)  # then a knob this engine lacks
        argv += spec_argv
    return argv


def describe(engine: str | None = None) -> list[dict[str, Any]]:
    """The catalog as rows, with each engine's translation (for `perftune levers`)."""
    rows = []
    for lever in catalog().values():
        if engine and engine not in lever.engines:
            continue
        fmt = "{:.0f}" if lever.type == "int" else "{:g}"
        rng = (
            f"[{fmt.format(lever.min)}, {fmt.format(lever.max)}]"
            if lever.min is not None and lever.max is not None
            else None
        ) or ("|".join(lever.choices) if lever.choices else lever.type)
        trans = {}
        for eng in ("vllm", "sglang", "llamacpp"):
            el = lever.engines.get(eng)
            if el is None:
                trans[eng] = "not supported"
                continue
            if el.render in ("bool_pair",):
                text = f"{el.true_flag} / {el.false_flag}"
            elif el.render == "negated_flag":
                text = f"{el.flag} when false"
            elif el.render == "bool_flag":
                text = f"{el.flag} when true"
            elif el.render == "json_key":
                text = f"{el.flag} '{{\"{el.key}\": ...}}'"
            elif el.render == "spec":
                text = str(el.flag)  # the engine's spelling of this part of one spec config
            elif el.render == "copy_tp":
                text = f"{el.flag} <tp> when true"
            else:
                text = f"{el.flag} <v>" + (
                    f" ({', '.join(f'{k}->{v}' for k, v in el.values.items())})" if el.values else ""
                )
            trans[eng] = text + (f" [{el.versions}]" if el.versions else "")
        rows.append(
            {
                "lever": lever.name,
                "aliases": ", ".join(lever.aliases),
                "type": lever.type,
                "range": rng,
                "description": lever.description,
                **({engine: trans[engine]} if engine else trans),
            }
        )
    return rows
