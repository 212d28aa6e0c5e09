"""SGLang gzips /metrics: the client (which never auto-decompresses) must still read the counters."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from aiohttp import web

from perftune.bench.client import BenchClient
from perftune.telemetry.prom import parse_totals

T = Path(__file__).parents[1] / "contract" / "transcripts" / "sglang-0.5.16" / "metrics_after.prom"
pytestmark = pytest.mark.e2e


@pytest.mark.asyncio
async def test_gzipped_metrics_are_decoded() -> None:
    text = T.read_bytes()

    async def metrics(request: web.Request) -> web.Response:  # gzip even when told identity: worst case
        return web.Response(
            body=gzip.compress(text), headers={"Content-Encoding": "gzip"}, content_type="text/plain"
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with BenchClient(f"http://127.0.0.1:{port}", max_connections=1) as client:
            got = await client.metrics_text()
        assert got is not None
        assert parse_totals(got)["sglang:realtime_tokens_total[mode=prefill_cache]"] == 270.0
    finally:
        await runner.cleanup()
