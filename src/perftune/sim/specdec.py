"""The simulator's model of speculative decoding at steady-state decode. Pure. SIMULATED.

One verify step runs every sequence's K drafted tokens plus its own through the target: K + 1 tokens
per sequence through the GEMMs (free while the step is bound by reading the weights, paid once the
batch's tokens make it compute-bound), and each sequence's KV read once. A speculating step also costs
the engine time a plain step does not: drafting (an n-gram lookup on the host, or K passes of a draft
network, given as seconds) and the engine's own bookkeeping around a verify step (for vLLM 0.26.0's
n-gram method, measured: see NGRAM_STEP_OVERHEAD_MS). A step yields 1 + coverage x sum(per-position
acceptance) tokens per sequence, where coverage is the share of steps that carry a draft at all (prompt
lookup drafts only where the context holds a match). So speculation wins at low concurrency when a step
costs about the same whatever its token count and the drafts cover enough steps, and loses past the
concurrency where the verify step turns compute-bound: the crossover the tuner prunes with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from perftune.serving.specdec import tokens_per_step
from perftune.sim.timing import StepModel

# What a vLLM 0.26.0 n-gram speculating step costs beyond a plain step, per step: a + b x concurrency.
# Fitted (least squares) to the 34 spec trials of one GPU run: 1x H200, SmolLM2-135M-Instruct and the
# dummy Llama-3.1-8B, ngram K=1..5, chat/code/random, c=1 and 32, where the cost is (spec TPOT x tokens
# per step) - standing TPOT (benchmarks/results/2026-12-03-h200-vllm-0.26.0-specdec). Held out one
# arm-workload-concurrency group at a time, the spec TPOT it predicts is off by 21% on average
# (`python benchmarks/spec_sim_vs_gpu.py`). It replaces an assumed 15 us per sequence of host lookup,
# two orders of magnitude short (76% off on the same trials).
NGRAM_STEP_OVERHEAD_MS = 2.95
NGRAM_STEP_OVERHEAD_MS_PER_SEQ = 0.095


def ngram_overhead_s(concurrency: int) -> float:
    return (NGRAM_STEP_OVERHEAD_MS + NGRAM_STEP_OVERHEAD_MS_PER_SEQ * concurrency) * 1e-3


@dataclass(frozen=True, slots=True)
class SpecPrediction:
    """Decode at one concurrency, without and with speculation (every figure simulated)."""

    concurrency: int
    k: int
    tokens_per_step: float  # expected tokens a sequence gains per step (1 + coverage x sum(per_pos))
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
    coverage: float = 1.0,
) -> SpecPrediction:
    """Steady-state decode of `concurrency` sequences at `context` tokens each. `per_pos` is the
    acceptance profile per draft (len K); `coverage` the share of steps that carry a draft; `draft_s`
    the draft network's time per step (None: n-gram, its measured step overhead)."""
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage {coverage} is not a share in [0, 1]")
    if len(per_pos) != k:
        raise ValueError(f"acceptance profile has {len(per_pos)} positions, K is {k}")
    c = concurrency
    kv = c * context
    base = model.step_s(c, c, kv, 0.0, True)
    # the K + 1 query positions of a sequence attend over its context once (KV read once), plus the
    # few (query, key) pairs among the drafted positions themselves
    verify = model.step_s(c, c * (k + 1), kv, c * k * (k + 1) / 2, True)
    draft = draft_s if draft_s is not None else ngram_overhead_s(c)
    if k == 0:
        verify, draft = base, 0.0
    e = 1.0 + coverage * (tokens_per_step(per_pos) - 1.0)
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
    coverage: float = 1.0,
) -> int | None:
    """The lowest concurrency of the ladder at which speculation no longer lowers TPOT (None: it wins
    at every one)."""
    for c in sorted(concurrencies):
        d = None if draft_s_per_seq is None else draft_s_per_seq * c
        if predict_decode(model, c, context, k, per_pos, draft_s=d, coverage=coverage).tpot_speedup <= 1.0:
            return c
    return None
