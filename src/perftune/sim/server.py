"""`perftune sim-server`: the engine core behind an OpenAI-compatible streaming API, in real time.

One engine task runs steps back to back on a virtual schedule: while the engine is busy, a step is
scheduled to start at the previous step's scheduled end (not at the moment the host got round to it),
so a late wake-up is caught up instead of being added to every later step; an idle engine re-anchors
at the wall time work arrives. The task sleeps to each step's scheduled end, then hands each produced
token to its stream. Requests pass the modelled API-server front (`Frontend`: a fixed latency, one CPU
shared by admissions and streamed tokens, a serial hand-off) before the engine sees them.
Every emitted token's write time is recorded, so the server's own timing is known, not assumed
(GET /sim/requests, /sim/stats). /metrics uses vLLM's metric names; every response says
`owned_by: perftune-sim`, so clients label the numbers simulated.

A host that cannot keep up (a busy CPU) falls behind the schedule: the lag of every token written
(write time minus its step's scheduled end) and the steps late by more than LATE_STEP_MIN_MS or
LATE_STEP_FRAC of the step are kept since the last POST /sim/stats/reset or successful POST
/reset_prefix_cache (sent by the bench client before each trial), and /sim/stats says
`faithful: false` when the p99 lag is over FAITHFUL_P99_LAG_MS or more than FAITHFUL_LATE_STEP_FRAC
of the steps were late: the timing served was then the host's, not the model's.

Test-engine faults (`--fault KIND`, SimConfig.fault): after the first `after` valid generate requests
(counted as the mock's --wedge-after counts them), every request meets the fault: `wedge` opens the
stream (a chat stream gets its role chunk) and never sends a token, `http500` answers 500 with an
OpenAI error body, `drop` closes the connection mid-stream after `drop_tokens` tokens (no [DONE], no
terminating chunk: what a client sees when an engine dies), `stall` holds the first byte for
`stall_s` seconds and then serves the request. A wedged or stalled request never reaches the engine
core, so it holds no KV; a dropped one is aborted like a client that went away. A fault with `when`
conditions applies only when the served config matches them (a lever that avoids it). /sim/stats
says what was injected.

Footguns: output text is tokens sampled uniformly from the vocabulary (meaningless, like dummy
weights); a request always generates max_tokens (as with ignore_eos), since there is no model to
emit an EOS.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.samples import Sample

from perftune.errors import ConfigError
from perftune.hardware.ceilings import Gpu
from perftune.mock.server import (
    MAX_BODY_BYTES,
    GenerateRequest,
    RequestError,
    StreamOptions,
    error_body,
    parse_request,
)
from perftune.models.card import ModelCard
from perftune.sim.calibration import Calibration
from perftune.sim.config import SimConfig
from perftune.sim.core import EngineCore, Frontend, SimRequest, StepResult
from perftune.sim.predict import sim_version
from perftune.sim.tokens import PromptTokenizer

CHAT_DEFAULT_MAX_TOKENS = 256
COMPLETION_DEFAULT_MAX_TOKENS = 16  # vLLM's default for /v1/completions
SPIN_S = 0.0015  # the last stretch to a step's end is spun (yielding), not slept: timers are ~1 ms coarse
# A step is late when it ends behind its scheduled end by more than max(2 ms, 5% of its duration):
# event-loop timers are ~1 ms coarse, so less than that is the loop's grain, not a slow host.
LATE_STEP_MIN_MS = 2.0
LATE_STEP_FRAC = 0.05
# The window is faithful when the p99 token lag is at most 5 ms (the bench client's own bound on its
# send-schedule lag) and at most 1% of the steps were late.
FAITHFUL_P99_LAG_MS = 5.0
FAITHFUL_LATE_STEP_FRAC = 0.01
FAULT_POLL_S = 0.1  # a wedged or stalled request checks this often whether its client went away
LAG_BIN0_NS, LAG_BIN_GROWTH = 10_000, 1.05  # lag bins: [0, 10 us], then 5% wider each, to ~100 s
_LAG_EDGES_NS = [round(LAG_BIN0_NS * LAG_BIN_GROWTH**k) for k in range(330)]


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own 4xx (no route, wrong method) in the OpenAI error shape, as the API's own are."""
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response(
            error_body(e.status, f"{e.reason}: {request.method} {request.path}"), status=e.status
        )


class VirtualClock:
    """The engine's virtual schedule in wall-clock ns (`now` is injectable for tests)."""

    def __init__(self, now: Callable[[], int] = time.monotonic_ns) -> None:
        self.now = now
        self.next_ns: int | None = None  # the scheduled start of the next step; None while idle

    def idle(self) -> None:
        """Nothing runs: the next step starts whenever the host starts it."""
        self.next_ns = None

    def start(self) -> int:
        """The next step's scheduled start: the previous step's scheduled end while busy, else now."""
        return self.now() if self.next_ns is None else self.next_ns

    def end(self, start_ns: int, duration_ns: int) -> int:
        """Book a step; returns its scheduled end, which is the next step's scheduled start."""
        self.next_ns = start_ns + duration_ns
        return self.next_ns


class ScheduleLag:
    """How far behind its virtual schedule the server ran, since the last reset.

    Token lags are counted in log-spaced bins (LAG_BIN_GROWTH wide, from LAG_BIN0_NS): O(1) per token
    and per query, so reading the stats never stalls the event loop whose timing it judges. A quantile
    is its bin's upper edge (at most one bin width high), capped at the exact maximum."""

    def __init__(self, now: Callable[[], int] = time.monotonic_ns) -> None:
        self.now = now
        self.reset()

    def reset(self) -> None:
        self.since_ns = self.now()
        self.bins = [0] * (len(_LAG_EDGES_NS) + 1)
        self.tokens = self.lag_sum_ns = self.lag_max_ns = 0
        self.steps = self.late_steps = 0

    def step(self, late_ns: int, duration_ns: int) -> None:
        """A step ended `late_ns` after its scheduled end."""
        self.steps += 1
        if late_ns > max(LATE_STEP_MIN_MS * 1e6, LATE_STEP_FRAC * duration_ns):
            self.late_steps += 1

    def token(self, lag_ns: int) -> None:
        """A token was written `lag_ns` after its step's scheduled end."""
        self.tokens += 1
        self.bins[bisect.bisect_left(_LAG_EDGES_NS, lag_ns)] += 1
        self.lag_sum_ns += lag_ns
        self.lag_max_ns = max(self.lag_max_ns, lag_ns)

    def quantile_ns(self, q: float) -> int:
        if not self.tokens:
            return 0
        rank, seen = q * self.tokens, 0
        for i, n in enumerate(self.bins):
            seen += n
            if seen >= rank and n:
                edge = _LAG_EDGES_NS[i] if i < len(_LAG_EDGES_NS) else self.lag_max_ns
                return min(edge, self.lag_max_ns)
        return self.lag_max_ns

    def to_json(self) -> dict[str, Any]:
        lag = {"p50": self.quantile_ns(0.5) / 1e6, "p99": self.quantile_ns(0.99) / 1e6}
        lag["max"] = self.lag_max_ns / 1e6
        faithful = (
            lag["p99"] <= FAITHFUL_P99_LAG_MS and self.late_steps <= FAITHFUL_LATE_STEP_FRAC * self.steps
        )
        return {
            "schedule_lag_ms": lag,
            "late_steps": self.late_steps,
            "window_steps": self.steps,
            "window_tokens": self.tokens,
            "window_s": (self.now() - self.since_ns) / 1e9,
            "faithful": faithful,
        }


@dataclass(slots=True)
class _Live:
    req: SimRequest
    # (token id, final, the scheduled end of the step that produced it in monotonic ns)
    queue: asyncio.Queue[tuple[int, bool, int]] = field(default_factory=asyncio.Queue)
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
        # perftune's own: how far behind its virtual schedule the server ran, since POST /sim/stats/reset
        # (the window's count and sum restart there, which Prometheus reads as a counter reset).
        lag = self.srv.lag
        window = lag.to_json()
        s = SummaryMetricFamily(
            "perftune_sim_schedule_lag_seconds",
            "Token write time minus its step's scheduled end, since the last /sim/stats/reset.",
            labels=list(labels),
        )
        s.add_metric(list(labels.values()), lag.tokens, lag.lag_sum_ns / 1e9)
        for q, key in (("0.5", "p50"), ("0.99", "p99"), ("1.0", "max")):
            value = window["schedule_lag_ms"][key] / 1e3
            s.samples.append(Sample(s.name, {**labels, "quantile": q}, value, None, None))
        yield s
        yield gauge(
            "perftune_sim_late_steps",
            "Steps late by more than max(2 ms, 5% of the step), in the window.",
            lag.late_steps,
        )
        yield gauge(
            "perftune_sim_faithful", "1 if the window kept to the virtual schedule.", window["faithful"]
        )


async def _until(deadline: int) -> None:
    """Sleep to a monotonic-ns deadline. Event-loop timers are ~1 ms coarse: the last gap is closed by
    yielding (requests still flow); a deadline already past still yields once, so streams are written."""
    delay = (deadline - time.monotonic_ns()) / 1e9
    if delay > SPIN_S:
        await asyncio.sleep(delay - SPIN_S)
    await asyncio.sleep(0)
    while time.monotonic_ns() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0)


class SimServer:
    def __init__(
        self, card: ModelCard, g: Gpu, cfg: SimConfig, cal: Calibration, model_dir: str | None = None
    ) -> None:
        self.cfg, self.cal = cfg, cal
        self.core = EngineCore(card, g, cfg, cal)
        self.front = Frontend(cal)
        self.admitted: set[int] = set()  # rids the front end let through whose handlers have not run yet
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
        self.clock = VirtualClock()
        self.lag = ScheduleLag()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.origin_ns = time.monotonic_ns()
        self.fault = cfg.fault if cfg.fault_applies() else None
        self.generate_requests = 0  # valid generate requests, the fault's `after` counts these
        self.faults_injected = 0

    # ------------------------------------------------------------------ engine loop

    async def engine_loop(self) -> None:
        core, clock, ns = self.core, self.clock, time.monotonic_ns
        held: StepResult | None = None  # a step whose tokens wait for the next one's launch
        while True:
            if not core.has_work():
                clock.idle()
                self.wake.clear()
                await self.wake.wait()
            start = clock.start()  # taken before step(): the step's own CPU time is inside its duration
            res = core.step()
            if held is not None:  # with async scheduling: handed out once this step is launched
                at = start + round(res.held_s * 1e9)  # start: the held step's scheduled end
                await _until(at)
                self._hand_out(at, held)
                held = None
            if res.scheduled == 0:  # KV full of waiting work that cannot start: wait for a change
                clock.idle()
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.05)
                continue
            duration = round(res.duration_s * 1e9)
            deadline = clock.end(start, duration)
            await _until(deadline)
            late = ns() - deadline
            self.late_sum_ns += late
            self.late_max_ns = max(self.late_max_ns, late)
            self.steps += 1
            self.lag.step(late, duration)
            if core.has_work():
                held = res
            else:
                self._hand_out(deadline, res)

    def _hand_out(self, at: int, res: StepResult) -> None:
        """A step's tokens leave the engine at `at` (monotonic ns, their scheduled time) to their streams."""
        self.front.stream(self._now_s(at), len(res.emitted))
        final = {id(r) for r in res.finished}  # as of that step: a held step's request may finish later
        for r in res.emitted:
            live = self.live.get(r.rid)
            if live is not None:
                live.queue.put_nowait((int(self.rng.integers(1000, self.vocab)), id(r) in final, at))

    # ------------------------------------------------------------------ HTTP

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors])
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.get_version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/reset_prefix_cache", self.reset)
        app.router.add_get("/sim/stats", self.stats)
        app.router.add_post("/sim/stats/reset", self.reset_stats)
        app.router.add_get("/sim/requests", self.requests)
        app.router.add_get("/sim/profile", self.profile)
        app.router.add_post("/sim/profile/reset", self.reset_profile)
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
        if ok:  # the bench client resets the cache before each trial: the lag window becomes the trial
            self.lag.reset()
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
                **self.lag.to_json(),
                "fault": self._fault_json(),
            }
        )

    def _fault_json(self) -> dict[str, Any] | None:
        f = self.cfg.fault
        if f is None:
            return None
        return {
            **f.model_dump(),
            "active": self.fault is not None,  # False: the served config does not match `when`
            "generate_requests": self.generate_requests,
            "injected": self.faults_injected,
        }

    async def reset_stats(self, _: web.Request) -> web.Response:
        """Start a new schedule-lag window (e.g. before a trial)."""
        self.lag.reset()
        return web.json_response({"reset": True})

    async def profile(self, _: web.Request) -> web.Response:
        """The simulated engine's step breakdown since the last POST /sim/profile/reset: where the
        modelled step time went (GEMM, attention, communication, host), batch sizes, KV occupancy,
        modelled bytes per step. SIMULATED: phase 2's capture of the simulator, never a measurement."""
        return web.json_response({**self.core.breakdown.to_json(), "version": self.version})

    async def reset_profile(self, _: web.Request) -> web.Response:
        self.core.reset_breakdown()
        return web.json_response({"reset": True})

    async def requests(self, _: web.Request) -> web.Response:
        """Finished requests: [arrival_ns, first_token_write_ns, last_write_ns, output_tokens]."""
        return web.Response(body=orjson.dumps(list(self.done)), content_type="application/json")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    @staticmethod
    def _error(e: RequestError) -> web.Response:
        return web.json_response(e.body(), status=e.status)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        arrival = time.monotonic_ns()
        try:
            # Refuse a stated oversize body before reading it: aiohttp would otherwise wait for the
            # bytes (of a Content-Length it was never going to get) before its own 413.
            if (request.content_length or 0) > MAX_BODY_BYTES:
                raise RequestError(413, f"request body over the limit of {MAX_BODY_BYTES} bytes (8 MiB)")
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:  # a chunked body past the limit
                raise RequestError(
                    413, f"request body over the limit of {MAX_BODY_BYTES} bytes (8 MiB)"
                ) from None
            body, req = parse_request(raw, chat, self.vocab)
            if req.model != self.served:
                raise RequestError(404, f"The model `{req.model}` does not exist.", "model")
            ids = self.tok.prompt_ids(body)
            max_tokens = req.requested_tokens or (
                CHAT_DEFAULT_MAX_TOKENS if chat else COMPLETION_DEFAULT_MAX_TOKENS
            )
            if not ids:
                raise RequestError(400, "prompt has no tokens", "prompt")
            r = SimRequest(rid=next(self.ids), prompt_len=len(ids), max_tokens=max_tokens, prompt_ids=ids)
            try:
                self.core.validate(r)
            except ConfigError:
                raise RequestError(
                    400,
                    f"This model's maximum context length is {self.core.max_model_len} tokens. However, "
                    f"you requested {len(ids) + max_tokens} tokens ({len(ids)} in the messages, "
                    f"{max_tokens} in the completion). Please reduce the length of the messages or "
                    "completion.",
                ) from None
        except RequestError as e:
            return self._error(e)
        self.generate_requests += 1
        fault = self.fault if self.fault is not None and self.generate_requests > self.fault.after else None
        drop: int | None = None
        if fault is not None:
            self.faults_injected += 1
            if fault.kind == "http500":
                return self._error(RequestError(500, "simulated engine fault (--fault http500)"))
            if fault.kind == "wedge":
                return await self._wedge(request, chat, req, r.rid)
            if fault.kind == "stall" and not await _hold(request, fault.stall_s):
                return _gone_response()  # the client left during the stall: nothing reaches the engine
            if fault.kind == "drop":
                drop = fault.drop_tokens
        await self._admission(r.rid)
        live = _Live(r, arrival_ns=arrival)
        self.live[r.rid] = live
        self.core.add(r)
        self.wake.set()
        try:
            if req.stream:
                return await self._stream(request, live, chat, req, drop)
            if drop is not None:  # no stream to break off: the connection closes before the answer
                _drop(request)
                return _gone_response()
            return await self._whole(live, chat)
        finally:
            self.live.pop(r.rid, None)
            if not r.finished:
                self.core.abort(r)  # the client went away: free its KV like vLLM's abort
                self.wake.set()

    def _now_s(self, at_ns: int | None = None) -> float:
        return ((time.monotonic_ns() if at_ns is None else at_ns) - self.origin_ns) / 1e9

    async def _admission(self, rid: int) -> None:
        """The API server's share (`Frontend`): wait until it lets request `rid` through to the engine."""
        self.front.arrive(self._now_s(), rid)
        try:
            while rid not in self.admitted:
                now = self._now_s()
                self.admitted.update(self.front.admit(now))
                if rid not in self.admitted:
                    at = self.front.next_ready()
                    await asyncio.sleep(max(0.0, (now if at is None else at) - now))
        finally:  # let through, or the client left while it waited: either way it no longer waits
            if rid not in self.admitted:
                self.front.cancel(rid, self._now_s())
            self.admitted.discard(rid)

    async def _wedge(
        self, request: web.Request, chat: bool, req: GenerateRequest, rid: int
    ) -> web.StreamResponse:
        """--fault wedge: headers (and a chat stream's role chunk), then silence until the client leaves."""
        if not req.stream:
            await _hold(request, float("inf"))
            return _gone_response()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if chat:  # like a real engine's stream: the role chunk goes out before the engine hangs
            chunk = {
                "id": f"chatcmpl-sim-{rid}",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.served,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                ],
            }
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await _hold(request, float("inf"))
        return resp  # its client is gone: aiohttp's write_eof fails quietly (ConnectionError)

    async def _stream(
        self, request: web.Request, live: _Live, chat: bool, req: GenerateRequest, drop: int | None = None
    ) -> web.StreamResponse:
        r = live.req
        opts = req.stream_options or StreamOptions()
        continuous, include_usage = bool(opts.continuous_usage_stats), bool(opts.include_usage)
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
            if drop is not None and n >= drop:
                _drop(request)
                return resp  # aiohttp's write_eof then meets the closed transport, quietly
            tid, final, sched_ns = await live.queue.get()
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
            t = time.monotonic_ns()
            live.writes_ns.append(t)
            self.lag.token(t - sched_ns)
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
            tid, final, sched_ns = await live.queue.get()
            parts.append(self.tok.piece(tid))
            if final:
                self.lag.token(time.monotonic_ns() - sched_ns)  # one response: its last token's lag
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


def _gone_response() -> web.Response:
    """For a request whose client is gone (or was dropped on purpose): aiohttp's attempt to send it
    meets the closed transport and ends in a ConnectionError that aiohttp handles quietly."""
    return web.Response(status=499, text="client gone")


def _gone(request: web.Request) -> bool:
    t = request.transport
    return t is None or t.is_closing()


async def _hold(request: web.Request, seconds: float) -> bool:
    """Sleep up to `seconds` (inf: forever) while the client stays; False when it went away.
    aiohttp does not cancel a handler whose client left, so a held request polls for it."""
    end = time.monotonic() + seconds
    while not _gone(request):
        left = end - time.monotonic()
        if left <= 0:
            return True
        await asyncio.sleep(min(FAULT_POLL_S, left))
    return False


def _drop(request: web.Request) -> None:
    """Close the connection under a response: FIN after what was written, no terminating chunk."""
    if request.transport is not None:
        request.transport.close()


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
