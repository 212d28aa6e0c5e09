"""The I/O edge of the bench: one long-lived aiohttp pool, raw timestamped reads, nothing parsed.

Footguns this module exists to avoid:
- A chunk is stamped at byte arrival (`time.monotonic_ns()` right after the read returns), before any
  JSON parsing; SSE framing and token counting happen after the trial (see records.decode).
- aiohttp's default 64 KiB read buffer throttles long-context and high-concurrency streams; we use 4 MiB.
- The pool has no per-host cap below the concurrency: a capped pool queues requests inside the client,
  which shows up as TTFT the server never caused.
- An unreachable endpoint must fail fast (5 s), not after the per-request timeout.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

import aiohttp
import orjson

from perftune.bench.records import RawCapture
from perftune.bench.transport import FastPool
from perftune.errors import BenchError

PREFLIGHT_TIMEOUT_S = 5.0
READ_BUFSIZE = 4 * 1024 * 1024


def _server_message(status: int, body: bytes) -> str:
    """The server's own error text (OpenAI error shape, FastAPI `detail`, or raw)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"HTTP {status}: {body[:300].decode(errors='replace').strip()}"
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail", obj.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return f"HTTP {status}: {err}"
    return f"HTTP {status}: {str(obj)[:300]}"


class BenchClient:
    """An OpenAI-compatible streaming client with one connection pool for the whole run."""

    def __init__(
        self,
        endpoint: str,
        *,
        max_connections: int,
        request_timeout_s: float = 600.0,
        api_key: str | None = None,
        transport: str = "auto",
    ) -> None:
        self.base = endpoint.rstrip("/")
        if self.base.endswith("/v1"):
            self.base = self.base[:-3]
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        # Plain-http endpoints use the lean hot-path transport; https falls back to aiohttp.
        self.fast: FastPool | None = (
            FastPool(self.base, headers=self.headers, request_timeout_s=request_timeout_s)
            if self.base.startswith("http://") and transport == "auto"
            else None
        )

    async def __aenter__(self) -> BenchClient:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections + 8, limit_per_host=0, force_close=False, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            read_bufsize=READ_BUFSIZE,
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s, sock_connect=PREFLIGHT_TIMEOUT_S),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.fast is not None:
            self.fast.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def prepare(self, path: str, body: bytes) -> tuple[str, bytes, bytes | None]:
        """Everything a send needs, built ahead of the trial (the raw request bytes for the fast path)."""
        return path, body, self.fast.encode(path, body) if self.fast is not None else None

    async def prewarm(self, n: int) -> None:
        if self.fast is not None:
            try:
                await self.fast.prewarm(n)
            except OSError as e:
                raise BenchError(
                    f"cannot open connections to {self.base}: {e}", hint="is the server up?"
                ) from e

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("BenchClient used outside `async with`")
        return self._session

    async def get_json(self, path: str, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> Any:
        url = self.base + path
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise BenchError(
                        f"GET {url} failed: {_server_message(resp.status, body)}",
                        hint="is this an OpenAI-compatible server?",
                    )
                return orjson.loads(body)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise BenchError(
                f"cannot reach {url} within {timeout_s:g} s: {type(e).__name__} {e}".strip(),
                hint="check --endpoint (scheme, host, port) and that the server is up",
            ) from e
        except orjson.JSONDecodeError as e:
            raise BenchError(
                f"GET {url} did not return JSON", hint="is this an OpenAI-compatible server?"
            ) from e

    async def post_status(self, path: str) -> int:
        """POST with an empty body (cache resets); the HTTP status, or 0 when unreachable."""
        try:
            async with self.session.post(self.base + path, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0

    async def metrics_text(self) -> str | None:
        """The server's Prometheus /metrics text, or None when it has none (best effort, 2 s)."""
        try:
            # The session does not decompress (stream bytes are timed raw), and SGLang's /metrics
            # gzips whenever the client allows it: ask for identity, and still undo a gzip body.
            async with self.session.get(
                self.base + "/metrics",
                timeout=aiohttp.ClientTimeout(total=2.0),
                headers={"Accept-Encoding": "identity"},
            ) as resp:
                if resp.status != 200:
                    return None
                body = await resp.read()
                if resp.headers.get("Content-Encoding", "").lower() == "gzip" or body[:2] == b"\x1f\x8b":
                    body = gzip.decompress(body)
                return body.decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError, OSError, gzip.BadGzipFile, EOFError):
            return None

    async def preflight(self, model: str) -> dict[str, Any]:
        """Reachability within 5 s, and the model name as the server knows it. Returns server facts."""
        models = await self.get_json("/v1/models")
        data = models.get("data", []) if isinstance(models, dict) else []
        names = [str(m.get("id")) for m in data if isinstance(m, dict)]
        if names and model not in names:
            raise BenchError(
                f"model '{model}' is not served at {self.base} (served: {', '.join(names)})",
                hint=f"use --model {names[0]}",
            )
        owned_by = next((str(m.get("owned_by")) for m in data if m.get("id") == model), None)
        version: str | None = None
        # vLLM (and the simulator) answer /version, SGLang /get_server_info. Best effort, short.
        for path in ("/version", "/get_server_info"):
            try:
                v = await self.get_json(path, timeout_s=2.0)
            except BenchError:
                continue
            if isinstance(v, dict) and v.get("version"):
                version = str(v["version"])
                break
        max_model_len = next((m.get("max_model_len") for m in data if m.get("id") == model), None)
        return {"owned_by": owned_by, "version": version, "max_model_len": max_model_len, "served": names}

    async def send(self, prepared: tuple[str, bytes, bytes | None], cap: RawCapture) -> None:
        """Send one streaming request and fill `cap`. Never raises for server/network failures."""
        path, body, raw = prepared
        ns = time.monotonic_ns
        cap.t_send_ns = ns()
        try:
            if raw is not None and self.fast is not None:
                await self.fast.send(raw, cap)
                if cap.status != 200:
                    cap.error_kind = "error"
                    cap.error_message = _server_message(cap.status, b"".join(r[1] for r in cap.reads))
                    cap.reads.clear()
                return
            async with self.session.post(self.base + path, data=body, headers=self.headers) as resp:
                cap.t_headers_ns = ns()
                cap.status = resp.status
                if resp.status != 200:
                    cap.error_kind = "error"
                    cap.error_message = _server_message(resp.status, await resp.read())
                    cap.t_end_ns = ns()
                    return
                append = cap.reads.append
                async for data in resp.content.iter_any():
                    append((ns(), data))
                cap.t_end_ns = cap.reads[-1][0] if cap.reads else ns()
        except TimeoutError:
            cap.error_kind, cap.error_message, cap.t_end_ns = (
                "timeout",
                (f"no complete response within {self.request_timeout_s:g} s"),
                ns(),
            )
        except asyncio.CancelledError:
            cap.error_kind, cap.error_message, cap.t_end_ns = "cancelled", "cancelled", ns()
            raise
        except (aiohttp.ClientError, OSError) as e:
            cap.error_kind, cap.error_message, cap.t_end_ns = "error", f"{type(e).__name__}: {e}", ns()
