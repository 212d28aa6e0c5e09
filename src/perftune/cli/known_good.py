"""`perftune known-good record|check|validate`.

Exit codes: 0 ok / pass; 1 check failed (a blocking flag is missing, or an unregistered model with
--require-registered); 2 bad input; 3 registry missing, malformed, or refusing the change.
"""

from __future__ import annotations

from pathlib import Path

import typer

from perftune import api
from perftune.cli.common import handle_errors, out_console, print_json

REGISTRY_HELP = (
    "registry file (default: $PERFTUNE_KNOWN_GOOD_REGISTRY, then configs/known-good-configs.yaml found "
    "walking up from here, then ~/.config/perftune/known-good-configs.yaml)"
)

app = typer.Typer(
    help="Known-good serving flags: record after a champion, check (fail-closed) before deploy.",
    no_args_is_help=True,
)


@app.command("record")
@handle_errors
def record(
    model: str = typer.Option(..., help="model id, e.g. Qwen/Qwen3-Next-80B-A3B-Instruct"),
    slug: str = typer.Option(..., help="short name, e.g. qwen3-next"),
    engine: str = typer.Option(..., help="vllm | sglang | llamacpp"),
    required_flag: list[str] = typer.Option(
        [], help="FLAG|MATCH|SEVERITY|WHY|AFFECTED|EVIDENCE (repeatable; MATCH may contain '|')"
    ),
    grind_frontier: str = typer.Option(..., help="where this model's next lever is recorded"),
    engine_versions: str = typer.Option("", help="engine versions the entry was established on"),
    hardware: str = typer.Option("", help="hardware it was established on, e.g. 4xH200"),
    arch_note: str = typer.Option("", help="why the architecture needs these flags"),
    fallback: str = typer.Option("", help="what to deploy if the champion cannot be"),
    champion_config: str | None = typer.Option(None, help="champion config reference (bundle path)"),
    verdict: str = typer.Option("DRAFT", help="champion tier: DRAFT | VERDICT"),
    verdict_value: str = typer.Option("", help="champion headline number with unit and context"),
    campaign: str = typer.Option("", help="campaign run id"),
    registry: Path | None = typer.Option(None, help=REGISTRY_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Append a model entry (append-only; comments and existing entries are kept byte for byte)."""
    champion = (
        {"config_ref": champion_config, "verdict": verdict, "value": verdict_value, "campaign": campaign}
        if champion_config
        else None
    )
    path, entry = api.known_good_record(
        model,
        registry=registry,
        slug=slug,
        engine=engine,
        required_flags=required_flag,
        grind_frontier=grind_frontier,
        engine_versions=engine_versions,
        hardware=hardware,
        arch_note=arch_note,
        fallback=fallback,
        champion=champion,
    )
    if as_json:
        print_json({"recorded": model, "registry": str(path), "entry": entry.model_dump(mode="json")})
    else:
        out_console.print(f"recorded {model} ({len(entry.required_flags)} required flag(s)) in {path}")


@app.command("check")
@handle_errors
def check(
    model: str | None = typer.Option(None, help="model id (default: the model the deploy serves)"),
    serve_args: str | None = typer.Option(None, help="the serve command line, split like a shell"),
    deploy_file: Path | None = typer.Option(
        None, help="Kubernetes manifest, Slurm/shell script, or serve spec"
    ),
    engine_version: str | None = typer.Option(
        None, help="engine version of the deploy (else from the image tag)"
    ),
    require_registered: bool = typer.Option(False, help="fail when the model has no registry entry"),
    registry: Path | None = typer.Option(None, help=REGISTRY_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Fail-closed: exit 1 when a boot-blocker, crash-high-c or deploy-correctness flag is missing."""
    path, res = api.known_good_check(
        model,
        registry=registry,
        serve_args=serve_args,
        deploy_file=deploy_file,
        engine_version=engine_version,
        require_registered=require_registered,
    )
    if as_json:
        print_json({"registry": str(path), **res.model_dump(mode="json")})
    else:
        color = "green" if res.verdict == "pass" else "bold red"
        out_console.print(
            f"verdict: [{color}]{res.verdict}[/] ({res.model}, {res.engine} "
            f"{res.engine_version or 'version unknown'}; registry {path})"
        )
        for r in res.reasons:
            out_console.print(f"  - {r}", highlight=False)
    if res.verdict == "fail":
        raise SystemExit(1)


@app.command("validate")
@handle_errors
def validate(
    registry: Path | None = typer.Option(None, help=REGISTRY_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Validate the whole registry against schema known_good_config_v1 (exit 3 if invalid)."""
    path, n = api.known_good_validate(registry)
    if as_json:
        print_json({"registry": str(path), "valid": True, "models": n})
    else:
        out_console.print(f"{path}: valid (known_good_config_v1, {n} model entries)")
