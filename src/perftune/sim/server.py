"""`perftune sim-server`: the engine core behind an OpenAI-compatible streaming API, in real time.

One engine task runs steps back to back: it schedules, then sleeps to the step's absolute deadline
(start + modelled duration), then hands each produced token to its stream. Requests pass the modelled
API-server front (a fixed latency plus serialized per-request CPU) before the engine sees them.
Every emitted token's write time is recorded, so the server's own timing is known, not assumed
(GET /sim/requests, /sim/stats). /metrics uses vLLM's metric names; every response says
`owned_by: perftune-sim`, so clients label the numbers simulated.

Footguns: output text is tokens sampled uniformly from the vocabulary (meaningless, like dummy
weights); a request always generates max_tokens (as with ignore_eos), since there is no model to
emit an EOS.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from perftune.errors import ConfigError
from perftune.hardware.ceilings import Gpu
from perftune.models.card import ModelCard
from perftune.sim.calibration import Calibration
from perftune.sim.config import SimConfig
from perftune.sim.core import EngineCore, Frontend, SimRequest
from perftune.sim.predict import sim_version
from perftune.sim.tokens import PromptTokenizer

CHAT_DEFAULT_MAX_TOKENS = 256
COMPLETION_DEFAULT_MAX_TOKENS = 16
SPIN_S = 0.0015  # vLLM's default for /v1/completions


@dataclass(slots=True)
class _Live:
    req: SimRequest
    queue: asyncio.Queue[tuple[int, bool]] = field(default_factory=asyncio.Queue)
    arrival_ns: int = 0
    writes_ns: list[int] = field(default_factory=list)


class _Collector:
    def __init__(self, srv: SimServer) -> None:
        self.srv = srv

    def collect(self) -> Iterator[Metric]:
        core, labels = self.srv.core, {"model_name": self.srv.served, "engine": "0"}
        c = core.counters

        def gauge(name: str, doc: str, v: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=list(labels))
            g.add_metric(list(labels.values()), v)
            return g

        def counter(name: str, doc: str, v: float) -> CounterMetricFamily:
            m = CounterMetricFamily(name, doc, labels=list(labels))
            m.add_metric(list(labels.values()), v)
            return m

        yield gauge(
            "vllm:num_requests_running", "Requests in model execution batches (simulated).", len(core.running)
        )
        yield gauge(
            "vllm:num_requests_waiting", "Requests waiting to be processed (simulated).", len(core.waiting)
        )
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = 100% (simulated).", core.kv_usage)
        yield counter(
            "vllm:prefix_cache_queries", "Prefix-cache queries, in tokens (simulated).", c.prefix_queries
        )
        yield counter("vllm:prefix_cache_hits", "Prefix-cache hits, in tokens (simulated).", c.prefix_hits)
        yield counter("vllm:num_preemptions", "Cumulative preemptions (simulated).", c.preemptions)
        yield counter("vllm:prompt_tokens", "Prefill tokens processed (simulated).", c.prompt_tokens)
        yield counter(
            "vllm:generation_tokens", "Generation tokens processed (simulated).", c.generation_tokens
        )
        yield counter("vllm:request_success", "Successfully finished requests (simulated).", c.finished)


class SimServer:
    def __init__(
        self, card: ModelCard, g: Gpu, cfg: SimConfig, cal: Calibration, model_dir: str | None = None
    ) -> None:
        self.cfg, self.cal = cfg, cal
        self.core = EngineCore(card, g, cfg, cal)
        self.front = Frontend(cal)
        self.tok = PromptTokenizer(model_dir)
        self.served = cfg.served_name or card.name
        self.version = sim_version(cal)
        self.live: dict[int, _Live] = {}
        self.done: deque[list[int]] = deque(maxlen=100_000)
        self.wake = asyncio.Event()
        self.rng = np.random.default_rng(cfg.seed)
        self.vocab = card.vocab_size
        self.ids = itertools.count()
        self.late_sum_ns = 0
        self.late_max_ns = 0
        self.steps = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.origin_ns = time.monotonic_ns()

    # ------------------------------------------------------------------ engine loop

    async def engine_loop(self) -> None:
        core, ns = self.core, time.monotonic_ns
        next_start = ns()
        while True:
            if not core.has_work():
                self.wake.clear()
                await self.wake.wait()
                next_start = ns()
            start = max(ns(), next_start)
            res = core.step()
            if res.scheduled == 0:  # KV full of waiting work that cannot start: wait for a change
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.05)
                continue
            deadline = start + round(res.duration_s * 1e9)
            delay = (deadline - ns()) / 1e9
            if delay > SPIN_S:
                await asyncio.sleep(delay - SPIN_S)
            # Event-loop timers are ~1 ms coarse: close the last gap by yielding (requests still flow).
            while ns() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0)
            now = ns()
            late = now - deadline
            self.late_sum_ns += late
            self.late_max_ns = max(self.late_max_ns, late)
            self.steps += 1
            next_start = deadline
            for r in res.emitted:
                live = self.live.get(r.rid)
                if live is not None:
                    live.queue.put_nowait((int(self.rng.integers(1000, self.vocab)), r.finished))

    # ------------------------------------------------------------------ HTTP

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.get_version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/reset_prefix_cache", self.reset)
        app.router.add_get("/sim/stats", self.stats)
        app.router.add_get("/sim/requests", self.requests)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    async def get_version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": self.version, "simulated": True})

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.served,
                        "object": "model",
                        "owned_by": "perftune-sim",
                        "max_model_len": self.core.max_model_len,
                    }
                ],
            }
        )

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")

    async def reset(self, _: web.Request) -> web.Response:
        ok = self.core.reset_prefix_cache()
        return web.json_response({"reset": ok}, status=200 if ok else 409)

    async def stats(self, _: web.Request) -> web.Response:
        c = self.core.counters
        return web.json_response(
            {
                "simulated": True,
                "version": self.version,
                "steps": self.steps,
                "step_lateness_mean_ms": self.late_sum_ns / self.steps / 1e6 if self.steps else 0.0,
                "step_lateness_max_ms": self.late_max_ns / 1e6,
                "kv_capacity_tokens": self.core.kv_tokens,
                "preemptions": c.preemptions,
                "prefix_cache_queries": c.prefix_queries,
                "prefix_cache_hits": c.prefix_hits,
                "finished": c.finished,
            }
        )

    async def requests(self, _: web.Request) -> web.Response:
        """Finished requests: [arrival_ns, first_token_write_ns, last_write_ns, output_tokens]."""
        return web.Response(body=orjson.dumps(list(self.done)), content_type="application/json")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    @staticmethod
    def _error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
        return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        arrival = time.monotonic_ns()
        try:
            body = orjson.loads(await request.read())
            assert isinstance(body, dict)
        except (orjson.JSONDecodeError, AssertionError):
            return self._error(400, "request body is not a JSON object")
        if body.get("model") != self.served:
            return self._error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        ids = self.tok.prompt_ids(body)
        default = CHAT_DEFAULT_MAX_TOKENS if chat else COMPLETION_DEFAULT_MAX_TOKENS
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or default)
        r = SimRequest(rid=next(self.ids), prompt_len=len(ids), max_tokens=max_tokens, prompt_ids=ids)
        try:
            if max_tokens < 1 or not ids:
                raise ConfigError("empty prompt or max_tokens < 1")
            self.core.validate(r)
        except ConfigError:
            return self._error(
                400,
                f"This model's maximum context length is {self.core.max_model_len} tokens. However, you "
                f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the messages, {max_tokens} in "
                "the completion). Please reduce the length of the messages or completion.",
            )
        # The API server's share: a fixed latency plus serialized per-request CPU.
        now_s = (time.monotonic_ns() - self.origin_ns) / 1e9
        await asyncio.sleep(max(0.0, self.front.admit_at(now_s) - now_s))
        live = _Live(r, arrival_ns=arrival)
        self.live[r.rid] = live
        self.core.add(r)
        self.wake.set()
        try:
            if body.get("stream"):
                return await self._stream(request, live, chat, body)
            return await self._whole(live, chat)
        finally:
            self.live.pop(r.rid, None)
            if not r.finished:
                self.core.abort(r)  # the client went away: free its KV like vLLM's abort
                self.wake.set()

    async def _stream(
        self, request: web.Request, live: _Live, chat: bool, body: dict[str, Any]
    ) -> web.StreamResponse:
        r = live.req
        opts = body.get("stream_options") or {}
        continuous, include_usage = bool(opts.get("continuous_usage_stats")), bool(opts.get("include_usage"))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-sim-{r.rid}"
        obj = "chat.completion.chunk" if chat else "text_completion"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        def usage(n: int) -> dict[str, int]:
            return {"prompt_tokens": r.prompt_len, "total_tokens": r.prompt_len + n, "completion_tokens": n}

        def event(choice: dict[str, Any], n: int | None) -> bytes:
            d: dict[str, Any] = {
                "id": rid,
                "object": obj,
                "created": 0,
                "model": self.served,
                "choices": [choice],
            }
            if continuous and n is not None:
                d["usage"] = usage(n)
            return b"data: " + orjson.dumps(d) + b"\n\n"

        if chat:  # like vLLM: a role-only opening chunk
            await resp.write(
                event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}, 0)
            )
        n = 0
        while True:
            tid, final = await live.queue.get()
            n += 1
            text = self.tok.piece(tid)
            reason = "length" if final else None
            choice: dict[str, Any] = (
                {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": reason}
                if chat
                else {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": reason,
                    "stop_reason": None,
                }
            )
            await resp.write(event(choice, n))
            live.writes_ns.append(time.monotonic_ns())
            if final:
                break
        if include_usage:
            tail = {
                "id": rid,
                "object": obj,
                "created": 0,
                "model": self.served,
                "choices": [],
                "usage": usage(n),
            }
            await resp.write(b"data: " + orjson.dumps(tail) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self.done.append([live.arrival_ns, live.writes_ns[0], live.writes_ns[-1], n])
        return resp

    async def _whole(self, live: _Live, chat: bool) -> web.Response:
        r = live.req
        parts = []
        while True:
            tid, final = await live.queue.get()
            parts.append(self.tok.piece(tid))
            if final:
                break
        text = "".join(parts)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "length"}
        )
        return web.json_response(
            {
                "id": f"cmpl-sim-{r.rid}",
                "object": "chat.completion" if chat else "text_completion",
                "created": 0,
                "model": self.served,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": r.prompt_len,
                    "completion_tokens": r.output,
                    "total_tokens": r.prompt_len + r.output,
                },
            }
        )


async def serve(srv: SimServer, host: str, port: int, ready: asyncio.Future[int] | None = None) -> None:
    runner = web.AppRunner(srv.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    bound = int(runner.addresses[0][1])
    if ready is not None:
        ready.set_result(bound)
    engine = asyncio.get_running_loop().create_task(srv.engine_loop())
    try:
        await asyncio.Event().wait()
    finally:
        engine.cancel()
        await runner.cleanup()
