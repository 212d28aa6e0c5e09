"""The simulated engine's own step profile: where the modelled step time went (GEMM, attention,
communication, host overhead), decode against prefill, batch, KV and modelled HBM bytes per step."""

from __future__ import annotations

import pytest

from perftune.hardware.ceilings import gpu
from perftune.models.card import WEIGHT_BYTES
from perftune.models.resolve import model_card
from perftune.sim.calibration import Calibration
from perftune.sim.config import SimConfig, parse_vllm_flags
from perftune.sim.core import EngineCore, SimRequest, StepResult
from perftune.sim.timing import StepModel

CARD = model_card("llama-3.1-8b")
H100 = gpu("h100")
CAL = Calibration(gpu=H100.key, jitter_cv=0.0)
SHARES = {"gemm", "attention", "communication", "host_overhead"}


def core(cfg: SimConfig | None = None, cal: Calibration = CAL) -> EngineCore:
    return EngineCore(CARD, H100, cfg or SimConfig(), cal)


def req(rid: int, prompt: int, out: int) -> SimRequest:
    return SimRequest(rid=rid, prompt_len=prompt, max_tokens=out)


def run(c: EngineCore, steps: int) -> list[StepResult]:
    return [c.step() for _ in range(steps)]


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--tensor-parallel-size", "2"],
        ["--enforce-eager"],
        ["--compilation-config", '{"cudagraph_mode": "FULL"}'],
    ],
)
@pytest.mark.parametrize(
    ("n_seqs", "tokens", "dec_kv", "pairs", "decode_only"),
    [
        (1, 1, 129, 0.0, True),
        (64, 64, 64 * 1500, 0.0, True),
        (8, 4000, 2000, 3.5e6, False),
        (600, 600, 600 * 800, 0.0, True),  # beyond the largest captured graph
    ],
)
def test_parts_sum_to_the_step_time(
    flags: list[str], n_seqs: int, tokens: int, dec_kv: int, pairs: float, decode_only: bool
) -> None:
    cfg = parse_vllm_flags(flags)
    m = StepModel.build(CARD, H100, cfg, CAL)
    parts = m.parts(n_seqs, tokens, dec_kv, pairs, decode_only)
    assert len(parts) == 4 and all(p >= 0 for p in parts)
    assert sum(parts) == pytest.approx(m.step_s(n_seqs, tokens, dec_kv, pairs, decode_only), rel=1e-12)
    gemm, attn, comm, host = parts
    assert gemm >= m.weight_read_s and attn > 0 and host >= m.fixed_s
    assert (comm > 0) == (cfg.tensor_parallel_size > 1)


def test_decode_at_batch_one_is_a_weight_read() -> None:
    c = core()
    c.add(req(0, 128, 64))
    first = c.step()  # the prompt
    assert first.tokens == 128 and c.breakdown.mixed_steps == 1
    c.reset_breakdown()
    res = run(c, 20)
    b = c.breakdown.to_json()
    assert b["simulated"] is True and b["steps"] == 20
    assert b["decode_steps"] == 20 and b["mixed_steps"] == 0 and b["prefill_tokens"] == 0
    assert b["decode_time_share"] == pytest.approx(1.0) and b["prefill_time_share"] == pytest.approx(0.0)
    assert b["batch_mean"] == 1.0 and b["batch_max"] == 1 and b["tokens"] == 20
    assert b["time_s"] == pytest.approx(sum(r.duration_s for r in res))
    shares = b["shares"]
    assert set(shares) == SHARES and sum(shares.values()) == pytest.approx(1.0)
    assert shares["gemm"] > 0.5 and shares["communication"] == 0.0
    assert shares["gemm"] > shares["attention"] and shares["gemm"] > shares["host_overhead"]
    # bytes per step: one GPU's weights (bf16, 2 bytes a parameter) plus the context's KV
    weights = CARD.active_params * WEIGHT_BYTES["bf16"]
    kv = CARD.kv_bytes_per_token["bf16"] * (128 + 64)
    assert weights <= b["bytes_per_step"] <= weights + kv
    assert 0.5 * weights < b["bytes_per_step"] < 2 * weights
    # the modelled bandwidth can never beat the calibrated HBM bandwidth it was timed at
    assert 0.5 * H100.hbm_tb_s * CAL.hbm_efficiency < b["modelled_tb_s"] <= H100.hbm_tb_s * CAL.hbm_efficiency
    assert 0.0 < b["kv_usage_mean"] <= b["kv_usage_max"] < 0.01
    assert b["preemptions"] == 0


def test_prefill_requests_make_mixed_steps_with_a_prefill_time_share() -> None:
    c = core(cal=Calibration(gpu=H100.key, jitter_cv=0.02))  # jitter is spread over the parts
    for i in range(4):
        c.add(req(i, 64, 200))
    run(c, 5)
    c.reset_breakdown()
    run(c, 10)  # decode only so far
    assert c.breakdown.mixed_steps == 0
    for i in range(4, 8):
        c.add(req(i, 3000, 16))
    res = run(c, 20)
    b = c.breakdown.to_json()
    assert b["steps"] == 30 and b["decode_steps"] + b["mixed_steps"] == 30
    assert b["mixed_steps"] > 0 and b["prefill_tokens"] >= 4 * 3000 - 4  # whole prompts (less any decodes)
    assert b["prefill_time_share"] > 0 and b["decode_time_share"] > 0
    assert b["decode_time_share"] + b["prefill_time_share"] == pytest.approx(1.0)
    assert sum(b["shares"].values()) == pytest.approx(1.0)
    assert b["shares"]["attention"] > 0
    assert b["batch_max"] == 8 and 4 <= b["batch_mean"] <= 8
    assert b["tokens"] == sum(r.tokens for r in res) + 10 * 4
    assert 0.0 < b["kv_usage_mean"] <= b["kv_usage_max"] <= 1.0


def test_reset_zeroes_the_breakdown_and_counts_preemptions_since_the_reset_only() -> None:
    # KV for about 4000 tokens: eight requests of 500 + 900 tokens preempt one another.
    util = (CARD.total_params * 2.0 + CAL.non_kv_reserve_bytes + 4000 * CARD.kv_bytes_per_token["bf16"]) / (
        CAL.device_bytes(H100)
    )
    c = core(parse_vllm_flags(["--gpu-memory-utilization", f"{util:.4f}", "--max-model-len", "3000"]))
    for i in range(8):
        c.add(req(i, 500, 900))
    steps = 0
    while c.counters.preemptions == 0 and steps < 100_000:
        c.step()
        steps += 1
    before = c.counters.preemptions
    assert before > 0 and c.breakdown.preemptions == before and c.breakdown.steps == steps
    c.reset_breakdown()
    b = c.breakdown.to_json()
    assert b["steps"] == 0 and b["time_s"] == 0.0 and b["preemptions"] == 0
    assert set(b["shares"].values()) == {0.0} and b["bytes_per_step"] == 0.0 and b["modelled_tb_s"] == 0.0
    assert b["batch_mean"] == 0.0 and b["batch_max"] == 0 and b["kv_usage_max"] == 0.0
    c.step()
    assert c.breakdown.steps == 1
    assert c.breakdown.preemptions == c.counters.preemptions - before
    while c.counters.preemptions == before and c.has_work():
        c.step()
    assert c.counters.preemptions > before  # the churn goes on
    assert c.breakdown.to_json()["preemptions"] == c.counters.preemptions - before
    while c.has_work():
        c.step()
    assert c.breakdown.to_json()["preemptions"] == c.counters.preemptions - before
