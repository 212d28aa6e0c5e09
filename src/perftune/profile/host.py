"""L1: the engine's process tree sampled by py-spy (API server, engine core, workers).

Two py-spy recorders run side by side on the server's process group leader with `--subprocesses`
and `--nonblocking` (the engine is never paused): one writes collapsed stacks (`--format raw`), the
other a flame graph SVG. Both stop on SIGINT at the end of the window and write their files then.
`classify` turns the collapsed stacks into the share of active samples in scheduling, tokenization,
sampling, waiting on the GPU, launching GPU work, the API server and, for a CPU engine, the model's
own compute. Pure, and tested on a real capture.

Footguns: py-spy needs ptrace (root, or CAP_SYS_PTRACE, or kernel.yama.ptrace_scope = 0); without it
it prints "Permission denied" and the layer is skipped with that reason. Idle threads are left out
(no `--idle`), so shares are of the samples where a thread was running.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from perftune.profile.base import Capture, failed, ok, skipped

RATE_HZ = 100
# Leaf first: the deepest frame that matches names the bucket. The order decides between buckets a
# frame matches twice. Frames look like "function (path/file.py:line)".
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    ("profiler", re.compile(r"torch/autograd/profiler|torch/profiler|kineto|export_chrome_trace", re.I)),
    ("gpu_wait", re.compile(r"synchroniz|\bitem \(|tolist \(|_to_cpu|wait_for|cudaStream|async_copy", re.I)),
    ("sampling", re.compile(r"sampler|\bsample\w* \(|logits_process|top_[kp]|_penalt", re.I)),
    ("tokenization", re.compile(r"tokeniz|detokeniz|convert_ids|decode_tokens|incremental_det", re.I)),
    ("model_compute", re.compile(r"llama_decode|\beval \(|llama_eval|ggml", re.I)),
    ("scheduling", re.compile(r"schedul", re.I)),
    (
        "gpu_launch",
        re.compile(r"execute_model|forward \(|model_runner|cuda_graph|replay \(|_run_\w*model", re.I),
    ),
    (
        "api_server",
        re.compile(r"aiohttp|uvicorn|starlette|fastapi|serving_|orjson|json|pydantic|zmq|msgspec"),
    ),
]
BUCKET_NAMES = [b for b, _ in BUCKETS] + ["other"]


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f]


def classify(collapsed: str) -> dict[str, Any]:
    """{samples, shares: bucket -> share of samples, processes: name -> share, top_frames}. Pure."""
    counts: Counter[str] = Counter()
    procs: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        k = int(n)
        frames = _frames(stack)
        total += k
        if frames and frames[0].startswith("process "):
            m = re.search(r'"([^"]*)"', frames[0])
            procs[(m.group(1) if m else frames[0])[:60]] += k
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        bucket = "other"
        for f in reversed(frames):
            hit = next((b for b, rx in BUCKETS if rx.search(f)), None)
            if hit:
                bucket = hit
                break
        counts[bucket] += k
        if frames:
            leaves[frames[-1][:120]] += k
    return {
        "samples": total,
        "shares": {b: counts[b] / total for b in BUCKET_NAMES} if total else {},
        "processes": {p: n / total for p, n in procs.most_common(8)} if total else {},
        "top_frames": [[f, n / total] for f, n in leaves.most_common(10)] if total else [],
    }


def pyspy_binary() -> str | None:
    return shutil.which("py-spy")


class HostSampler:
    """py-spy on a process tree for one window: start(), then stop() -> Capture."""

    def __init__(self, pid: int, out_dir: Path, rel: Any, engine: str, concurrency: int | None) -> None:
        self.pid, self.dir, self.rel = pid, out_dir, rel
        self.engine, self.concurrency = engine, concurrency
        self.procs: list[subprocess.Popen[bytes]] = []
        self.raw = out_dir / "pyspy.collapsed.txt"
        self.svg = out_dir / "pyspy.flame.svg"
        self.log = out_dir / "pyspy.log"

    def start(self) -> Capture | None:
        """None when sampling started, else the skipped capture saying why."""
        exe = pyspy_binary()
        if exe is None:
            return skipped(
                "l1", self.engine, "py-spy is not installed", "pip install py-spy", self.concurrency
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        for f in (self.raw, self.svg):  # an earlier window's stacks are never read as this one's
            f.unlink(missing_ok=True)
        base = [
            exe,
            "record",
            "--pid",
            str(self.pid),
            "--subprocesses",
            "--nonblocking",
            "--rate",
            str(RATE_HZ),
        ]
        with self.log.open("wb") as log:
            for fmt, out in (("raw", self.raw), ("flamegraph", self.svg)):
                self.procs.append(
                    subprocess.Popen(
                        [*base, "--format", fmt, "--output", str(out)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
        time.sleep(0.5)
        dead = [p for p in self.procs if p.poll() is not None]
        if dead:
            self._kill()
            text = self.log.read_text(errors="replace")
            if "ermission" in text or "ptrace" in text.lower():
                return skipped(
                    "l1",
                    self.engine,
                    "py-spy may not attach to the engine: " + text.strip().splitlines()[-1][:200],
                    "run as root, grant CAP_SYS_PTRACE, or set kernel.yama.ptrace_scope=0",
                    self.concurrency,
                )
            why = text.strip()[-200:] or "py-spy exited"
            return failed("l1", self.engine, why, [self.rel(self.log)], self.concurrency)
        return None

    def kill(self) -> None:
        """Stop the samplers at once (an interrupted window): no output is waited for."""
        self._kill()

    def _kill(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()

    def stop(self) -> Capture:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        arts = [self.rel(x) for x in (self.raw, self.svg, self.log) if x.exists()]
        if not self.raw.exists():
            return failed("l1", self.engine, "py-spy wrote no stacks", arts, self.concurrency)
        figures = classify(self.raw.read_text(errors="replace"))
        figures["rate_hz"] = RATE_HZ
        return ok("l1", self.engine, self.concurrency, arts, figures)
