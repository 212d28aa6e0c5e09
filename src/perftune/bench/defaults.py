"""High-concurrency bench defaults, chosen from measured run-to-run variance. Pure.

How many trials does a closed-loop bench need so that a 3% difference between two configs is called
with its 95% interval? That depends on how much the same config varies from run to run on one server,
which grows with concurrency (the GPU's power cap, the first wave's spread, the API server's load).
Measured on one H200, vLLM 0.26.0, dummy Llama-3.1-8B, random 1024/128, prefix cache reset, perftune's
default accounting, one trial per run, 5 interleaved rounds (benchmarks/results/
2026-12-02-h200-vllm-0.26.0-client-compare): the coefficient of variation of output tok/s and of the
median TPOT per concurrency band. A band's trials are the fewest n >= 3 for which the Welch interval
of a ratio of two n-trial means, t(0.975, 2n-2) * CV * sqrt(2/n), is at most 3% wide on each side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

DETECT = 0.03  # the difference a default run must be able to call
MAX_TRIALS = 12
SOURCE = "benchmarks/results/2026-12-02-h200-vllm-0.26.0-client-compare"


@dataclass(frozen=True)
class Band:
    up_to: int  # concurrency, inclusive
    cv_tok_s: float
    cv_tpot: float
    requests_measured: int


# (measured; below c=64 the suite's 3 trials stand: the variance there was never the binding limit)
BANDS = (
    Band(64, 0.0148, 0.0969, 128),
    Band(256, 0.0169, 0.0612, 512),
    Band(10**9, 0.0277, 0.0464, 512),
)


def trials_to_resolve(cv: float, detect: float = DETECT) -> int:
    """The fewest trials (>= 3, <= MAX_TRIALS) whose two-arm 95% ratio interval is within +/- detect."""
    for n in range(3, MAX_TRIALS + 1):
        if float(stats.t.ppf(0.975, 2 * n - 2)) * cv * math.sqrt(2 / n) <= detect:
            return n
    return MAX_TRIALS


@dataclass(frozen=True)
class Defaults:
    trials: int
    min_requests: int
    why: str


def closed_loop_defaults(concurrency: int) -> Defaults:
    """Trials and requests per trial for a closed-loop bench at this concurrency (output tok/s claim)."""
    if concurrency < 64:
        return Defaults(3, 2 * concurrency, "below c=64: 3 trials")
    band = next(b for b in BANDS if concurrency <= b.up_to)
    n = trials_to_resolve(band.cv_tok_s)
    return Defaults(
        n,
        2 * concurrency,
        f"c={concurrency}: run-to-run CV of output tok/s {band.cv_tok_s:.1%} measured at this load "
        f"({SOURCE}), so {n} trials call a {DETECT:.0%} difference at 95%; >= 2 requests per slot",
    )
