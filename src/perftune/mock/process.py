"""Start perftune's own servers (mock, simulator) as child processes (own CPU, own event loop)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import orjson

from perftune.errors import DeployError


@contextlib.contextmanager
def mock_process(
    ttft_ms: float,
    itl_ms: float,
    tokens_per_chunk: int = 1,
    model: str = "mock",
    startup_timeout_s: float = 20.0,
    max_model_len: int = 131072,
    usage_cost_us: float = 0.0,
) -> Iterator[str]:
    """Yield the endpoint URL of a mock server running in a child process group."""
    cmd = [
        sys.executable,
        "-m",
        "perftune",
        "mock-server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ttft-ms",
        str(ttft_ms),
        "--itl-ms",
        str(itl_ms),
        "--tokens-per-chunk",
        str(tokens_per_chunk),
        "--model-name",
        model,
        "--max-model-len",
        str(max_model_len),
        "--usage-cost-us",
        str(usage_cost_us),
        "--ready-json",
    ]
    with ready_json_process(cmd, "mock server", startup_timeout_s) as url:
        yield url


@contextlib.contextmanager
def ready_json_process(cmd: list[str], what: str, startup_timeout_s: float = 20.0) -> Iterator[str]:
    """Run a server that prints `{"event": "ready", "port": N}` when up; yield its URL; tear it down."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below  # stderr to a file: a pipe nobody drains could block the server
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + startup_timeout_s
        line = b""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line or proc.poll() is not None:
                break
        if not line:
            log.seek(0)
            err = log.read().decode(errors="replace")
            raise DeployError(
                f"{what} did not start", hint=err.strip().splitlines()[-1] if err.strip() else ""
            )
        port = int(orjson.loads(line)["port"])
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()
