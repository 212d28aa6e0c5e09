"""`perftune levers`: the cross-engine lever catalog with each engine's translation."""

from __future__ import annotations

import typer
from rich.table import Table

from perftune.cli.common import handle_errors, out_console, print_json
from perftune.errors import ConfigError
from perftune.serving.levers import describe


@handle_errors
def levers(
    engine: str | None = typer.Option(
        None, help="vllm | sglang | llamacpp (default: all engines side by side)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """List serving levers, their types and ranges, and how each engine spells them."""
    if engine is not None and engine not in ("vllm", "sglang", "llamacpp"):
        raise ConfigError(f"unknown engine '{engine}'", hint="one of vllm, sglang, llamacpp")
    rows = describe(engine)
    if as_json:
        print_json(rows)
        return
    t = Table(title=f"perftune levers{' for ' + engine if engine else ''}")
    for col in rows[0]:
        t.add_column(col)
    for r in rows:
        t.add_row(*(str(v) for v in r.values()))
    out_console.print(t)
