"""Phase 6's gate on a training run, pure: the training loss and the first-position acceptance
(acc_0: how often the head's first drafted token is the target's own next token) must be
non-degenerate. A head stuck near 0% acc_0 would only cost verify steps in the engine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# acc_0 at or below this is a degenerate head (a head that learnt nothing guesses among ~1e4-1e5
# tokens; the most frequent token alone is right a few % of the time).
MIN_ACC0 = 0.05
# the loss must fall: its mean over the last fifth of the logged steps at most this share of the first
MAX_LOSS_RATIO = 0.9


@dataclass(frozen=True, slots=True)
class TrainingVerdict:
    passed: bool
    reasons: list[str]
    first_loss: float | None
    last_loss: float | None
    acc0: float | None


def judge(losses: Sequence[float], acc0: float | None) -> TrainingVerdict:
    """Judge a run from its logged training losses (in step order) and its final validation acc_0."""
    reasons: list[str] = []
    finite = [x for x in losses if math.isfinite(x)]
    if len(finite) < len(losses):
        reasons.append(f"{len(losses) - len(finite)} logged loss value(s) are NaN or infinite")
    first = last = None
    if len(finite) < 2:
        reasons.append(f"only {len(finite)} finite loss value(s) logged: no training curve to judge")
    else:
        k = max(1, len(finite) // 5)
        first, last = sum(finite[:k]) / k, sum(finite[-k:]) / k
        if not last <= MAX_LOSS_RATIO * first:
            reasons.append(f"the loss did not fall: {first:.3f} at the start, {last:.3f} at the end")
    if acc0 is None:
        reasons.append("no first-position accuracy (acc_0) was logged")
    elif acc0 <= MIN_ACC0:
        reasons.append(f"acc_0 {acc0:.1%} is degenerate (at or below {MIN_ACC0:.0%})")
    return TrainingVerdict(not reasons, reasons, first, last, acc0)
