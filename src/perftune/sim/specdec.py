"""The simulator's model of speculative decoding at steady-state decode. Pure. SIMULATED.

One verify step runs every sequence's K drafted tokens plus its own through the target: K + 1 tokens
per sequence through the GEMMs (free while the step is bound by reading the weights, paid once the
batch's tokens make it compute-bound), and each sequence's KV read once. Drafting costs per step: an
n-gram lookup on the host per sequence, or K passes of a draft network (given as seconds). A step
yields 1 + sum(per-position acceptance) tokens per sequence. So speculation wins at low concurrency,
where a step costs about the same whatever its token count, and loses past the concurrency where the
verify step turns compute-bound: the crossover the tuner prunes with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from perftune.serving.specdec import tokens_per_step
from perftune.sim.timing import StepModel

# Host cost of one sequence's n-gram lookup per step (prompt lookup over its context on the CPU). An
# assumption of the model, of the order vLLM's numba proposer takes on a 1-2 k token context; it is
# reported with every prediction until a GPU run calibrates it.
NGRAM_LOOKUP_US_PER_SEQ = 15.0


@dataclass(frozen=True, slots=True)
class SpecPrediction:
    """Decode at one concurrency, without and with speculation (every figure simulated)."""

    concurrency: int
    k: int
    tokens_per_step: float  # expected tokens a sequence gains per verify step
    base_step_ms: float  # a plain decode step
    verify_step_ms: float  # the verify step (K + 1 tokens per sequence)
    draft_ms: float  # drafting, per step
    base_tpot_ms: float
    spec_tpot_ms: float
    base_tok_s: float
    spec_tok_s: float

    @property
    def tpot_speedup(self) -> float:
        """> 1: speculation lowers TPOT."""
        return self.base_tpot_ms / self.spec_tpot_ms

    @property
    def tok_s_ratio(self) -> float:
        return self.spec_tok_s / self.base_tok_s


def predict_decode(
    model: StepModel,
    concurrency: int,
    context: int,
    k: int,
    per_pos: Sequence[float],
    *,
    draft_s: float | None = None,
) -> SpecPrediction:
    """Steady-state decode of `concurrency` sequences at `context` tokens each. `per_pos` is the
    acceptance profile (len K); `draft_s` the draft network's time per step (None: n-gram lookup)."""
    if len(per_pos) != k:
        raise ValueError(f"acceptance profile has {len(per_pos)} positions, K is {k}")
    c = concurrency
    kv = c * context
    base = model.step_s(c, c, kv, 0.0, True)
    # the K + 1 query positions of a sequence attend over its context once (KV read once), plus the
    # few (query, key) pairs among the drafted positions themselves
    verify = model.step_s(c, c * (k + 1), kv, c * k * (k + 1) / 2, True)
    draft = draft_s if draft_s is not None else c * NGRAM_LOOKUP_US_PER_SEQ * 1e-6
    if k == 0:
        verify, draft = base, 0.0
    e = tokens_per_step(per_pos)
    spec_step = verify + draft
    return SpecPrediction(
        concurrency=c,
        k=k,
        tokens_per_step=e,
        base_step_ms=base * 1e3,
        verify_step_ms=verify * 1e3,
        draft_ms=draft * 1e3,
        base_tpot_ms=base * 1e3,
        spec_tpot_ms=spec_step / e * 1e3,
        base_tok_s=c / base,
        spec_tok_s=c * e / spec_step,
    )


def crossover(
    model: StepModel,
    context: int,
    k: int,
    per_pos: Sequence[float],
    concurrencies: Sequence[int],
    *,
    draft_s_per_seq: float | None = None,
) -> int | None:
    """The lowest concurrency of the ladder at which speculation no longer lowers TPOT (None: it wins
    at every one)."""
    for c in sorted(concurrencies):
        d = None if draft_s_per_seq is None else draft_s_per_seq * c
        if predict_decode(model, c, context, k, per_pos, draft_s=d).tpot_speedup <= 1.0:
            return c
    return None
