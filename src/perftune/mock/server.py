"""A ground-truth OpenAI-compatible streaming server with exact timing.

The first chunk carries one token and leaves `ttft_ms` after the request arrived; after it, tokens
come `tokens_per_chunk` to a chunk, each chunk `tokens_per_chunk * itl_ms` after the one before, so
the per-token interval is exactly `itl_ms`. Every deadline is absolute (arrival + offset), so late
wake-ups never accumulate. Event-loop timers are ~1 ms coarse, so one scheduler sleeps to just before
the earliest deadline and then yield-spins to it; emission lateness (actual - deadline) is measured
and served at GET /mock/stats, so the mock's own error is known, not assumed.

It is a deliberately small HTTP/1.1 server on asyncio Protocols (keep-alive, Content-Length request
bodies, chunked responses): at 100k+ chunks/s a framework's per-write overhead would make the mock,
not the client under test, the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import itertools
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

SPIN_S = 0.0015
MAX_BURST_NS = 150_000
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class MockConfig:
    ttft_ms: float = 20.0
    itl_ms: float = 5.0
    tokens_per_chunk: int = 1
    model: str = "mock"
    max_model_len: int = 131072
    default_max_tokens: int = 16
    wedge_after: int | None = None  # test engine: requests past this count get headers, then nothing


@dataclass
class _Stats:
    chunks: int = 0
    late_sum_ns: int = 0
    late_max_ns: int = 0
    requests: int = 0
    cache_resets: int = 0

    def to_json(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "chunks": self.chunks,
            "lateness_mean_ms": self.late_sum_ns / self.chunks / 1e6 if self.chunks else 0.0,
            "lateness_max_ms": self.late_max_ns / 1e6,
            "cache_resets": self.cache_resets,
        }


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Token-id prompts count exactly; text is counted as words and punctuation (a mock's tokenizer)."""
    if "messages" in body:
        return sum(len(_WORD.findall(str(m.get("content") or ""))) for m in body["messages"])
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int)):
        return len(prompt)
    if isinstance(prompt, list):
        prompt = "".join(map(str, prompt))
    return len(_WORD.findall(str(prompt)))


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass(slots=True)
class _Stream:
    deadline_ns: int
    seq: int
    proto: _HttpProtocol
    chat: bool
    rid: bytes
    model: bytes
    prompt_tokens: int
    total: int
    continuous: bool
    include_usage: bool
    sent: int = 0

    def usage(self) -> bytes:
        return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
            self.prompt_tokens,
            self.prompt_tokens + self.sent,
            self.sent,
        )

    def event(self, k: int, final: bool) -> bytes:
        text = b" tok" * k
        reason = b'"length"' if final else b"null"
        usage = b',"usage":' + self.usage() if self.continuous else b""
        if self.chat:
            return (
                b'data: {"id":"%s","object":"chat.completion.chunk","created":0,"model":"%s","choices":'
                b'[{"index":0,"delta":{"content":"%s"},"logprobs":null,"finish_reason":%s}]%s}\n\n'
                % (self.rid, self.model, text, reason, usage)
            )
        return (
            b'data: {"id":"%s","object":"text_completion","created":0,"model":"%s","choices":'
            b'[{"index":0,"text":"%s","logprobs":null,"finish_reason":%s,"stop_reason":null}]%s}\n\n'
            % (self.rid, self.model, text, reason, usage)
        )

    def tail(self) -> bytes:
        out = b""
        if self.include_usage:
            obj = b"chat.completion.chunk" if self.chat else b"text_completion"
            out += b'data: {"id":"%s","object":"%s","created":0,"model":"%s","choices":[],"usage":%s}\n\n' % (
                self.rid,
                obj,
                self.model,
                self.usage(),
            )
        return out + b"data: [DONE]\n\n"


class MockServer:
    """Owns the config, the deadline heap and the scheduler task."""

    def __init__(self, cfg: MockConfig) -> None:
        self.cfg = cfg
        # (deadline_ns, seq, stream): tuples compare in C; a dataclass __lt__ cost 17% of the mock's CPU.
        self.heap: list[tuple[int, int, _Stream]] = []
        self.wake = asyncio.Event()
        self.stats = _Stats()
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self.ttft_ns = round(cfg.ttft_ms * 1e6)
        self.itl_ns = round(cfg.itl_ms * 1e6)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._scheduler())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    def add(self, s: _Stream) -> None:
        heapq.heappush(self.heap, (s.deadline_ns, s.seq, s))
        self.wake.set()

    async def _scheduler(self) -> None:
        heap, ns = self.heap, time.monotonic_ns
        while True:
            if not heap:
                self.wake.clear()
                await self.wake.wait()
                continue
            wait = (heap[0][0] - ns()) / 1e9
            if wait > SPIN_S:
                self.wake.clear()
                # Sleep until just before the earliest deadline, or until an earlier stream arrives.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), wait - SPIN_S)
                continue
            now = ns()
            if heap[0][0] > now:
                await asyncio.sleep(0)  # yield-spin: lets new requests in while we close on the deadline
                continue
            # Emit everything due, but yield every MAX_BURST_NS: a long emission burst would delay the
            # arrival stamps of requests waiting in the socket buffers (their TTFT clock starts there).
            burst_end = now + MAX_BURST_NS
            while heap and heap[0][0] <= now < burst_end:
                s = heapq.heappop(heap)[2]
                self._emit(s, now)
                now = ns()
            if heap and heap[0][0] <= now:
                await asyncio.sleep(0)

    def _emit(self, s: _Stream, now: int) -> None:
        late = now - s.deadline_ns
        st = self.stats
        st.chunks += 1
        st.late_sum_ns += late
        if late > st.late_max_ns:
            st.late_max_ns = late
        if s.proto.closed:
            return
        k = 1 if s.sent == 0 else min(self.cfg.tokens_per_chunk, s.total - s.sent)
        s.sent += k
        final = s.sent >= s.total
        data = s.event(k, final)
        if final:
            s.proto.write_raw(_chunk(data + s.tail()) + b"0\r\n\r\n")
            s.proto.response_done()
            return
        s.proto.write_raw(_chunk(data))
        nxt = min(self.cfg.tokens_per_chunk, s.total - s.sent)
        s.deadline_ns += nxt * self.itl_ns
        heapq.heappush(self.heap, (s.deadline_ns, s.seq, s))


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.buf = b""
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.closed = False
        self.busy = False  # a streaming response is in progress; pipelined requests wait in buf
        self.t_arrival = 0  # when the first byte of the request at the head of buf arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def write_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def response_done(self) -> None:
        self.busy = False
        if self.buf:
            self.t_arrival = time.monotonic_ns()  # a pipelined request starts being served now
            self._parse()

    def data_received(self, data: bytes) -> None:
        # Stamp arrival now and parse later in this loop turn: when a burst of requests lands at once,
        # parsing one inline would delay the next one's arrival stamp and so inflate its TTFT.
        if not self.buf:
            self.t_arrival = time.monotonic_ns()
        self.buf += data
        if not self.busy:
            asyncio.get_running_loop().call_soon(self._parse)

    def _parse(self) -> None:
        while not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, path, _ = lines[0].split(" ", 2)
            except ValueError:
                self._respond(400, {"error": {"message": "bad request line", "code": 400}}, close=True)
                return
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            t_arrival = self.t_arrival
            self.t_arrival = time.monotonic_ns()
            self._dispatch(method, path.split("?", 1)[0], body, t_arrival)

    def _respond(self, status: int, obj: Any, close: bool = False) -> None:
        payload = orjson.dumps(obj)
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
        self.write_raw(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, reason.encode(), len(payload), b"Connection: close\r\n" if close else b"", payload)
        )
        if close and self.transport is not None:
            self.transport.close()

    def _dispatch(self, method: str, path: str, body: bytes, t_arrival: int) -> None:
        srv = self.server
        cfg = srv.cfg
        if method == "GET" and path == "/health":
            self._respond(200, {})
        elif method == "GET" and path == "/v1/models":
            self._respond(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": cfg.model,
                            "object": "model",
                            "owned_by": "perftune-mock",
                            "max_model_len": cfg.max_model_len,
                        }
                    ],
                },
            )
        elif method == "POST" and path == "/reset_prefix_cache":  # as vLLM (dev mode): the mock has no cache
            srv.stats.cache_resets += 1
            self._respond(200, {})
        elif method == "GET" and path == "/mock/stats":
            self._respond(200, srv.stats.to_json())
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            self._generate(path.endswith("chat/completions"), body, t_arrival)
        else:
            self._respond(
                404, {"error": {"message": f"no route {method} {path}", "type": "NotFoundError", "code": 404}}
            )

    def _generate(self, chat: bool, raw: bytes, t_arrival: int) -> None:
        srv, cfg = self.server, self.server.cfg
        try:
            body = orjson.loads(raw)
            assert isinstance(body, dict)
        except (orjson.JSONDecodeError, AssertionError):
            self._respond(
                400,
                {
                    "error": {
                        "message": "request body is not a JSON object",
                        "type": "BadRequestError",
                        "code": 400,
                    }
                },
            )
            return
        if body.get("model") != cfg.model:
            self._respond(
                404,
                {
                    "error": {
                        "message": f"The model `{body.get('model')}` does not exist.",
                        "type": "NotFoundError",
                        "param": "model",
                        "code": 404,
                    }
                },
            )
            return
        prompt_tokens = count_prompt_tokens(body)
        total = int(body.get("max_tokens") or body.get("max_completion_tokens") or cfg.default_max_tokens)
        if total < 1 or prompt_tokens + total > cfg.max_model_len:
            self._respond(
                400,
                {
                    "error": {
                        "message": f"This model's maximum context length is {cfg.max_model_len} tokens. "
                        f"However, you requested {prompt_tokens + total} tokens ({prompt_tokens} in the "
                        f"messages, {total} in the completion). Please reduce the length of the messages "
                        "or completion.",
                        "type": "BadRequestError",
                        "param": None,
                        "code": 400,
                    }
                },
            )
            return
        srv.stats.requests += 1
        rid = b"cmpl-mock-%d" % next(srv._seq)
        opts = body.get("stream_options") or {}
        if not body.get("stream"):
            self._nonstream(chat, rid, prompt_tokens, total, t_arrival)
            return
        s = _Stream(
            deadline_ns=t_arrival + srv.ttft_ns,
            seq=next(srv._seq),
            proto=self,
            chat=chat,
            rid=rid,
            model=cfg.model.encode(),
            prompt_tokens=prompt_tokens,
            total=total,
            continuous=bool(opts.get("continuous_usage_stats")),
            include_usage=bool(opts.get("include_usage")),
        )
        self.busy = True
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        if chat:  # like vLLM: a role-only opening chunk with no content; it must not start TTFT
            usage = b',"usage":' + s.usage() if s.continuous else b""
            head += _chunk(
                b'data: {"id":"%s","object":"chat.completion.chunk","created":0,"model":"%s",'
                b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                b'"finish_reason":null}]%s}\n\n' % (rid, s.model, usage)
            )
        self.write_raw(head)
        if cfg.wedge_after is not None and srv.stats.requests > cfg.wedge_after:
            return  # wedged: the stream stays open and silent, as a hung engine's would
        srv.add(s)

    def _nonstream(self, chat: bool, rid: bytes, prompt_tokens: int, total: int, t_arrival: int) -> None:
        srv = self.server
        delay_ns = t_arrival + srv.ttft_ns + (total - 1) * srv.itl_ns - time.monotonic_ns()
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": total,
            "total_tokens": prompt_tokens + total,
        }
        text = " tok" * total
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "length"}
        )
        obj = {
            "id": rid.decode(),
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": srv.cfg.model,
            "choices": [choice],
            "usage": usage,
        }
        self.busy = True

        def done() -> None:
            self._respond(200, obj)
            self.response_done()

        asyncio.get_running_loop().call_later(max(0.0, delay_ns / 1e9), done)


async def serve(cfg: MockConfig, host: str, port: int, ready: asyncio.Future[int] | None = None) -> None:
    """Serve until cancelled. `ready` (if given) receives the bound port."""
    srv = MockServer(cfg)
    srv.start()
    # Collector pauses of several ms would show up as chunk lateness; the mock makes few cycles.
    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 50, 1000)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _HttpProtocol(srv), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready.set_result(bound)
    try:
        async with server:
            await server.serve_forever()
    finally:
        await srv.stop()
