"""Live progress (issue 20) as a user meets it: `perftune optimize` in a pipe prints plain progress
lines (phase N of M, the engine's start with its log, each trial's live tok/s) and no escape codes;
with --json stdout is the JSON alone; on a terminal the rich display renders without breaking."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perftune.campaign.phases import PHASES

pytestmark = pytest.mark.e2e


def _cmd(tmp: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "perftune",
        "optimize",
        "llama-3.1-8b",
        "--engines",
        "sim",
        "--workloads",
        "random",
        "--ladder",
        "4",
        "--isl",
        "128",
        "--osl",
        "16",
        "--trials",
        "2",
        "--no-capacity",
        "--yes",
        "--runs-dir",
        str(tmp / "runs"),
        "--lake",
        str(tmp / "lake.duckdb"),
        "--registry",
        str(tmp / "kg.yaml"),
        "--findings",
        str(tmp / "f.yaml"),
        *extra,
    ]


def test_a_pipe_gets_plain_progress_lines(tmp_path: Path) -> None:
    r = subprocess.run(_cmd(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr
    assert "\x1b" not in err and "\x1b" not in r.stdout  # nothing animated, no colour
    n = len(PHASES)
    assert f"phase 1 of {n} (id 0): resolve + scaffold" in err.splitlines()
    assert re.search(rf"^phase \d+ of {n} \(id 8\): bench the workload suite$", err, re.M)
    # the engine's start, with the last line of its server log
    starts = re.findall(r"^engine sim: starting, \d+ s \| log: .*$", err, re.M)
    ready = re.findall(r"^engine sim: ready in [\d.]+ s \| log: (.+)$", err, re.M)
    assert starts and len(ready) == 3  # phase 1's baseline, phase 2's profile and phase 8's deploy
    assert all(line.strip() for line in ready)
    # each trial of each cell, throttled to its quarters on a run this short, with a live tok/s
    trials = re.findall(
        r"^cell (\S+): trial (\d)/2, (\d+)/(\d+) requests \((\d+)%\), ~([\d,]+) tok/s$", err, re.M
    )
    cells = {c for c, *_ in trials}
    assert {"p8.sim.baseline.random.c4"} <= cells
    done = [t for t in trials if t[4] == "100"]
    assert {(c, t) for c, t, *_ in done} == {(c, t) for c in cells for t in ("1", "2")}
    assert all(int(t[5].replace(",", "")) > 0 for t in done)
    assert len(trials) <= 4 * 2 * len(cells) + 4  # throttled: not a line per request
    assert "bundle:" in r.stdout


def test_json_keeps_stdout_pure(tmp_path: Path) -> None:
    r = subprocess.run(_cmd(tmp_path, "--json"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads(r.stdout)  # the whole of stdout is the JSON
    assert state["phases"]["8"]["status"] == "green"
    assert "phase 1 of" in r.stderr and "tok/s" in r.stderr and "\x1b" not in r.stderr


def test_a_terminal_gets_the_live_display(tmp_path: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the pty
        os.environ.update(COLUMNS="120", LINES="40", TERM="xterm-256color")
        os.environ.pop("NO_COLOR", None)
        os.execv(sys.executable, _cmd(tmp_path))
    chunks: list[bytes] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    out = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, out[-3000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", out)
    assert "Traceback" not in plain
    assert f"phase 1 of {len(PHASES)} (id 0)" in plain
    assert "engine sim: ready in" in plain and "tok/s" in plain
    assert "\x1b[?25l" in out  # rich hid the cursor: the live display ran
    assert "bundle:" in plain
