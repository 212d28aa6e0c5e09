"""The perftune CLI: one place that assembles the command groups."""

from __future__ import annotations

import typer

import perftune
from perftune.cli import (
    bench,
    campaign,
    capacity,
    deploy,
    known_good,
    levers,
    mock,
    models,
    quant,
    report,
    sim,
)
from perftune.cli.common import DEBUG

app = typer.Typer(
    help="perftune: from a bare model id to its best, proven serving configuration.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(bench.app, name="bench")
app.add_typer(known_good.app, name="known-good")
app.add_typer(models.advise_app, name="advise")
app.add_typer(models.model_app, name="model")
app.command("inspect")(models.inspect)
app.command("levers")(levers.levers)
app.command("deploy", context_settings=deploy.CONTEXT)(deploy.deploy)
app.command("mock-server")(mock.mock_server)
app.command("sim-server", context_settings=sim.CONTEXT)(sim.sim_server)
app.add_typer(sim.app, name="sim")
app.command("optimize")(campaign.optimize)
app.add_typer(campaign.lake_app, name="lake")
app.command("frontier")(campaign.frontier)
app.command("tune")(campaign.tune)
app.command("profile")(campaign.profile)
app.command("quantize")(quant.quantize)
app.command("validate")(quant.validate)
app.command("specdec")(quant.specdec)
app.command("capacity")(capacity.capacity)
app.command("report")(report.report)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"perftune {perftune.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version"
    ),
) -> None:
    DEBUG["on"] = debug


def main() -> None:
    app()
