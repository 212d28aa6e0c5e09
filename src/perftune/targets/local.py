"""Local target: the engine runs as a child process group on this machine.

Footguns:
- The server gets its own process group (start_new_session), so teardown reaches the engine's
  workers too (vLLM's EngineCore, SGLang's scheduler and detokenizer processes).
- Readiness races health against process death against a timeout: a dead engine never answers.
- Logs go to files in the run folder, never to our stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from perftune.errors import ConfigError, DeployError
from perftune.serving.spec import LaunchPlan

TAIL_LINES = 30
LAST_LINE_BYTES = 8192  # how far from a log's end last_log_line looks
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# Called while a deploy waits for readiness: (seconds since the wait began, the log's last line).
WaitProgress = Callable[[float, str], None]


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (bind to 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(
                f"port {port} on {host} is busy ({e.strerror})",
                hint="pick another --port, or leave it out to get a free one",
            ) from e


def tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def last_log_line(path: Path, max_bytes: int = LAST_LINE_BYTES, width: int = 200) -> str:
    """The last non-empty line of a (growing) log, read from its last max_bytes only, with terminal
    escapes and control characters removed (engines log in colour; progress bars end lines with \\r)
    and cut to `width` characters. "" when the file is missing or holds no text yet."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            chunk = f.read(max_bytes)
    except OSError:
        return ""
    text = _ANSI.sub("", chunk.decode("utf-8", errors="replace"))
    # a progress bar rewrites its line with \r: the text after the last \r is what a terminal shows
    lines = [_CONTROL.sub("", ln.rstrip("\r").rsplit("\r", 1)[-1]).strip() for ln in text.split("\n")]
    if size > max_bytes and lines:
        lines = lines[1:] if len(lines) > 1 else lines  # the first line may be cut: skip it if we can
    last = next((ln for ln in reversed(lines) if ln), "")
    return last if len(last) <= width else last[: width - 1] + "…"


@dataclass
class LocalDeployment:
    plan: LaunchPlan
    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the child leads its own group

    def alive(self) -> bool:
        return self.proc.poll() is None


def up(
    plan: LaunchPlan, run_dir: Path, *, host: str, port: int, gpus: list[int] | None = None
) -> LocalDeployment:
    """Start the server (port must already be in plan.argv). Does not wait for readiness."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / f"{plan.engine}-server.log"
    env = {**os.environ, **plan.env}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                plan.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise DeployError(
                f"{plan.engine} is not installed: cannot run '{plan.argv[0]}'",
                hint=f"install {plan.engine} in this environment",
                log_path=str(log_path),
            ) from e
    return LocalDeployment(plan=plan, base_url=f"http://{host}:{port}", proc=proc, log_path=log_path)


async def wait_ready(
    dep: LocalDeployment,
    timeout_s: float,
    poll_s: float = 0.5,
    on_wait: WaitProgress | None = None,
    every_s: float = 1.0,
) -> float:
    """Seconds until health OK and /v1/models lists the served name; raises on death or timeout.

    `on_wait(elapsed_s, last_log_line)` is called at the start of the wait and then about every
    `every_s` seconds while it lasts (the log's tail is read from its end, never the whole file)."""
    t0 = time.monotonic()
    told = -every_s
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        while True:
            if on_wait is not None and time.monotonic() - told >= every_s:
                told = time.monotonic()
                on_wait(told - t0, last_log_line(dep.log_path))
            if not dep.alive():
                raise DeployError(
                    f"{dep.plan.engine} exited with code {dep.proc.returncode} before it was ready:\n"
                    f"{tail(dep.log_path)}",
                    hint="read the server log",
                    log_path=str(dep.log_path),
                )
            if time.monotonic() - t0 > timeout_s:
                raise DeployError(
                    f"{dep.plan.engine} not ready within {timeout_s:g} s:\n{tail(dep.log_path)}",
                    hint="raise the timeout, or read the server log",
                    log_path=str(dep.log_path),
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError):
                async with s.get(dep.base_url + dep.plan.health_path) as r:
                    if r.status == 200:
                        async with s.get(dep.base_url + "/v1/models") as m:
                            data = await m.json(content_type=None)
                            ids = [str(x.get("id")) for x in data.get("data", [])]
                            if dep.plan.served_name in ids:
                                return time.monotonic() - t0
            await asyncio.sleep(poll_s)


def down(dep: LocalDeployment, grace_s: float = 15.0) -> None:
    """TERM the whole process group, KILL after the grace period. Idempotent."""
    stop_group(dep.pgid, grace_s, proc=dep.proc)


def stop_group(pgid: int, grace_s: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """TERM a process group, KILL what is left after the grace period; reap `proc` if we own it."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if _group_gone_within(pgid, wait, proc):
            break
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)  # always reap the leader, so no zombie outlives us


def _group_gone_within(pgid: int, seconds: float, proc: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap the leader as soon as it exits, so it does not linger as a zombie
        if not group_alive(pgid):
            return True
        time.sleep(0.05)
    return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # The group leader may be a zombie we have not reaped; it counts as gone.
    try:
        with open(f"/proc/{pgid}/stat") as f:
            state = f.read().split(")", 1)[1].split()[0]
        others = _group_members(pgid) - {pgid}
        return state != "Z" or bool(others)
    except OSError:
        return bool(_group_members(pgid))


def _group_members(pgid: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().split(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.add(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return out
