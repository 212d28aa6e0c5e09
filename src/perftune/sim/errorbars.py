"""The simulator's own measured error: residuals of a calibration per regime, and the interval they give
every prediction. Pure.

A regime is (concurrency band, dtype, workload): the places where the simulator's error differs (the
prefill/decode split at high load, FP8 kernels, workload shape). After a fit, each training point's
error is kept as the log ratio predicted / measured per metric, grouped by regime. A prediction then
carries an interval from the residuals of its own regime, or of the nearest calibrated one, saying so;
a calibration without residuals (the built-in priors) gives no interval, and the prediction says that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

METRICS = ("tpot_ms", "ttft_ms", "output_tok_s")
BANDS = ((1, 4, "c1-4"), (5, 48, "c5-48"), (49, 1 << 30, "c49+"))
# A measured point is itself noisy (run-to-run, a few %): an interval is never narrower than this.
NOISE_FLOOR = 0.05
# Intervals from the residuals' spread: mean +/- Z x sd of the log ratio (about 95% for a normal).
Z = 2.0
# A dtype no calibrated point has runs on prior factors (the roofline ratio): widen by what such a prior
# missed before it was fitted (FP8 weights + FP8 KV at c=1 on vLLM 0.26.0, H100: TPOT -21%, tok/s +30%).
UNCALIBRATED_DTYPE = 0.25


def band(concurrency: int) -> str:
    return next(name for lo, hi, name in BANDS if lo <= concurrency <= hi)


def dtype_of(weight_dtype: str, kv_dtype: str) -> str:
    """'bf16', 'fp8w', 'fp8kv' or 'fp8w+fp8kv': weights and KV precision as the engine ran them."""
    parts = []
    if weight_dtype != "bf16":
        parts.append(f"{weight_dtype}w")
    if kv_dtype not in ("bf16", "auto"):
        parts.append(f"{kv_dtype}kv")
    return "+".join(parts) or "bf16"


def regime(concurrency: int, weight_dtype: str, kv_dtype: str, workload: str) -> str:
    return f"{band(concurrency)}/{dtype_of(weight_dtype, kv_dtype)}/{workload}"


class Residual(BaseModel):
    """One regime's errors for one metric: log(predicted / measured) over its training points."""

    model_config = ConfigDict(extra="forbid")
    n: int
    mean: float = Field(description="mean log ratio (> 0: the simulator predicts high)")
    sd: float = Field(description="sample standard deviation of the log ratio (0 for one point)")
    worst: float = Field(description="largest |log ratio|")


def summarize(log_ratios: Sequence[float]) -> Residual:
    n = len(log_ratios)
    mean = sum(log_ratios) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in log_ratios) / (n - 1)) if n > 1 else 0.0
    return Residual(n=n, mean=mean, sd=sd, worst=max(abs(x) for x in log_ratios))


def residuals(
    points: Iterable[tuple[str, dict[str, float], dict[str, float]]],
) -> dict[str, dict[str, Residual]]:
    """(regime, predicted, measured) per training point -> per regime, per metric residuals."""
    by: dict[str, dict[str, list[float]]] = {}
    for reg, pred, meas in points:
        for k in METRICS:
            if pred.get(k) and meas.get(k):
                by.setdefault(reg, {}).setdefault(k, []).append(math.log(pred[k] / meas[k]))
    return {r: {k: summarize(v) for k, v in ms.items()} for r, ms in by.items()}


class Interval(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str
    predicted: float
    lo: float | None = Field(None, description="None: no residuals to bound it")
    hi: float | None = None
    regime: str = Field(description="the prediction's regime")
    basis: str = Field(description="the calibrated regime whose residuals gave the interval, or why none")
    extrapolated: bool = Field(description="no calibrated point in the prediction's own regime")

    def contains(self, x: float) -> bool:
        return self.lo is not None and self.hi is not None and self.lo <= x <= self.hi

    def describe(self) -> str:
        if self.lo is None or self.hi is None:
            return f"no interval ({self.basis})"
        where = f"outside calibrated regimes, nearest {self.basis}" if self.extrapolated else self.basis
        return f"interval [{self.lo:.2f}, {self.hi:.2f}] from {where}"


def _distance(a: str, b: str) -> tuple[int, int]:
    """How far two regimes are: (differing dtype or workload, concurrency bands apart)."""
    ba, da, wa = a.split("/")
    bb, db, wb = b.split("/")
    names = [n for _, _, n in BANDS]
    return (int(da != db) + int(wa != wb), abs(names.index(ba) - names.index(bb)))


def interval(
    metric: str, predicted: float, reg: str, table: dict[str, dict[str, Residual]] | None
) -> Interval:
    """The interval a measurement of `metric` should fall in, from the residuals of `reg` (or the nearest
    calibrated regime, flagged as extrapolated)."""
    have = {r: m[metric] for r, m in (table or {}).items() if metric in m}
    if not have:
        return Interval(
            metric=metric,
            predicted=predicted,
            regime=reg,
            basis="the calibration keeps no residuals: fit one with perftune sim calibrate --from BUNDLE",
            extrapolated=True,
        )
    near = min(have, key=lambda r: (_distance(r, reg), r))
    res = have[near]
    spread = Z * res.sd if res.n >= 3 else res.worst
    spread = max(spread, NOISE_FLOOR)
    if near != reg:  # outside calibrated regimes: the error of a neighbour, widened by its own size
        spread += abs(res.mean)
    basis = f"{near} (n={res.n} points)"
    new = dtype_parts(reg) - {p for r in have for p in dtype_parts(r)} - {"bf16"}  # bf16: no factors
    if new:
        spread += UNCALIBRATED_DTYPE
        basis += f"; no calibrated point has {'+'.join(sorted(new))}: its factors are priors, widened"
    # measured = predicted / exp(log ratio)
    lo, hi = predicted / math.exp(res.mean + spread), predicted / math.exp(res.mean - spread)
    return Interval(
        metric=metric,
        predicted=predicted,
        lo=lo,
        hi=hi,
        regime=reg,
        basis=basis,
        extrapolated=near != reg,
    )


def dtype_parts(reg: str) -> set[str]:
    """A regime's dtype parts: {'fp8w', 'fp8kv'} for 'c1-4/fp8w+fp8kv/random', {'bf16'} for bf16."""
    return set(reg.split("/")[1].split("+"))
