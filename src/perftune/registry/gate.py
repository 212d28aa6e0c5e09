"""The call the deploy path makes before launching anything: refuse a deploy that drops a required flag."""

from __future__ import annotations

import os
from pathlib import Path

from perftune.errors import GateError
from perftune.registry.check import CheckResult, check_deploy
from perftune.registry.deploy_args import DeployArgs, parse_argv
from perftune.registry.store import ENV_VAR, load_for_check, load_shipped, resolve_registry


def enforce_known_good(
    model: str,
    engine: str,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    engine_version: str | None = None,
    registry: str | Path | None = None,
    require_registered: bool = False,
) -> CheckResult:
    """Check an engine launch (argv after the engine entry point) against the registry; raise if it fails.

    The registry comes from `resolve_registry`; an explicitly named one (argument or
    $PERFTUNE_KNOWN_GOOD_REGISTRY) must exist. The entries shipped with perftune are always consulted
    too; for a model in both, the resolved registry's entry wins (see `store.with_shipped`).
    """
    path = resolve_registry(registry)
    explicit = registry is not None or bool(os.environ.get(ENV_VAR))
    reg = load_for_check(path, must_exist=explicit)
    deploy: DeployArgs = parse_argv(argv)
    deploy.engine, deploy.model, deploy.engine_version = engine, model, engine_version
    deploy.env = {**(env or {}), **deploy.env}
    res = check_deploy(model, reg.models.get(model), deploy, require_registered=require_registered)
    if res.verdict == "fail":
        first = res.missing_required[0] if res.missing_required else None
        hint = (
            f"add {first.flag}"
            + (f" with a value matching {first.match!r}" if first.match else "")
            + f" (evidence: {first.evidence or 'n/a'})"
            if first
            else "register the model with `perftune known-good record`"
        )
        entry = reg.models.get(model)
        shipped = entry is not None and load_shipped().models.get(model) == entry
        source = f"registry {path}" + (", entry shipped with perftune" if shipped else "")
        raise GateError(
            f"known-good check failed for {model}: {'; '.join(res.reasons)} ({source})", hint=hint
        )
    return res
