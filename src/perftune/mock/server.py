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

Malformed input is answered at once, never by silence: a bad body gets a 400 with an OpenAI-style
error (the request schema below is shared with the simulator), a framing error (bad or oversized
Content-Length, a head over MAX_HEAD_BYTES, a chunked request body) gets its 4xx and a closed
connection, since the bytes after it cannot be parsed.
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
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

SPIN_S = 0.0015
MAX_BURST_NS = 150_000
# A 1M-token prompt as JSON token ids is ~7 MB; anything larger is refused with 413 before it is read.
MAX_BODY_BYTES = 8 * 2**20
MAX_HEAD_BYTES = 64 * 2**10  # request line + headers; more without a blank line is refused (431)
LINGER_S = 2.0  # after refusing a request, read and drop what the client still sends for this long
# The mock has no vocabulary: prompt token ids must lie below this bound, above every catalog model's
# vocabulary (Gemma 3: 262,208), so any bench workload passes and absurd ids do not.
MOCK_VOCAB_SIZE = 2**20
_WORD = re.compile(r"\w+|[^\w\s]")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


# ---------------------------------------------------------------------------------- request schema
# Shared by the mock and the simulator. Strict: JSON types as sent ("5" is not an int, 1 is not a
# bool), as OpenAI's API checks them; extra fields pass, since OpenAI clients send many.


class RequestError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param)


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    # OpenAI's shape; `code` is the HTTP status, as vLLM sends it.
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ChatMessage(_Strict):
    role: str
    content: str | list[dict[str, Any]] | None = None  # text, or OpenAI content parts


class StreamOptions(_Strict):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None  # vLLM's extension: usage on every chunk


class GenerateRequest(_Strict):
    """The fields of /v1/completions and /v1/chat/completions that the servers act on."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    min_tokens: int = Field(0, ge=0)  # vLLM's extension, with ignore_eos: fixes the output length
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None
    n: int | None = Field(1, ge=1, le=1)  # one choice per request: the servers stream one sequence

    @field_validator("min_tokens")
    @classmethod
    def _min_le_max(cls, v: int, info: ValidationInfo) -> int:
        cap = info.data.get("max_tokens") or info.data.get("max_completion_tokens")
        if cap is not None and v > cap:
            raise ValueError(f"min_tokens ({v}) must be <= max_tokens ({cap})")
        return v

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens or self.max_completion_tokens


_NonEmpty = Annotated[str, Field(min_length=1)]
_Prompt = _NonEmpty | Annotated[list[int], Field(min_length=1)] | Annotated[list[str], Field(min_length=1)]


class CompletionRequest(GenerateRequest):
    prompt: _Prompt

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _prompt(cls, v: Any, handler: Any, info: ValidationInfo) -> Any:
        try:
            out = handler(v)
        except ValidationError:  # one clear message instead of one per union member
            raise ValueError("must be a non-empty string, list of token ids or list of strings") from None
        vocab = (info.context or {}).get("vocab_size")
        if vocab and isinstance(out, list) and isinstance(out[0], int):
            bad = min(out) if min(out) < 0 else max(out)
            if not 0 <= bad < vocab:
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab})")
        return out


class ChatRequest(GenerateRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


def parse_request(raw: bytes, chat: bool, vocab_size: int) -> tuple[dict[str, Any], GenerateRequest]:
    """The JSON body (as sent) and its validated fields; RequestError (400) when malformed."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise RequestError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object")
    model = ChatRequest if chat else CompletionRequest
    try:
        req = model.model_validate(body, strict=True, context={"vocab_size": vocab_size})
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (and {e.error_count() - 1} more errors)" if e.error_count() > 1 else ""
        raise RequestError(400, f"{loc}: {msg}{more}", str(err["loc"][0]) if err["loc"] else None) from None
    return body, req


def content_length(header_lines: list[str]) -> int:
    """The request body's length from its headers; RequestError for what cannot be framed."""
    values = set()
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "transfer-encoding":
            raise RequestError(411, "chunked request bodies are not supported: send Content-Length")
        if name == "content-length":
            values.add(value.strip())
    if not values:
        return 0
    if len(values) > 1:  # conflicting lengths: the classic request-smuggling ambiguity
        raise RequestError(400, "conflicting Content-Length headers")
    value = values.pop()
    if not _CONTENT_LENGTH.fullmatch(value):
        raise RequestError(400, f"bad Content-Length {value[:40]!r}")
    n = int(value)
    if n > MAX_BODY_BYTES:
        raise RequestError(
            413, f"request body of {n} bytes is over the limit of {MAX_BODY_BYTES} bytes (8 MiB)"
        )
    return n


@dataclass(frozen=True)
class MockConfig:
    ttft_ms: float = 20.0
    itl_ms: float = 5.0
    tokens_per_chunk: int = 1
    model: str = "mock"
    max_model_len: int = 131072
    default_max_tokens: int = 16
    wedge_after: int | None = None  # test engine: requests past this count get headers, then nothing
    # CPU the server spends on each chunk that carries a usage object (continuous usage stats), in
    # microseconds of busy work on its one event loop: vLLM's API server pays a serialization per
    # chunk, so asking for per-chunk usage slows every stream it serves (issue 23).
    usage_cost_us: float = 0.0


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
            "cpu_s": time.process_time(),  # the server process's CPU so far (user + system)
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


def _busy(ns: int) -> None:
    """Spend `ns` nanoseconds of CPU on the event loop (the emulated cost of serializing usage)."""
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


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
        self.usage_cost_ns = round(cfg.usage_cost_us * 1e3)
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
        if s.continuous and self.usage_cost_ns:
            _busy(self.usage_cost_ns)
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
        if self.closed:
            return
        # Stamp arrival now and parse later in this loop turn: when a burst of requests lands at once,
        # parsing one inline would delay the next one's arrival stamp and so inflate its TTFT.
        if not self.buf:
            self.t_arrival = time.monotonic_ns()
        self.buf += data
        if not self.busy:
            asyncio.get_running_loop().call_soon(self._parse)

    def _parse(self) -> None:
        while not self.busy and not self.closed:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    self._fail(RequestError(431, f"request head over {MAX_HEAD_BYTES} bytes"))
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            try:
                method, path, version = lines[0].split(" ")
                if not version.startswith("HTTP/1."):
                    raise ValueError(version)
                length = content_length(lines[1:])
            except ValueError:
                self._fail(RequestError(400, f"bad request line {lines[0][:80]!r}"))
                return
            except RequestError as e:
                self._fail(e)
                return
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            t_arrival = self.t_arrival
            self.t_arrival = time.monotonic_ns()
            try:
                self._dispatch(method, path.split("?", 1)[0], body, t_arrival)
            except Exception as e:  # a bug must cost one 500, never a client left waiting
                self._fail(RequestError(500, f"mock server error: {e!r}"))

    def _fail(self, e: RequestError) -> None:
        """Answer a framing error (or our own failure) and close: what follows cannot be parsed."""
        self.buf = b""
        self._respond(e.status, e.body(), close=True)
        self.closed = True  # from here on, data_received drops what arrives
        t = self.transport
        if t is None:
            return
        # Lingering close: our FIN goes after the answer, but we keep reading (and dropping) what the
        # client is still sending for up to LINGER_S. Closing with unread bytes would send a reset,
        # and a client still sending its body (the 413 case) would lose the answer with it.
        if t.can_write_eof():
            t.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, t.close)

    def _respond(self, status: int, obj: Any, close: bool = False) -> None:
        payload = orjson.dumps(obj)
        reason = _REASONS.get(status, "Error")
        self.write_raw(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, reason.encode(), len(payload), b"Connection: close\r\n" if close else b"", payload)
        )

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
            self._respond(404, error_body(404, f"no route {method} {path}"))

    def _generate(self, chat: bool, raw: bytes, t_arrival: int) -> None:
        srv, cfg = self.server, self.server.cfg
        try:
            body, req = parse_request(raw, chat, MOCK_VOCAB_SIZE)
            if req.model != cfg.model:
                raise RequestError(404, f"The model `{req.model}` does not exist.", "model")
            prompt_tokens = count_prompt_tokens(body)
            total = req.requested_tokens or cfg.default_max_tokens
            if prompt_tokens + total > cfg.max_model_len:
                raise RequestError(
                    400,
                    f"This model's maximum context length is {cfg.max_model_len} tokens. However, you "
                    f"requested {prompt_tokens + total} tokens ({prompt_tokens} in the messages, {total} "
                    "in the completion). Please reduce the length of the messages or completion.",
                )
        except RequestError as e:
            self._respond(e.status, e.body())
            return
        srv.stats.requests += 1
        rid = b"cmpl-mock-%d" % next(srv._seq)
        opts = req.stream_options or StreamOptions()
        if not req.stream:
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
            continuous=bool(opts.continuous_usage_stats),
            include_usage=bool(opts.include_usage),
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
