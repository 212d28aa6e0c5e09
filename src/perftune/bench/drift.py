"""Drift between trials made visible: the GPU's state, the engine's own figures and the first wave.

Two runs of the same config on one server can disagree by several percent at high concurrency: the
GPU's power cap lowers its SM clock as load rises, and one run's first wave can finish over 8-14 s
instead of 0.4-1.9 s (issue 23). Each trial records what NVML read (telemetry.gpu), what the engine's
/metrics said (telemetry.prom.trial_figures) and when its first wave of requests finished; `assess`
turns that into flags (the trial is not comparable: its tier is DRAFT) and notes. Pure.

A hardware slowdown (thermal, HW slowdown, power brake) flags its trial. The software power cap does
not by itself: on one H200 it was active in 85-98% of samples of every perftune trial at c=64-512
(median SM clock 1,485-1,552 of 1,980 MHz), a steady state, and flagging it would make every loaded
cell DRAFT; it is noted, and the trials' median SM clocks more than 5% apart are flagged as drift.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from perftune.bench.records import RequestRecord
from perftune.telemetry.gpu import HARD_REASONS, HARD_SHARE, GpuTrialState
from perftune.telemetry.prom import EngineTrialFigures

CLOCK_DRIFT = 0.05  # median SM clocks of a cell's trials more than 5% apart: the trials drifted
WAVE_RATIO = 2.0  # a first wave finishing over 2x the others' median ...
WAVE_MIN_S = 1.0  # ... and over 1 s later is an outlier


def first_wave(records: Sequence[RequestRecord], concurrency: int | None) -> tuple[float, float] | None:
    """Closed loop: (first, last) completion of the first `concurrency` requests sent, in seconds
    from the trial's first scheduled send. None in open loop or without a full wave."""
    if not concurrency or len(records) < concurrency:
        return None
    t0 = min(r.t_sched_ns for r in records)
    wave = sorted(records, key=lambda r: (r.t_send_ns, r.idx))[:concurrency]
    ends = [(r.t_end_ns - t0) / 1e9 for r in wave if r.t_end_ns]
    if not ends:
        return None
    return min(ends), max(ends)


def assess(
    gpus: Sequence[GpuTrialState | None],
    engines: Sequence[EngineTrialFigures | None],
    waves: Sequence[tuple[float, float] | None],
) -> tuple[dict[int, list[str]], list[str], list[str]]:
    """(per-trial flags, run-wide flags, notes) from each trial's drift facts."""
    per: dict[int, list[str]] = {}
    flags: list[str] = []
    notes: list[str] = []
    capped = []
    for i, g in enumerate(gpus):
        if g is None or not g.throttled:
            continue
        if any(r in HARD_REASONS for r in g.reasons if g.reasons[r] >= HARD_SHARE):
            per.setdefault(i, []).append(f"trial {i}: GPU throttled ({g.why})")
        else:  # the power cap: steady under load on an H200; the clock-drift check judges it
            capped.append(f"{i} ({g.why})")
    if capped:
        notes.append(
            "GPU power-capped in trial(s) " + "; ".join(capped) + ": the trials are compared by "
            "their median SM clocks (a drift above 5% is flagged)"
        )
    clocks = [(i, g.sm_clock_mhz["median"]) for i, g in enumerate(gpus) if g and g.sm_clock_mhz]
    if len(clocks) >= 2:
        lo, hi = min(c for _, c in clocks), max(c for _, c in clocks)
        text = ", ".join(f"{c:,.0f}" for _, c in clocks)
        if hi > 0 and (hi - lo) / hi > CLOCK_DRIFT:
            flags.append(
                f"GPU clock drifted across trials: median SM clock {text} MHz (> {CLOCK_DRIFT:.0%} apart)"
            )
        else:
            notes.append(f"median SM clock per trial {text} MHz")
    unavailable = {g.note for g in gpus if g is not None and not g.available and g.note}
    notes.extend(f"GPU state: {n}" for n in sorted(unavailable))
    lasts = [(i, w[1]) for i, w in enumerate(waves) if w is not None]
    if len(lasts) >= 3:
        for i, last in lasts:
            others = statistics.median(v for j, v in lasts if j != i)
            if last > WAVE_RATIO * others and last - others > WAVE_MIN_S:
                w = waves[i]
                assert w is not None
                per.setdefault(i, []).append(
                    f"trial {i}: first wave finished over {w[0]:.1f}-{w[1]:.1f} s, against a median "
                    f"last completion of {others:.1f} s in the other trials (outlier)"
                )
    if lasts:
        notes.append(
            "first wave finished by "
            + ", ".join(f"{v:.2f}" for _, v in lasts)
            + " s per trial (closed loop: the first `concurrency` requests sent)"
        )
    cpu = [e.server_cpu_s for e in engines if e is not None and e.server_cpu_s is not None]
    if cpu:
        notes.append("server CPU per trial " + ", ".join(f"{c:.2f}" for c in cpu) + " s (its /metrics)")
    steps = [e.step_ms_mean for e in engines if e is not None and e.step_ms_mean is not None]
    if steps:
        notes.append("engine mean step per trial " + ", ".join(f"{s:.2f}" for s in steps) + " ms")
    return per, flags, notes
