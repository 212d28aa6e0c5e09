"""One profile window against a live deployment: the layers started, a short load run through the
bench client, the layers stopped and their captures validated. The campaign (phase 2) and
`perftune profile` drive it; this module only acts on an endpoint and a process it is given.

Per window (engine, concurrency):
- L1 py-spy on the server's process group leader and its children;
- L2 the engine's own torch profiler (POST start/stop on its HTTP API), windows at c <= L2_MAX_C only
  (a trace holds every kernel of every step: at c=64 it is hundreds of MB and minutes to flush);
- L3 NVML GPM, read by the bench's own sampler in the window's trial (the same sampler every trial of
  phases 1, 3 and 8 carries);
- the simulator's step breakdown (GET /sim/profile), labelled SIMULATED.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perftune.bench.runner import BenchConfig, BenchRun
from perftune.bench.session import bench_to_dir
from perftune.bench.workloads import WorkloadSpec
from perftune.profile import kernels
from perftune.profile.base import Capture, check, failed, ok, skipped
from perftune.profile.host import HostSampler
from perftune.serving.registry import KernelProfiler
from perftune.util.atomic import write_text

L2_MAX_C = 16
STOP_TIMEOUT_S = 600.0  # vLLM flushes the trace inside the /stop_profile call


@dataclass
class Window:
    engine: str
    endpoint: str
    served_name: str
    pid: int | None  # the server's process group leader (None: not ours, e.g. a remote endpoint)
    concurrency: int
    out_dir: Path
    layers: tuple[str, ...]
    isl: int
    osl: int
    hardware: str
    simulated: bool = False
    kernel_profiler: KernelProfiler | None = None
    trace_dir: Path | None = None
    requests: int | None = None
    workload: str = "random"  # token-id prompts; a server that takes text only gets `code` (HumanEval)


def _post(url: str, timeout_s: float) -> tuple[int, str]:
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read(2000).decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def _get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def run_window(w: Window, rel: Callable[[Path], str], observe: Callable[[str], None]) -> list[Capture]:
    """Run one window; every requested layer returns a capture (ok, failed or skipped)."""
    shutil.rmtree(w.out_dir, ignore_errors=True)  # an earlier run's files are never read as this one's
    w.out_dir.mkdir(parents=True, exist_ok=True)
    c = w.concurrency
    caps: list[Capture] = []
    host: HostSampler | None = None
    if "l1" in w.layers:
        if w.simulated:
            caps.append(
                Capture(
                    layer="l1",
                    engine=w.engine,
                    concurrency=c,
                    status="skipped",
                    reason="py-spy samples of the simulator process are not evidence about the model",
                    hint="profile a real engine (vllm, sglang, llamacpp) for L1",
                    evidence=False,
                )
            )
        elif w.pid is None:
            caps.append(skipped("l1", w.engine, "the server is not a local process", "deploy it here", c))
        else:
            host = HostSampler(w.pid, w.out_dir / "l1", rel, w.engine, c)
            if (early := host.start()) is not None:
                caps.append(early)
                host = None
    l2_on = False
    if "l2" in w.layers:
        if w.kernel_profiler is None or w.trace_dir is None:
            caps.append(
                skipped(
                    "l2",
                    w.engine,
                    f"{w.engine} has no kernel timeline (no torch profiler: a CPU engine or the simulator)",
                    "profile vllm or sglang on a GPU for L2",
                    c,
                )
            )
        elif c > L2_MAX_C:
            caps.append(
                skipped(
                    "l2",
                    w.engine,
                    f"L2 windows run at c <= {L2_MAX_C} (a trace at c={c} is too large to flush in time)",
                    f"--concurrency with a value <= {L2_MAX_C}",
                    c,
                )
            )
        else:
            w.trace_dir.mkdir(parents=True, exist_ok=True)
            status, body = _post(w.endpoint + w.kernel_profiler.start_path, 60)
            if status != 200:
                caps.append(failed("l2", w.engine, f"start_profile answered {status}: {body[:160]}", [], c))
            else:
                l2_on = True
    if w.simulated:
        _post(w.endpoint + "/sim/profile/reset", 10)
    t0 = time.time()
    run: BenchRun | None = None
    try:
        run = _load(w)
    except BaseException:
        # Interrupted or failed: no trace flush (minutes on a large window), no parsing; the samplers
        # are killed and the caller's teardown takes the engine down at once.
        if host is not None:
            host.kill()
        raise
    else:
        # L1 stops first: the engine's trace export (gzip, Kineto parsing) on /stop_profile would
        # otherwise fill the host samples (seen on vLLM 0.26.0: 93% of c=1's samples).
        if host is not None:
            caps.append(host.stop())
        if l2_on and w.kernel_profiler is not None:
            status, body = _post(w.endpoint + w.kernel_profiler.stop_path, STOP_TIMEOUT_S)
            caps.append(_l2_capture(w, status, body, t0, rel))
    if w.simulated:
        caps.append(_sim_capture(w, rel))
    if "l3" in w.layers:
        caps.append(_l3_capture(w, run, rel))
    observe(f"phase 2: {w.engine} c={c}: " + ", ".join(f"{x.layer} {x.status}" for x in caps))
    return [check(x) for x in caps]


def _load(w: Window) -> BenchRun:
    n = w.requests or max(8, 2 * w.concurrency)
    cfg = BenchConfig(
        endpoint=w.endpoint,
        model=w.served_name,
        workload=WorkloadSpec(kind="random", isl=w.isl, osl=w.osl, num_requests=n)
        if w.workload in ("random", "prefix")
        else WorkloadSpec(kind=w.workload, osl=w.osl, num_requests=n),
        concurrency=w.concurrency,
        trials=1,
        warmup_requests=min(2, w.concurrency),
        hardware=w.hardware,
    )
    run, _ = bench_to_dir(cfg, out_dir=w.out_dir / "bench")
    return run


def _l2_capture(w: Window, status: int, body: str, t0: float, rel: Callable[[Path], str]) -> Capture:
    c = w.concurrency
    assert w.kernel_profiler is not None and w.trace_dir is not None
    if status != 200:
        return failed("l2", w.engine, f"stop_profile answered {status}: {body[:160]}", [], c)
    # The engine writes its traces (one per worker) into the folder it was launched with; the
    # window's are those written since it started. Moved into the window's folder.
    new = [p for p in w.trace_dir.rglob(w.kernel_profiler.trace_glob) if p.stat().st_mtime >= t0 - 1]
    dest = w.out_dir / "l2"
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for p in sorted(new):
        q = dest / p.name
        shutil.move(str(p), q)
        moved.append(q)
    if not moved:
        return failed(
            "l2", w.engine, f"no trace matching {w.kernel_profiler.trace_glob} in {w.trace_dir}", [], c
        )
    try:
        fig = kernels.summarize_traces(moved)
    except kernels.UNREADABLE as e:
        return failed(
            "l2", w.engine, f"trace unreadable: {type(e).__name__}: {e}", [rel(p) for p in moved], c
        )
    summary = dest / "kernels.json"
    write_text(summary, json.dumps(fig, indent=2) + "\n")
    return ok("l2", w.engine, c, [rel(summary), *(rel(p) for p in moved)], fig)


def _l3_capture(w: Window, run: BenchRun | None, rel: Callable[[Path], str]) -> Capture:
    c = w.concurrency
    if w.simulated:
        return skipped(
            "l3", w.engine, "no DRAM counters on a simulated engine", "profile a real GPU engine", c
        )
    if run is None or not run.result.trials:
        return failed("l3", w.engine, "the window's load did not run", [], c)
    t = run.result.trials[0]
    g = t.gpu
    if g is None or not g.available:
        why = (g.note if g is not None else None) or "no NVML on this host"
        return skipped("l3", w.engine, why, "run on the GPU host, with the server local to perftune", c)
    if g.dram_bw_util_pct is None:
        return skipped("l3", w.engine, g.gpm_note or "no GPM figures", "GPM needs Hopper or later", c)
    path = w.out_dir / "l3" / "gpm.json"
    fig = {
        "gpm_samples": g.gpm_samples,
        "period_s": g.period_s,
        "dram_bw_util_pct": g.dram_bw_util_pct,
        "sm_occupancy_pct": g.sm_occupancy_pct,
        "tensor_active_pct": g.tensor_active_pct,
        "sm_clock_mhz": g.sm_clock_mhz,
        "mem_clock_mhz": g.mem_clock_mhz,
        "power_w": g.power_w,
        "throttled": g.throttled,
        "reasons": g.reasons,
        "tpot_ms_p50": t.tpot_ms.p50,
        "output_tok_s": t.output_tok_s,
        # L1 and L2 sample the engine in the same window: the figure is of an instrumented engine
        "instrumented": [x for x in ("l1", "l2") if x in w.layers],
    }
    write_text(path, json.dumps(fig, indent=2) + "\n")
    return ok("l3", w.engine, c, [rel(path)], fig)


def _sim_capture(w: Window, rel: Callable[[Path], str]) -> Capture:
    c = w.concurrency
    try:
        data = _get_json(w.endpoint + "/sim/profile")
    except urllib.error.HTTPError as e:
        if e.code == 404:  # perftune's mock server simulates no engine: it has no step breakdown
            return skipped(
                "sim", w.engine, f"{w.engine} exports no step breakdown", "profile the simulator", c
            )
        return failed("sim", w.engine, f"GET /sim/profile: {e}", [], c)
    except (OSError, ValueError) as e:
        return failed("sim", w.engine, f"GET /sim/profile: {e}", [], c)
    path = w.out_dir / "sim" / "step_breakdown.json"
    write_text(path, json.dumps(data, indent=2) + "\n")
    return ok("sim", w.engine, c, [rel(path)], data, simulated=True)
