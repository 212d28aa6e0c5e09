"""Phase 7's gate: does a speculative-decoding config ship? Pure functions over measured A/B results.

Per workload, the candidate (a spec config) is compared with the standing config (no speculation, or
the current method) in the tuner's interleaved trials:
- acceptance: the mean acceptance length the engine reported, per trial; a win when its 95% interval
  lies above the standing config's length (1.0 without speculation: every step yields one token; a
  speculating standing config's measured mean, and not measured when the engine reported none). Two
  speculating configs are compared on the tokens each decode step yielded where both report it: a
  per-draft length is conditional on a draft being proposed, and prompt lookup proposes one on a
  fraction of the steps only (on an H200, ngram K=3 drafted on ~1 step in 6 with length 3.4, i.e. 1.6
  tokens per step; an EAGLE-3 head drafted on every step with length 1.2, i.e. 1.2 tokens per step);
- latency: the focus ratio (TPOT speedup = standing / candidate, or tok/s ratio for a throughput focus)
  with its 95% interval; a win when the interval lies above 1, a loss when it lies below 1.
The suite: the geometric mean of the per-workload focus ratios, its interval from the per-workload
log-ratio intervals. It ships only when every workload shows an acceptance win and a latency win and
the suite wins: a method that loses any workload, or wins one and loses the suite, is do-not-ship and
the standing config is kept. Anything short of a proven win is do-not-ship too, saying what was short.

A workload whose outputs loop (the model repeats a short span: a small model on random token ids, any
model on dummy weights) drafts itself: prompt lookup then accepts nearly every token, and the speedup
says nothing about real traffic. Such a workload is reported but left out of the decision; when no
workload is left, the method is do-not-ship for that reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

Verdict = Literal["ship", "do-not-ship"]
Call = Literal["win", "loss", "inconclusive", "not measured", "degenerate"]

# A text loops when its second half repeats with a period of at most LOOP_MAX_PERIOD characters in at
# least LOOP_MATCH of its positions; a workload is degenerate when LOOP_SHARE of its outputs loop.
LOOP_MAX_PERIOD = 64
LOOP_MIN_CHARS = 48
LOOP_MATCH = 0.95
LOOP_SHARE = 0.5


def loops(text: str) -> bool:
    """Whether an output ends in a short repeating span ("ab ab ab ...", "1111", a looping phrase).
    Natural text and code repeat words, not a fixed period across half the output."""
    tail = text[len(text) // 2 :]
    if len(tail) < LOOP_MIN_CHARS:
        return False
    for p in range(1, min(LOOP_MAX_PERIOD, len(tail) // 3) + 1):
        same = sum(1 for i in range(len(tail) - p) if tail[i] == tail[i + p])
        if same >= LOOP_MATCH * (len(tail) - p):
            return True
    return False


def loop_share(texts: Sequence[str]) -> float | None:
    """The share of outputs that loop (None: no outputs)."""
    return sum(1 for t in texts if loops(t)) / len(texts) if texts else None


@dataclass(frozen=True, slots=True)
class WorkloadAB:
    """One workload's A/B: the candidate's per-trial acceptance lengths and its focus ratio."""

    workload: str
    accept_len: Sequence[float]  # candidate, per trial (empty: the engine reports none)
    ratio: float | None  # focus ratio, > 1 = the candidate is better
    ratio_ci95: tuple[float, float] | None
    # 1.0: the standing config does not speculate; else its measured mean (None: not reported)
    standing_accept_len: float | None = 1.0
    degenerate: str | None = None  # why this workload's outputs are no evidence (they loop), or None
    # what accept_len measures: the per-draft acceptance length, or the tokens each decode step yielded
    # (how two speculating configs compare: see _workload_ab in perftune.campaign.specdec)
    unit: str = "acceptance length"


@dataclass(frozen=True, slots=True)
class WorkloadCall:
    workload: str
    acceptance: Call
    latency: Call
    accept_len_mean: float | None
    accept_len_ci95: tuple[float, float] | None
    reason: str


@dataclass(frozen=True, slots=True)
class SpecDecision:
    verdict: Verdict
    calls: list[WorkloadCall]
    suite_ratio: float | None
    suite_ratio_ci95: tuple[float, float] | None
    reasons: list[str] = field(default_factory=list)


def mean_ci(xs: Sequence[float]) -> tuple[float, tuple[float, float]] | None:
    """Mean with its t 95% interval (None below 2 values)."""
    if len(xs) < 2:
        return None
    m = float(np.mean(xs))
    se = float(np.std(xs, ddof=1)) / math.sqrt(len(xs))
    t = float(stats.t.ppf(0.975, len(xs) - 1))
    return m, (m - t * se, m + t * se)


def _interval_call(ci: tuple[float, float] | None, ref: float) -> Call:
    if ci is None:
        return "not measured"
    if ci[0] > ref:
        return "win"
    if ci[1] < ref:
        return "loss"
    return "inconclusive"


def call_workload(ab: WorkloadAB) -> WorkloadCall:
    if ab.degenerate:
        return WorkloadCall(ab.workload, "degenerate", "degenerate", None, None, ab.degenerate)
    acc = mean_ci(ab.accept_len)
    ref = ab.standing_accept_len
    acc_call = _interval_call(acc[1] if acc and ref is not None else None, ref or 1.0)
    lat_call = _interval_call(ab.ratio_ci95, 1.0)
    parts = []
    if acc is None:
        parts.append("acceptance not reported by the engine" if not ab.accept_len else "one trial only")
    else:
        m, (lo, hi) = acc
        vs = "the standing config's, not reported" if ref is None else f"{ref:.2f}"
        parts.append(f"{ab.unit} {m:.2f} [{lo:.2f}, {hi:.2f}] vs {vs}")
    if ab.ratio is not None and ab.ratio_ci95 is not None:
        parts.append(f"focus ratio {ab.ratio:.3f} [{ab.ratio_ci95[0]:.3f}, {ab.ratio_ci95[1]:.3f}]")
    return WorkloadCall(
        workload=ab.workload,
        acceptance=acc_call,
        latency=lat_call,
        accept_len_mean=acc[0] if acc else None,
        accept_len_ci95=acc[1] if acc else None,
        reason="; ".join(parts),
    )


def suite_ratio(abs_: Sequence[WorkloadAB]) -> tuple[float, tuple[float, float]] | None:
    """Geometric mean of the workloads' focus ratios; its 95% interval from each workload's log-ratio
    half-width taken as 1.96 standard errors, combined as independent."""
    have = [a for a in abs_ if a.ratio and a.ratio_ci95 and a.ratio_ci95[0] > 0]
    if not have or len(have) < len(abs_):
        return None
    logs = [math.log(float(a.ratio or 1.0)) for a in have]
    ses = [(math.log(a.ratio_ci95[1]) - math.log(a.ratio_ci95[0])) / (2 * 1.96) for a in have if a.ratio_ci95]
    m = sum(logs) / len(logs)
    se = math.sqrt(sum(s * s for s in ses)) / len(ses)
    return math.exp(m), (math.exp(m - 1.96 * se), math.exp(m + 1.96 * se))


def decide(abs_: Sequence[WorkloadAB]) -> SpecDecision:
    """The gate over a suite of workloads (see the module docstring)."""
    calls = [call_workload(a) for a in abs_]
    if not calls:
        return SpecDecision("do-not-ship", [], None, None, ["no workload was measured"])
    left_out = [c for c in calls if c.acceptance == "degenerate"]
    out_reasons = [f"{c.workload}: left out, {c.reason}" for c in left_out]
    if len(left_out) == len(calls):
        return SpecDecision(
            "do-not-ship", calls, None, None, ["no workload with non-degenerate outputs", *out_reasons]
        )
    kept = [a for a in abs_ if not a.degenerate]
    calls = [c for c in calls if c.acceptance != "degenerate"]
    suite = suite_ratio(kept)
    reasons: list[str] = []
    lost = [c.workload for c in calls if c.latency == "loss"]
    if lost:
        reasons.append(f"loses latency on {', '.join(lost)}")
    if suite is not None and suite[1][1] < 1.0:
        reasons.append(
            f"loses the suite (geometric mean {suite[0]:.3f} [{suite[1][0]:.3f}, {suite[1][1]:.3f}])"
        )
    elif suite is not None and suite[1][0] <= 1.0:
        reasons.append(f"no suite win (geometric mean {suite[0]:.3f} [{suite[1][0]:.3f}, {suite[1][1]:.3f}])")
    elif suite is None:
        reasons.append("the suite ratio is not measured on every workload")
    for c in calls:
        if c.acceptance != "win":
            reasons.append(f"{c.workload}: acceptance {c.acceptance} ({c.reason})")
        if c.latency in ("inconclusive", "not measured"):
            reasons.append(f"{c.workload}: latency {c.latency} ({c.reason})")
    return SpecDecision(
        "do-not-ship" if reasons else "ship",
        [*calls, *left_out],
        suite[0] if suite else None,
        suite[1] if suite else None,
        reasons + out_reasons,
    )
