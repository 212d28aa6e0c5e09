"""Pure statistics for accuracy gates: Wilson intervals, paired deltas (Tango score interval), McNemar.

All results are in percentage points. Base and candidate are scored on the same items, so the
comparison is paired: per-item differences, not two independent proportions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import binomtest

Decision = Literal["pass", "fail", "inconclusive"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials, in percentage points.

    ``n == 0`` carries no information: the whole range (0, 100).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 100.0)
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half) * 100.0, min(1.0, centre + half) * 100.0)


class PairedDelta(BaseModel):
    """Candidate minus base on the same items, with its paired uncertainty."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delta_pts: float = Field(description="candidate accuracy minus base accuracy, percentage points")
    ci95: tuple[float, float] = Field(description="Tango 95% paired score interval of delta_pts, points")
    n: int = Field(description="items scored by both")
    b01: int = Field(description="items the base got right and the candidate wrong")
    b10: int = Field(description="items the base got wrong and the candidate right")
    mcnemar_p: float = Field(description="exact McNemar p-value on the discordant pairs (1.0 when none)")


def _tango_z(x12: int, x21: int, n: int, d: float) -> float:
    """Tango's score statistic for H0: p_cand - p_base = d (x12: cand right & base wrong, x21: the
    reverse), with the discordant-cell probability at its maximum likelihood under H0."""
    a = 2 * n
    b = -x12 - x21 + (2 * n - x12 + x21) * d
    c = -x21 * d * (1 - d)
    q21 = (math.sqrt(max(b * b - 4 * a * c, 0.0)) - b) / (2 * a)
    var = n * (2 * q21 + d * (1 - d))
    diff = x12 - x21 - n * d
    if var <= 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / math.sqrt(var)


def tango_interval(x12: int, x21: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Tango's (1998) score interval for a paired difference of proportions, as fractions: the set of
    d with |Z(d)| < z (Z decreases in d, so two bisections). Unlike a bootstrap over items it stays
    honest with few or no discordant pairs: identical answers on 6 items do not prove a 1-point bound."""
    est = (x12 - x21) / n
    eps = 1e-12

    def root(lo: float, hi: float, target: float) -> float:
        for _ in range(100):
            mid = (lo + hi) / 2
            if _tango_z(x12, x21, n, mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = -1.0 if _tango_z(x12, x21, n, -1 + eps) <= z else root(-1 + eps, est, z)
    high = 1.0 if _tango_z(x12, x21, n, 1 - eps) >= -z else root(est, 1 - eps, -z)
    return low, high


def paired_delta(base: Sequence[bool], cand: Sequence[bool]) -> PairedDelta:
    """Paired accuracy delta (cand - base) with Tango's 95% score interval and exact McNemar.

    ``base[i]`` and ``cand[i]`` must be the same item.
    """
    if len(base) != len(cand):
        raise ValueError(f"paired vectors differ in length: base {len(base)}, candidate {len(cand)}")
    n = len(base)
    if n == 0:
        raise ValueError("no items to compare")
    b = np.asarray(base, dtype=bool)
    c = np.asarray(cand, dtype=bool)
    b01 = int(np.sum(b & ~c))
    b10 = int(np.sum(~b & c))
    lo, hi = tango_interval(b10, b01, n)
    discordant = b01 + b10
    p = 1.0 if discordant == 0 else float(binomtest(b10, discordant, 0.5).pvalue)
    return PairedDelta(
        delta_pts=(b10 - b01) / n * 100.0,
        ci95=(lo * 100.0, hi * 100.0),
        n=n,
        b01=b01,
        b10=b10,
        mcnemar_p=min(1.0, p),
    )


def items_to_pass(delta: PairedDelta, tolerance_pts: float, cap: int = 10_000_000) -> int | None:
    """About how many items the same discordance rates would need for the interval's lower bound to
    clear -tolerance (None: the point estimate itself is beyond it, more items cannot pass it).
    Zero discordance on n items counts as less than one in n+1, so the estimate stays finite."""
    n0 = delta.n
    if delta.delta_pts <= -tolerance_pts:
        return None

    def lower(n: int) -> float:
        b01 = max(delta.b01 * n / n0, 0.0)
        b10 = delta.b10 * n / n0
        if delta.b01 + delta.b10 == 0:
            b01 = b10 = n / (2 * (n0 + 1))  # at most about one discordant pair per n0 + 1 items
        return tango_interval(round(b10), round(b01), n)[0] * 100.0

    lo, hi = n0, n0
    while lower(hi) < -tolerance_pts:
        lo, hi = hi, hi * 2
        if hi > cap:
            return None
    while hi - lo > max(1, lo // 100):
        mid = (lo + hi) // 2
        if lower(mid) < -tolerance_pts:
            lo = mid
        else:
            hi = mid
    return hi


def decide(delta: PairedDelta, tolerance_pts: float) -> Decision:
    """The gate rule, on the 95% interval of the paired delta and a tolerated loss ``tolerance_pts``.

    - "pass": the lower bound is >= -tolerance (any plausible loss is within tolerance);
    - "fail": the upper bound is < -tolerance (the loss exceeds tolerance even at best);
    - "inconclusive": otherwise - the interval straddles -tolerance. The gate treats this as not
      passed; the remedy is more items (a narrower interval), see ``decision_reason``.
    """
    if tolerance_pts < 0:
        raise ValueError(f"tolerance must be >= 0 points, got {tolerance_pts}")
    lo, hi = delta.ci95
    if lo >= -tolerance_pts:
        return "pass"
    if hi < -tolerance_pts:
        return "fail"
    return "inconclusive"


def decision_reason(delta: PairedDelta, tolerance_pts: float, decision: Decision) -> str:
    """One line explaining ``decision`` for a report or a gate message."""
    lo, hi = delta.ci95
    where = f"delta {delta.delta_pts:+.1f} pts, 95% CI [{lo:+.1f}, {hi:+.1f}] on {delta.n} items"
    if decision == "pass":
        return f"{where}: lower bound >= -{tolerance_pts:g} pts tolerance"
    if decision == "fail":
        return f"{where}: upper bound < -{tolerance_pts:g} pts tolerance"
    return (
        f"{where}: interval straddles -{tolerance_pts:g} pts tolerance, not passed; "
        "raise the item count to narrow the interval"
    )
