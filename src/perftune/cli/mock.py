"""`perftune mock-server`: the ground-truth server."""

from __future__ import annotations

import typer

from perftune.cli.common import handle_errors, serve_forever
from perftune.errors import ConfigError
from perftune.mock.server import MockConfig, serve


@handle_errors
def mock_server(
    port: int = typer.Option(8811, help="port to listen on (0: any free port)"),
    host: str = typer.Option("127.0.0.1", help="address to bind"),
    ttft_ms: float = typer.Option(
        20.0, help="first chunk (one token) leaves this long after the request arrives"
    ),
    itl_ms: float = typer.Option(5.0, help="exact per-token interval after the first token"),
    tokens_per_chunk: int = typer.Option(
        1, help="tokens per chunk after the first; chunks are K x itl apart"
    ),
    model_name: str = typer.Option("mock", help="served model name"),
    max_model_len: int = typer.Option(131072, help="reject prompt + max_tokens above this (HTTP 400)"),
    ready_json: bool = typer.Option(False, help="print one JSON line with the bound port when ready"),
    wedge_after: int | None = typer.Option(
        None, help="test engine: streams of requests after the Nth open and never send a token"
    ),
    startup_delay_s: float = typer.Option(
        0.0, help="test engine: wait this long before listening (an engine loading its weights)"
    ),
    usage_cost_us: float = typer.Option(
        0.0,
        help="CPU microseconds the server spends on each chunk carrying a usage object (per-chunk usage "
        "asked for): emulates the server-side cost of continuous_usage_stats",
    ),
) -> None:
    """Serve an OpenAI-compatible stream with exact, deadline-driven timing (ground truth for clients)."""
    if ttft_ms < 0 or itl_ms < 0 or tokens_per_chunk < 1 or usage_cost_us < 0:
        raise ConfigError(
            "ttft-ms, itl-ms and usage-cost-us must be >= 0 and tokens-per-chunk >= 1",
            hint="e.g. --ttft-ms 20 --itl-ms 5",
        )
    if startup_delay_s > 0:
        import time

        time.sleep(startup_delay_s)
    cfg = MockConfig(
        ttft_ms=ttft_ms,
        itl_ms=itl_ms,
        tokens_per_chunk=tokens_per_chunk,
        model=model_name,
        max_model_len=max_model_len,
        wedge_after=wedge_after,
        usage_cost_us=usage_cost_us,
    )

    serve_forever(
        lambda h, p, ready: serve(cfg, h, p, ready),
        host,
        port,
        ready_json=ready_json,
        banner=lambda bound: (
            f"mock server on http://{host}:{bound} (ttft {ttft_ms} ms, itl {itl_ms} ms, "
            f"{tokens_per_chunk} tok/chunk)"
        ),
    )
