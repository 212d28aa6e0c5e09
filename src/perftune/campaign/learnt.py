"""What a campaign learnt about failures, as known-good `required_flags` rows. Pure.

Phase 3 deploys one arm per lever change; an arm that fails (boot, OOM, crash under load, wedge,
dropped streams, HTTP errors) names the lever value that broke it. When the champion, which served the
whole suite, sets that same lever to another value, the avoiding value is known: it becomes a required
flag of the model's known-good entry, with the failure's severity, the evidence path and the engine
version it was seen on, so every later deploy is checked for it (fail-closed for blocking severities).
When the champion leaves that lever at the engine's default there is no flag to require (a registry
row cannot demand that a flag be absent): the failure is kept as a note on the entry instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from perftune.errors import PerftuneError
from perftune.serving.levers import translate

# A failure class's consequence, as the registry's severities name it.
SEVERITY: dict[str, str] = {
    "boot": "boot-blocker",
    "oom": "boot-blocker",
    "crash": "crash-high-c",
    "wedge": "crash-high-c",
    "dropped": "crash-high-c",
    "http-error": "deploy-correctness",
}


class Learnt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    required_flags: list[str] = Field(
        description="rows for record_entry: FLAG|MATCH|SEVERITY|WHY|AFFECTED|EVIDENCE"
    )
    notes: list[str] = Field(description="failures that could not become a row, and why")


def _clean(text: str) -> str:
    """One line, no '|' (the row's field separator)."""
    return " ".join(text.replace("|", "/").split())[:240]


def learnt_flags(
    failures: Sequence[Mapping[str, Any]],
    arm_levers: Mapping[str, Mapping[str, Any]],
    baseline_levers: Mapping[str, Any],
    champion_levers: Mapping[str, Any],
    *,
    engine: str,
    engine_version: str | None,
    evidence: str,
) -> Learnt:
    """`failures`: phase 3's known-good candidates (arm key, failure class, excerpt, log); `arm_levers`:
    each arm key's levers; the failing arm is compared with its engine's baseline arm, and only a
    single-lever change isolates a cause."""
    rows: list[str] = []
    notes: list[str] = []
    seen: set[tuple[str, str]] = set()
    affected = f"{engine} {engine_version}" if engine_version and engine_version[:1].isdigit() else engine
    for f in failures:
        arm = str(f.get("arm", ""))
        if not arm.startswith(f"{engine}/"):
            continue
        klass = str(f.get("failure", ""))
        levers = arm_levers.get(arm)
        if levers is None:
            notes.append(f"{arm} failed ({klass}): its levers are not on file, so the cause is not isolated")
            continue
        changed = {k: v for k, v in levers.items() if baseline_levers.get(k) != v}
        if len(changed) != 1:
            notes.append(
                f"{arm} failed ({klass}) with {len(changed)} levers changed from the baseline: "
                "the cause is not isolated to one lever"
            )
            continue
        ((lever, bad),) = changed.items()
        if lever not in champion_levers or champion_levers[lever] == bad:
            notes.append(
                f"avoid {lever}={bad} on {affected}: it failed ({klass}) in phase 3; the champion leaves "
                f"{lever} at the engine default, so there is no flag to require"
            )
            continue
        good = champion_levers[lever]
        try:
            argv = translate({lever: good}, engine)
        except PerftuneError as e:
            notes.append(f"{arm} failed ({klass}); {lever}={good} has no {engine} flag: {e.message}")
            continue
        if not argv or not argv[0].startswith("-"):
            notes.append(f"{arm} failed ({klass}); {lever}={good} renders no {engine} flag")
            continue
        flag, _, inline = argv[0].partition("=")
        value = inline or (argv[1] if len(argv) > 1 and not argv[1].startswith("--") else "")
        if (flag, value) in seen:
            continue
        seen.add((flag, value))
        # The row refuses the value that failed, not every other one: the flag must be there (the
        # champion's known-good config sets it) with any value but the failing one, so later tunes
        # may still try other values of the lever.
        bad_argv = translate({lever: bad}, engine) if not isinstance(bad, bool) else []
        bad_value = bad_argv[1] if len(bad_argv) > 1 and not bad_argv[1].startswith("--") else ""
        bad_value = bad_value or (bad_argv[0].partition("=")[2] if bad_argv else "")
        match = f"^(?!{re.escape(bad_value)}$)" if bad_value and value else ""
        first = next((ln for ln in str(f.get("excerpt", "")).splitlines() if ln.strip()), "")
        why = _clean(
            f"{lever}={bad} failed ({klass}) in phase 3"
            + (f": {first}" if first else "")
            + f"; the champion's {lever}={good} served the whole suite"
        )
        sev = SEVERITY.get(klass, "deploy-correctness")
        rows.append(f"{flag}|{match}|{sev}|{why}|{affected}|{_clean(str(f.get('log') or evidence))}")
    return Learnt(required_flags=rows, notes=notes)
