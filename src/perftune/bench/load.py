"""Pure load schedules and the client-health verdict.

Open loop: send times are precomputed absolute offsets, so a slow client shows up as schedule lag
instead of silently lowering the offered load. Closed loop: a slot is refilled the moment it frees;
the delay between "slot freed" and "request on the wire" is the client's own queueing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Arrival = Literal["constant", "poisson", "gamma"]

# A run where the client itself fell behind is not a server result.
MAX_P99_LAG_MS = 5.0
MIN_ACHIEVED_RATE_FRACTION = 0.97


def arrival_offsets(
    n: int, rate: float, arrival: Arrival = "poisson", *, burstiness: float = 1.0, seed: int = 0
) -> list[float]:
    """Send offsets in seconds from the trial start, first at 0.

    Gaps are scaled so the schedule's own mean rate is exactly `rate`: with a finite request count a raw
    Poisson draw is off by ~1/sqrt(n), which would otherwise read as the client missing its target.
    gamma: shape `burstiness` (1 = Poisson, < 1 burstier, > 1 smoother), same mean rate.
    """
    if n <= 0:
        return []
    if rate <= 0:
        raise ValueError("rate must be > 0 req/s")
    if n == 1:
        return [0.0]
    rng = np.random.default_rng(seed)
    if arrival == "constant":
        gaps = np.full(n - 1, 1.0 / rate)
    elif arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, n - 1)
    else:
        if burstiness <= 0:
            raise ValueError("burstiness must be > 0")
        gaps = rng.gamma(burstiness, 1.0 / (rate * burstiness), n - 1)
    gaps *= ((n - 1) / rate) / gaps.sum()
    return [0.0, *np.cumsum(gaps).tolist()]


class LoadReport(BaseModel):
    """How faithfully the client delivered the load it was asked for."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["closed", "open"] = Field(description="closed loop (fixed concurrency) or open loop (rate)")
    concurrency: int | None = Field(description="closed loop: number of in-flight slots")
    requested_rate: float | None = Field(description="open loop: requested request rate, req/s")
    achieved_rate: float | None = Field(
        description="open loop: (n - 1) / (last send - first send), measured at the wire, req/s"
    )
    lag_p50_ms: float = Field(description="median of actual send minus scheduled send, ms")
    lag_p99_ms: float = Field(description="99th percentile of actual send minus scheduled send, ms")
    lag_max_ms: float = Field(description="largest schedule lag, ms")
    valid: bool = Field(description="false when the client fell behind: its numbers are not a server result")
    invalid_reasons: list[str] = Field(description="why the run is invalid, empty when valid")


def assess_load(
    sched_ns: Sequence[int],
    send_ns: Sequence[int],
    *,
    concurrency: int | None,
    requested_rate: float | None,
) -> LoadReport:
    """Judge the client from scheduled vs actual send times (same clock, ns)."""
    lags = np.asarray([(b - a) / 1e6 for a, b in zip(sched_ns, send_ns, strict=True)], dtype=np.float64)
    if lags.size == 0:
        lags = np.zeros(1)
    p50, p99 = (float(x) for x in np.percentile(lags, [50, 99]))
    reasons: list[str] = []
    if p99 > MAX_P99_LAG_MS:
        reasons.append(f"client schedule lag p99 {p99:.2f} ms > {MAX_P99_LAG_MS} ms")
    achieved: float | None = None
    mode: Literal["closed", "open"] = "closed" if requested_rate is None else "open"
    if requested_rate is not None and len(send_ns) >= 2:
        span_s = (max(send_ns) - min(send_ns)) / 1e9
        achieved = (len(send_ns) - 1) / span_s if span_s > 0 else float("inf")
        if achieved < MIN_ACHIEVED_RATE_FRACTION * requested_rate:
            reasons.append(
                f"achieved {achieved:.2f} req/s < {MIN_ACHIEVED_RATE_FRACTION:.0%} "
                f"of requested {requested_rate:g}"
            )
    return LoadReport(
        mode=mode,
        concurrency=concurrency,
        requested_rate=requested_rate,
        achieved_rate=achieved,
        lag_p50_ms=p50,
        lag_p99_ms=p99,
        lag_max_ms=float(lags.max()),
        valid=not reasons,
        invalid_reasons=reasons,
    )
