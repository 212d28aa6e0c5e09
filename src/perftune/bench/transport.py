"""The measurement hot path: a lean HTTP/1.1 keep-alive pool over asyncio Protocols + httptools.

Why not aiohttp here: at closed-loop concurrency the whole batch of requests is sent in one burst, and
aiohttp's ~0.3 ms of Python per request (session, response objects, stream readers) serializes that
burst inside the client: the last request's TTFT then carries the client's own work. This transport
costs a few microseconds per read: `data_received` stamps `time.monotonic_ns()` before anything else,
httptools (llhttp, the parser behind uvicorn) decodes framing in C, and the body bytes are appended
untouched. aiohttp stays for the control plane (preflight, metrics) and for https endpoints.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import httptools

from perftune.bench.records import RawCapture


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_t",
        "alive",
        "cap",
        "drain_q",
        "fut",
        "got_bytes",
        "keep_alive",
        "parser",
        "pending",
        "transport",
    )

    def __init__(self, drain_q: _DrainQueue) -> None:
        self.drain_q = drain_q
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.BaseTransport | None = None
        self.cap: RawCapture | None = None
        self.fut: asyncio.Future[None] | None = None
        self.alive = True
        self.keep_alive = True
        self.got_bytes = False
        self.pending: list[tuple[int, bytes]] = []
        self._t = 0

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending:
            self._drain()
        self.alive = False
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_exception(
                ConnectionResetError(f"connection closed by server{': ' + str(exc) if exc else ''}")
            )

    def data_received(self, data: bytes) -> None:
        # Stamp at byte arrival and parse later in this loop turn: when many streams' chunks land in one
        # poll, parsing each inline would push the next socket's stamp back by the parse time. One drain
        # callback per loop turn serves every connection that received data in it.
        self.pending.append((time.monotonic_ns(), data))
        self.got_bytes = True
        if len(self.pending) == 1:
            self.drain_q.schedule(self)

    def _drain(self) -> None:
        pending, self.pending = self.pending, []
        try:
            for t, data in pending:
                self._t = t
                self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            fut = self.fut
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError(f"malformed HTTP response: {e}"))
            self.close()

    # ---- httptools callbacks
    def on_headers_complete(self) -> None:
        cap = self.cap
        if cap is not None:
            cap.status = self.parser.get_status_code()
            cap.t_headers_ns = self._t
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        cap = self.cap
        if cap is not None:
            cap.reads.append((self._t, body))

    def on_message_complete(self) -> None:
        cap, fut = self.cap, self.fut
        if cap is not None:
            cap.t_end_ns = self._t
        if fut is not None and not fut.done():
            fut.set_result(None)

    def close(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.close()


class _DrainQueue:
    """Connections with stamped-but-unparsed reads; drained once per event-loop turn."""

    __slots__ = ("conns",)

    def __init__(self) -> None:
        self.conns: list[_Conn] = []

    def schedule(self, conn: _Conn) -> None:
        if not self.conns:
            asyncio.get_running_loop().call_soon(self.drain)
        self.conns.append(conn)

    def drain(self) -> None:
        conns, self.conns = self.conns, []
        for c in conns:
            if c.pending:
                c._drain()


class FastPool:
    """Keep-alive connections to one host; one request per connection at a time."""

    def __init__(self, base_url: str, *, headers: dict[str, str], request_timeout_s: float) -> None:
        u = urlsplit(base_url)
        if u.scheme != "http":
            raise ValueError("FastPool speaks plain http only")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.request_timeout_s = request_timeout_s
        extra = "".join(
            f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() not in ("host", "content-length")
        )
        self._head = f"Host: {self.host}:{self.port}\r\n{extra}".encode()
        self.idle: list[_Conn] = []
        self._drain_q = _DrainQueue()
        self.all: set[_Conn] = set()

    def encode(self, path: str, body: bytes) -> bytes:
        """The full request bytes; built before a trial so the hot path only writes."""
        return b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            path.encode(),
            self._head,
            len(body),
            body,
        )

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self._drain_q), self.host, self.port)
        self.all.add(conn)
        return conn

    async def prewarm(self, n: int) -> None:
        """Open up to n connections ahead of a trial, so TCP setup never lands inside a TTFT."""
        need = n - len(self.idle)
        if need > 0:
            conns = await asyncio.gather(*(self._connect() for _ in range(need)))
            self.idle.extend(conns)

    async def send(self, request: bytes, cap: RawCapture) -> None:
        """Send one request and fill `cap` (status, reads, end). Raises on transport failure."""
        for attempt in (0, 1):
            reused = bool(self.idle)
            conn = self.idle.pop() if reused else await self._connect()
            while not conn.alive and self.idle:  # drop connections the server closed while idle
                conn = self.idle.pop()
            if not conn.alive:
                conn = await self._connect()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            conn.cap, conn.fut, conn.got_bytes = cap, fut, False
            assert conn.transport is not None
            conn.transport.write(request)  # type: ignore[attr-defined]
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    await fut
            except ConnectionResetError:
                conn.cap = conn.fut = None
                self.all.discard(conn)
                # A kept-alive connection the server closed under us: retry once on a fresh one.
                if attempt == 0 and reused and not conn.got_bytes:
                    cap.reads.clear()
                    continue
                raise
            except BaseException:
                conn.cap = conn.fut = None
                conn.close()
                self.all.discard(conn)
                raise
            conn.cap = conn.fut = None
            if conn.keep_alive and conn.alive:
                self.idle.append(conn)
            else:
                conn.close()
                self.all.discard(conn)
            return

    def close(self) -> None:
        for c in list(self.all):
            c.close()
        self.all.clear()
        self.idle.clear()
