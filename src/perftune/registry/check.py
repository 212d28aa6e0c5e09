"""Pure, fail-closed check of a deploy against a registry entry."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field

from perftune.registry.deploy_args import DeployArgs
from perftune.registry.schema import BLOCKING, ModelEntry, RequiredFlag


class FlagFinding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flag: str
    match: str = Field("", description="what the value must match (regex, or a JSON subset)")
    severity: str
    why: str
    evidence: str
    found: list[str | None] = Field(description="values the deploy gives this flag (empty: absent)")
    note: str = Field("", description="why it applies, or not")


class CheckResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["pass", "fail"]
    model: str | None
    registered: bool = Field(description="the model has a registry entry")
    engine: str | None
    engine_version: str | None
    missing_required: list[FlagFinding] = Field(
        description="blocking flags the deploy lacks: the check fails"
    )
    warnings: list[FlagFinding] = Field(description="missing `perf` flags: a warning, not a failure")
    satisfied: list[FlagFinding] = Field(description="required flags the deploy carries")
    not_applicable: list[FlagFinding] = Field(
        description="flags whose affected engine/versions exclude this deploy"
    )
    reasons: list[str] = Field(description="human-readable reasons for the verdict")


def canonical_json(value: str) -> str | None:
    try:
        return json.dumps(json.loads(value), sort_keys=True, separators=(",", ":"))
    except (json.JSONDecodeError, TypeError):
        return None


def _is_subset(want: Any, have: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and _is_subset(v, have[k]) for k, v in want.items())
    return bool(want == have)


def value_matches(rule: RequiredFlag, value: str | None) -> bool:
    if not rule.match:
        return True  # presence is enough
    if value is None:
        return False
    try:
        want = json.loads(rule.match)
    except json.JSONDecodeError:
        want = None
    if isinstance(want, dict):  # a JSON object: must be a subset of the (JSON) value
        try:
            return _is_subset(want, json.loads(value))
        except json.JSONDecodeError:
            return False
    candidates = [value]
    canon = canonical_json(value)
    if canon is not None:
        candidates.append(canon)
    return any(re.search(rule.match, c) for c in candidates)


def applies(affected: str, engine: str | None, version: str | None) -> tuple[bool, str]:
    """Does a rule with this `affected` text apply to the deploy? Unknown versions apply (fail-closed)."""
    text = affected.strip().split(" on ", 1)[0].strip()
    if not text or text.lower() in ("all", "*", "any"):
        return True, "applies to all versions"
    parts = text.split(None, 1)
    rule_engine, spec_text = (parts[0].lower(), parts[1] if len(parts) > 1 else "")
    if rule_engine[:1].isdigit() or rule_engine[:1] in "<>=!~":
        rule_engine, spec_text = "", text
    if rule_engine and engine and rule_engine != engine.lower():
        return False, f"affects {rule_engine}, deploy runs {engine}"
    if not spec_text.strip():
        return True, f"applies to all {rule_engine} versions"
    if version is None:
        return True, f"affects {text}; deploy version unknown, so it applies (fail-closed)"
    spec_text = spec_text.replace(" ", "")
    if spec_text[0].isdigit():  # "0.22" means the 0.22 series
        spec_text = f"=={spec_text}.*" if spec_text.count(".") == 1 else f"=={spec_text}"
    try:
        ok = Version(version) in SpecifierSet(spec_text)
    except (InvalidSpecifier, InvalidVersion):
        return True, f"cannot compare '{version}' with '{spec_text}'; applies (fail-closed)"
    return ok, (f"affects {text}; deploy is {version}" if ok else f"affects {text} only; deploy is {version}")


def check_deploy(
    model: str | None, entry: ModelEntry | None, deploy: DeployArgs, *, require_registered: bool = False
) -> CheckResult:
    engine = deploy.engine or (entry.engine if entry else None)
    res = CheckResult(
        verdict="pass",
        model=model,
        registered=entry is not None,
        engine=engine,
        engine_version=deploy.engine_version,
        missing_required=[],
        warnings=[],
        satisfied=[],
        not_applicable=[],
        reasons=[],
    )
    if entry is None:
        if require_registered:
            res.verdict = "fail"
            res.reasons.append(f"model '{model}' is not in the registry and --require-registered was given")
        else:
            res.reasons.append(f"model '{model}' is not in the registry: nothing to enforce")
        return res
    if deploy.engine and entry.engine and deploy.engine != entry.engine:
        res.reasons.append(f"registry entry is for {entry.engine}; deploy runs {deploy.engine}")
    for rule in entry.required_flags:
        if rule.flag.startswith("env:"):
            name = rule.flag[4:]
            found: list[str | None] = [deploy.env[name]] if name in deploy.env else []
        else:
            found = deploy.values(rule.flag) or []
        ok_applies, note = applies(rule.affected, engine, deploy.engine_version)
        f = FlagFinding(
            flag=rule.flag,
            match=rule.match,
            severity=rule.severity,
            why=rule.why,
            evidence=rule.evidence,
            found=found,
            note=note,
        )
        if not ok_applies:
            res.not_applicable.append(f)
        elif any(value_matches(rule, v) for v in found):
            res.satisfied.append(f)
        elif rule.severity in BLOCKING:
            res.missing_required.append(f)
        else:
            res.warnings.append(f)
    if res.missing_required:
        res.verdict = "fail"
        for f in res.missing_required:
            got = f" (has {f.found})" if f.found else ""
            res.reasons.append(f"missing {f.severity} flag {f.flag}{got}: {f.why}")
    for f in res.warnings:
        res.reasons.append(f"warning: perf flag {f.flag} missing: {f.why}")
    return res
