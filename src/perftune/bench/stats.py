"""Pure statistics: distribution summaries and across-trial t-intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats as _sps

PERCENTILES = (50, 90, 95, 99)


class Dist(BaseModel):
    """Summary of one distribution (e.g. all TTFTs of a trial)."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(description="number of samples")
    mean: float | None = Field(description="arithmetic mean")
    std: float | None = Field(description="sample standard deviation (ddof=1); None for n < 2")
    min: float | None = Field(description="smallest sample")
    max: float | None = Field(description="largest sample")
    p50: float | None = Field(description="median (linear interpolation)")
    p90: float | None = Field(description="90th percentile")
    p95: float | None = Field(description="95th percentile")
    p99: float | None = Field(description="99th percentile")


def dist(values: Sequence[float]) -> Dist:
    if len(values) == 0:
        return Dist(n=0, mean=None, std=None, min=None, max=None, p50=None, p90=None, p95=None, p99=None)
    a = np.asarray(values, dtype=np.float64)
    p = np.percentile(a, PERCENTILES)
    return Dist(
        n=int(a.size),
        mean=float(a.mean()),
        std=float(a.std(ddof=1)) if a.size > 1 else None,
        min=float(a.min()),
        max=float(a.max()),
        p50=float(p[0]),
        p90=float(p[1]),
        p95=float(p[2]),
        p99=float(p[3]),
    )


class AcrossTrials(BaseModel):
    """One headline metric across trials: mean, std, CV and a 95% Student-t interval of the mean."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(description="number of trials with a value")
    mean: float | None = Field(description="mean of the per-trial values")
    std: float | None = Field(description="sample std of the per-trial values (ddof=1); None for n < 2")
    cv: float | None = Field(description="coefficient of variation std/mean")
    ci95: tuple[float, float] | None = Field(
        description="95% t-interval of the mean: mean -/+ t(0.975, n-1) * std / sqrt(n); None for n < 2"
    )
    ci95_half_width: float | None = Field(description="half width of ci95")
    trials: list[float | None] = Field(description="the per-trial values, in trial order")


def across_trials(values: Sequence[float | None]) -> AcrossTrials:
    have = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(have)
    if n == 0:
        return AcrossTrials(
            n=0, mean=None, std=None, cv=None, ci95=None, ci95_half_width=None, trials=list(values)
        )
    a = np.asarray(have)
    mean = float(a.mean())
    if n < 2:
        return AcrossTrials(
            n=1, mean=mean, std=None, cv=None, ci95=None, ci95_half_width=None, trials=list(values)
        )
    std = float(a.std(ddof=1))
    half = float(_sps.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return AcrossTrials(
        n=n,
        mean=mean,
        std=std,
        cv=std / mean if mean else None,
        ci95=(mean - half, mean + half),
        ci95_half_width=half,
        trials=list(values),
    )


# ---------------------------------------------------------------- measurement-quality rules (pure)

WARMUP_TOLERANCE = 0.10  # two consecutive warmup rounds within 10% of each other: the engine is warm
OUTLIER_TOLERANCE = 0.15  # a trial more than 15% off the median of all trials is an outlier
HIGH_CV = 0.10  # across-trial CV above 10% on output tok/s or median TPOT: the trials disagree


def rel_diff(a: float, b: float) -> float:
    """|a - b| relative to the larger magnitude (0 when both are 0)."""
    big = max(abs(a), abs(b))
    return abs(a - b) / big if big else 0.0


def warmup_stable(values: Sequence[float], tol: float = WARMUP_TOLERANCE) -> bool:
    """Stability rule: the last two warmup rounds' values agree within `tol` (relative to the larger)."""
    return len(values) >= 2 and rel_diff(values[-2], values[-1]) <= tol


def outlier_trials(values: Sequence[float | None], tol: float = OUTLIER_TOLERANCE) -> list[int]:
    """Outlier rule: indexes of trials whose value is more than `tol` off the median of ALL trials.

    Needs >= 3 trials with a value: with two, neither can be told from the other (the CV rule covers it).
    The median of all trials, not of the others: with three trials one cold trial would otherwise drag
    the "median of the others" of each good trial halfway towards itself and flag it too.
    """
    have = [(i, float(v)) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(have) < 3:
        return []
    med = float(np.median([v for _, v in have]))
    if med == 0:
        return []
    return [i for i, v in have if abs(v - med) / abs(med) > tol]


def high_cv(metrics: dict[str, AcrossTrials], limit: float = HIGH_CV) -> dict[str, float]:
    """The metrics whose across-trial CV exceeds `limit` (metric -> CV)."""
    return {k: a.cv for k, a in metrics.items() if a.cv is not None and abs(a.cv) > limit}
