"""The eval client against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from perftune.errors import BenchError
from perftune.evals.client import ask_all, complete

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeServer:
    """Records every JSON body; replies through a swappable handler."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.handler: Handler = self.echo
        self.url = ""

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        self.bodies.append(await request.json())
        return await self.handler(request)

    async def echo(self, request: web.Request) -> web.StreamResponse:
        body = self.bodies[-1]
        if request.path == "/v1/chat/completions":
            text = "chat:" + body["messages"][-1]["content"]
            return web.json_response({"choices": [{"message": {"role": "assistant", "content": text}}]})
        return web.json_response({"choices": [{"text": "raw:" + body["prompt"]}]})


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.dispatch)
    app.router.add_post("/v1/completions", fake.dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_chat_path_sends_messages_at_temperature_zero(server: FakeServer) -> None:
    async with aiohttp.ClientSession() as s:
        reply = await complete(s, server.url, "m1", "Hello?", mode="chat", max_tokens=7, timeout_s=5)
    assert reply == "chat:Hello?"
    assert server.paths == ["/v1/chat/completions"]
    body = server.bodies[0]
    assert body["messages"] == [{"role": "user", "content": "Hello?"}]
    assert body["temperature"] == 0
    assert (body["model"], body["max_tokens"]) == ("m1", 7)
    assert "prompt" not in body


@pytest.mark.asyncio
async def test_completions_path_sends_raw_prompt(server: FakeServer) -> None:
    async with aiohttp.ClientSession() as s:
        reply = await complete(
            s, server.url + "/v1/", "m1", "def f():\n", mode="completions", max_tokens=5, timeout_s=5
        )
    assert reply == "raw:def f():\n"
    assert server.paths == ["/v1/completions"]
    body = server.bodies[0]
    assert body["prompt"] == "def f():\n"
    assert "messages" not in body
    assert body["temperature"] == 0


@pytest.mark.asyncio
async def test_http_500_is_bench_error_naming_url_and_status(server: FakeServer) -> None:
    async def boom(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="engine exploded\nstack trace")

    server.handler = boom
    async with aiohttp.ClientSession() as s:
        with pytest.raises(BenchError) as exc:
            await complete(s, server.url, "m", "x", mode="chat", max_tokens=4, timeout_s=5)
    msg = exc.value.message
    assert f"{server.url}/v1/chat/completions" in msg
    assert "500" in msg
    assert "\n" not in msg


@pytest.mark.asyncio
async def test_timeout_is_bench_error(server: FakeServer) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.6)
        return web.json_response({"choices": [{"text": "late"}]})

    server.handler = slow
    async with aiohttp.ClientSession() as s:
        with pytest.raises(BenchError, match="no reply within"):
            await complete(s, server.url, "m", "x", mode="completions", max_tokens=4, timeout_s=0.2)


@pytest.mark.asyncio
async def test_connection_refused_is_bench_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:
        with pytest.raises(BenchError) as exc:
            await complete(s, url, "m", "x", mode="chat", max_tokens=4, timeout_s=5)
    assert url in exc.value.message


@pytest.mark.asyncio
async def test_non_openai_body_is_bench_error(server: FakeServer) -> None:
    async def odd(request: web.Request) -> web.StreamResponse:
        return web.json_response({"result": "?"})

    server.handler = odd
    async with aiohttp.ClientSession() as s:
        with pytest.raises(BenchError, match="unexpected body"):
            await complete(s, server.url, "m", "x", mode="chat", max_tokens=4, timeout_s=5)


@pytest.mark.asyncio
async def test_ask_all_preserves_order_and_bounds_concurrency(server: FakeServer) -> None:
    in_flight = 0
    peak = 0

    async def delayed(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        prompt = server.bodies[-1]["prompt"]
        # Later prompts answer sooner, so completion order differs from prompt order.
        await asyncio.sleep(0.05 * (10 - int(prompt)) / 10)
        in_flight -= 1
        return web.json_response({"choices": [{"text": f"r{prompt}"}]})

    server.handler = delayed
    progress: list[tuple[int, int]] = []
    replies = await ask_all(
        server.url,
        "m",
        [str(i) for i in range(10)],
        "completions",
        4,
        concurrency=3,
        on_done=lambda done, total: progress.append((done, total)),
    )
    assert replies == [f"r{i}" for i in range(10)]
    assert 1 < peak <= 3
    assert progress[-1] == (10, 10)
    assert len(progress) == 10
