"""L2: the engine's torch-profiler trace (Chrome trace JSON, gzipped or not) read into kernel-family
time shares, GPU idle gaps between kernels, and a per-step budget. Pure functions over the parsed
events; `load_trace` is the only I/O.

Kernels are the events with `cat` == "kernel" (torch profiler's CUPTI activity); memcpy and memset
have their own categories. A "host gap" is GPU time with no kernel running between two kernels, on
the device's merged timeline (all streams): inside a CUDA graph kernels follow each other within a
few microseconds, so gaps of `GAP_US` or more are the host (scheduling, sampling, output processing,
Python launch overhead) keeping the GPU waiting.

Steps: vLLM annotates each engine step on the GPU timeline (`gpu_user_annotation` events named
`execute_context_<n>(<tokens>)_generation_<m>(<m>)`: n prefill and m decode requests; seen on vLLM
0.26.0), so a step's wall time is from its start to the next step's start and its kernel time is
the busy time inside it; a decode step is one with no prefill (`context_0`). Without annotations,
steps are told apart by gaps of `STEP_GAP_US` or more (a fallback: with async scheduling the host
work between steps overlaps the GPU and such gaps are rare).
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import statistics
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# What reading a trace can raise: a missing file, bad JSON, a truncated .gz (EOFError, zlib.error).
UNREADABLE = (OSError, ValueError, EOFError, zlib.error)
GAP_US = 20.0
STEP_GAP_US = 200.0
# First match wins, so the order settles names that match twice (a fused MoE GEMM is MoE).
FAMILIES: list[tuple[str, re.Pattern[str]]] = [
    (
        "communication",
        re.compile(
            r"nccl|all_?reduce|allgather|all_gather|reduce_scatter|alltoall|cross_device|custom_ar|one_shot|two_shot",
            re.I,
        ),
    ),
    ("moe", re.compile(r"moe|fused_experts|expert|topk_softmax|grouped_gemm|align_block", re.I)),
    (
        "attention",
        re.compile(r"flash|fmha|attention|attn|paged|mla_|reshape_and_cache|unified_att|kv_cache", re.I),
    ),
    (
        "sampling",
        re.compile(
            r"sampl|top_?k|top_?p|argmax|multinomial|gumbel|exponential_|radix_?sort|sort_|softmax", re.I
        ),
    ),
    (
        "gemm",
        re.compile(
            r"gemm|gemv|cutlass|cublas|xmma|matmul|nvjet|splitk|wgmma|scaled_mm|marlin|_mm_|sm\d+_", re.I
        ),
    ),
    (
        "norm_elementwise",
        re.compile(
            r"norm|rms|elementwise|vectorized|unrolled|act_and_mul|silu|gelu|rotary|rope|triton_|reduce|index|gather|scatter|embedding|copy|fill|cat",
            re.I,
        ),
    ),
]
FAMILY_NAMES = [f for f, _ in FAMILIES] + ["memcpy", "other"]


def load_trace(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    data = json.loads(raw)
    return data if isinstance(data, dict) else {"traceEvents": data}


def family(name: str, cat: str = "kernel") -> str:
    if cat in ("gpu_memcpy", "gpu_memset") or name.startswith(("Memcpy", "Memset")):
        return "memcpy"
    return next((f for f, rx in FAMILIES if rx.search(name)), "other")


def gpu_events(trace: dict[str, Any]) -> list[tuple[float, float, str, str]]:
    """(start_us, dur_us, name, family) of every kernel, memcpy and memset, by start."""
    out = []
    for e in trace.get("traceEvents", []):
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        cat = str(e.get("cat", ""))
        if cat not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        dur = float(e.get("dur") or 0.0)
        name = str(e.get("name", ""))
        out.append((float(e.get("ts") or 0.0), dur, name, family(name, cat)))
    out.sort()
    return out


def busy_intervals(events: Iterable[tuple[float, float, str, str]]) -> list[tuple[float, float]]:
    """The union of the events' [start, end) intervals: the GPU's busy time across streams."""
    merged: list[tuple[float, float]] = []
    for ts, dur, _n, _f in events:
        end = ts + dur
        if merged and ts <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((ts, end))
    return merged


def steps(
    busy: Sequence[tuple[float, float]], step_gap_us: float = STEP_GAP_US
) -> list[tuple[float, float, float]]:
    """(start, end, busy_us) of each step: busy stretches separated by gaps >= step_gap_us."""
    out: list[tuple[float, float, float]] = []
    for a, b in busy:
        if out and a - out[-1][1] < step_gap_us:
            s, _e, k = out[-1]
            out[-1] = (s, b, k + (b - a))
        else:
            out.append((a, b, b - a))
    return out


STEP_ANNOTATION = re.compile(r"^execute_context_(\d+)\(\d+\)_generation_(\d+)")


def annotated_steps(trace: dict[str, Any]) -> list[tuple[float, float, bool]]:
    """(start_us, dur_us, decode_only) of each engine step the engine annotated on the GPU."""
    out = []
    for e in trace.get("traceEvents", []):
        if isinstance(e, dict) and e.get("cat") == "gpu_user_annotation" and e.get("ph") == "X":
            m = STEP_ANNOTATION.match(str(e.get("name", "")))
            if m:
                out.append((float(e.get("ts") or 0.0), float(e.get("dur") or 0.0), m.group(1) == "0"))
    out.sort()
    return out


def busy_within(busy: Sequence[tuple[float, float]], spans: Sequence[tuple[float, float]]) -> list[float]:
    """Busy time inside each [start, end) span (both sorted by start). Pure, linear."""
    out, k = [], 0
    for a, b in spans:
        while k < len(busy) and busy[k][1] <= a:
            k += 1
        t, j = 0.0, k
        while j < len(busy) and busy[j][0] < b:
            t += max(0.0, min(b, busy[j][1]) - max(a, busy[j][0]))
            j += 1
        out.append(t)
    return out


def step_budget(trace: dict[str, Any], busy: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Median decode step: wall (start to the next step's start) and kernel time inside it."""
    ann = annotated_steps(trace)
    if len(ann) >= 3:
        spans = [(a[0], ann[k + 1][0]) for k, a in enumerate(ann[:-1])]
        kern = busy_within(busy, spans)
        dec = [(b - a, kt) for (a, b), kt, st in zip(spans, kern, ann, strict=False) if st[2]]
        rows = dec or [(b - a, kt) for (a, b), kt in zip(spans, kern, strict=True)]
        return {
            "steps": len(ann),
            "decode_steps": sum(1 for x in ann if x[2]),
            "step_source": "engine annotations",
            "step_wall_ms_median": statistics.median(w for w, _k in rows) / 1e3,
            "step_kernel_ms_median": statistics.median(k for _w, k in rows) / 1e3,
        }
    st = steps(busy)
    if len(st) < 2:
        return {
            "steps": len(st),
            "step_source": "gaps",
            "step_wall_ms_median": 0.0,
            "step_kernel_ms_median": 0.0,
        }
    walls = [st[k + 1][0] - st[k][0] for k in range(len(st) - 1)]
    return {
        "steps": len(st),
        "step_source": f"gaps >= {STEP_GAP_US:.0f} us",
        "step_wall_ms_median": statistics.median(walls) / 1e3,
        "step_kernel_ms_median": statistics.median(k for _s, _e, k in st[:-1]) / 1e3,
    }


def summarize(trace: dict[str, Any]) -> dict[str, Any]:
    """Kernel-family shares, host gaps and the per-step budget of one trace. Pure."""
    ev = gpu_events(trace)
    if not ev:
        return {"kernels": 0, "kernel_time_ms": 0.0}
    fam_us: dict[str, float] = dict.fromkeys(FAMILY_NAMES, 0.0)
    by_name: dict[str, list[float]] = {}
    for _ts, dur, name, fam in ev:
        fam_us[fam] += dur
        by_name.setdefault(name, [0.0, 0.0])
        by_name[name][0] += dur
        by_name[name][1] += 1
    total = sum(fam_us.values())
    busy = busy_intervals(ev)
    span = busy[-1][1] - busy[0][0]
    busy_us = sum(b - a for a, b in busy)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(busy)]
    host_gaps = [g for g in gaps if g >= GAP_US]
    comm = fam_us["communication"] / total if total else 0.0
    sb = step_budget(trace, busy)
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:10]
    return {
        "kernels": len(ev),
        "kernel_time_ms": total / 1e3,
        "span_ms": span / 1e3,
        "gpu_busy_share": busy_us / span if span else 0.0,
        "family_shares": {f: v / total for f, v in fam_us.items() if v} if total else {},
        "host_gaps": len(host_gaps),
        "host_gap_share": sum(host_gaps) / span if span else 0.0,
        "host_gap_median_us": statistics.median(host_gaps) if host_gaps else 0.0,
        **sb,
        "step_budget": budget(sb["step_kernel_ms_median"], sb["step_wall_ms_median"], comm),
        "top_kernels": [
            {"name": n[:160], "time_share": v[0] / total, "calls": int(v[1]), "family": family(n)}
            for n, v in top
        ],
    }


def budget(kernel_ms: float, wall_ms: float, comm_share: float) -> str:
    """A step's verdict: communication-bound (collectives >= 30% of kernel time), kernel-bound (the
    GPU runs kernels >= 85% of the step's wall time) or host-bound (the GPU waits on the host). Pure."""
    if wall_ms <= 0:
        return "unknown"
    if comm_share >= 0.30:
        return "communication-bound"
    return "kernel-bound" if kernel_ms / wall_ms >= 0.85 else "host-bound"


def summarize_traces(paths: Sequence[Path]) -> dict[str, Any]:
    """One window's traces (one per worker) read and summarized; raises one of UNREADABLE."""
    return merge([summarize(load_trace(p)) for p in paths])


def merge(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Traces of one window (one per worker): the busiest worker's figures, the others' count."""
    real = [s for s in summaries if s.get("kernels")]
    if not real:
        return {"kernels": 0, "kernel_time_ms": 0.0}
    best = max(real, key=lambda s: float(s["kernel_time_ms"]))
    return {**best, "traces": len(summaries)}
