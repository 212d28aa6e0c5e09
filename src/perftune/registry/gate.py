"""The call the deploy path makes before launching anything: refuse a deploy that drops a required flag."""

from __future__ import annotations

import os
from pathlib import Path

from perftune.errors import GateError
from perftune.registry.check import CheckResult, check_deploy
from perftune.registry.deploy_args import DeployArgs, parse_argv
from perftune.registry.schema import Registry
from perftune.registry.store import ENV_VAR, load_registry, resolve_registry


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

    An explicitly named registry (argument or $PERFTUNE_KNOWN_GOOD_REGISTRY) must exist; when only the
    default locations apply and none exists, there is nothing to enforce (unless require_registered).
    """
    path = resolve_registry(registry)
    explicit = registry is not None or bool(os.environ.get(ENV_VAR))
    reg = (
        load_registry(path)
        if (path.exists() or explicit)
        else Registry.model_validate({"schema": "known_good_config_v1", "models": {}})
    )
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
        raise GateError(
            f"known-good check failed for {model}: {'; '.join(res.reasons)} (registry {path})", hint=hint
        )
    return res
