"""Engine facts the client must cope with (SGLang: gzipped /metrics, version only in /get_server_info)."""

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


@pytest.mark.asyncio
async def test_sglang_version_comes_from_server_info() -> None:
    root = T.parent
    models, info = (root / "models.json").read_bytes(), (root / "server_info.json").read_bytes()

    async def get_models(_: web.Request) -> web.Response:
        return web.Response(body=models, content_type="application/json")

    async def get_info(_: web.Request) -> web.Response:
        return web.Response(body=info, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/models", get_models)
    app.router.add_get("/get_server_info", get_info)  # no /version, as SGLang
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with BenchClient(f"http://127.0.0.1:{runner.addresses[0][1]}", max_connections=1) as client:
            facts = await client.preflight("llama-3.1-8b-dummy")
        assert facts["version"] == "0.5.16" and facts["owned_by"] == "sglang"
    finally:
        await runner.cleanup()
