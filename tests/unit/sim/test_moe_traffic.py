"""MoE weight traffic as it really runs: a step reads the routed experts its tokens were routed to,
E x (1 - (1 - top_k/E)^T) per MoE layer for T tokens, so expert traffic grows with the batch. Hand-computed
against the catalog's Mixtral-8x7B (8 experts, top-2) and DeepSeek-V2-Lite (64 routed, top-6, MLA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from perftune.hardware.ceilings import gpu
from perftune.models.card import WEIGHT_BYTES
from perftune.models.resolve import model_card
from perftune.sim.calibration import for_gpu
from perftune.sim.config import SimConfig, parse_vllm_flags
from perftune.sim.timing import StepModel

H100 = gpu("h100")


def _model(name: str) -> tuple[StepModel, object]:
    card = model_card(name)
    return StepModel.build(card, H100, SimConfig(), for_gpu(H100)), card


def test_one_token_reads_the_active_parameters_and_a_batch_reads_every_expert() -> None:
    m, card = _model("mixtral-8x7b")
    bpp = WEIGHT_BYTES["bf16"]
    assert m.route_share == pytest.approx(2 / 8)
    # T=1: the routed share touched is top_k/E, i.e. exactly the active parameters
    assert m.weight_bytes_at(1) == pytest.approx(card.active_params * bpp)  # type: ignore[attr-defined]
    # T=4: 1 - 0.75^4 = 0.68359375 of the experts
    assert m.experts_touched(4) == pytest.approx(1 - 0.75**4) == pytest.approx(0.68359375)
    # T=64: every expert, to 1e-7
    routed = card.params.routed_experts * bpp  # type: ignore[attr-defined]
    assert m.weight_bytes_at(64) == pytest.approx(m.weight_bytes + routed, rel=1e-7)
    assert m.weight_bytes_at(64) / m.weight_bytes_at(1) > 3.3  # 46.7 GB against 12.9 GB of bf16 weights


def test_many_small_experts_fill_in_slowly() -> None:
    m, _ = _model("deepseek-v2-lite")
    assert m.route_share == pytest.approx(6 / 64)
    assert m.experts_touched(16) == pytest.approx(1 - (58 / 64) ** 16)  # 0.793...
    touched = [m.experts_touched(t) for t in (1, 2, 4, 8, 16, 32, 64)]
    assert touched == sorted(touched) and touched[-1] < 1.0


def test_a_dense_model_reads_the_same_weights_whatever_the_batch() -> None:
    m, card = _model("llama-3.1-8b")
    assert m.routed_bytes == 0.0 and m.experts_touched(256) == 0.0
    assert m.weight_bytes_at(1) == m.weight_bytes_at(256) == pytest.approx(card.active_params * 2)  # type: ignore[attr-defined]


def test_a_moe_decode_step_grows_with_concurrency_where_a_dense_one_barely_does() -> None:
    moe, _ = _model("mixtral-8x7b")
    dense, _ = _model("llama-3.1-8b")

    def step_ms(m: StepModel, c: int) -> float:
        return m.step_s(c, c, c * 1024, 0.0, True) * 1e3

    assert step_ms(moe, 16) / step_ms(moe, 1) > 2.5  # the experts read go from 2 to ~8 of 8
    assert step_ms(dense, 16) / step_ms(dense, 1) < 1.3  # only KV and per-sequence costs grow


def test_expert_parallel_trades_the_moe_all_reduce_for_an_all_to_all() -> None:
    from perftune.sim.config import parse_vllm_flags

    card = model_card("mixtral-8x7b")  # 32 layers, all MoE, top-2, hidden 4096
    h = gpu("h100")
    tp = StepModel.build(card, h, parse_vllm_flags(["-tp", "4"]), for_gpu(h))
    ep = StepModel.build(card, h, parse_vllm_flags(["-tp", "4", "--enable-expert-parallel"]), for_gpu(h))
    link = h.interconnect_gb_s / 2 * 1e9
    # per token: TP all-reduces 2 x 32 of 4096 x 2 bytes at 2(tp-1)/tp; EP keeps 32 of them and adds a
    # dispatch+combine of top-2 vectors per MoE layer
    ring = 2 * 3 / 4
    assert tp.allreduce_s_per_token == pytest.approx(ring * 64 * 4096 * 2 / link)
    assert ep.allreduce_s_per_token == pytest.approx((ring * 32 * 4096 * 2 + ring * 32 * 2 * 4096 * 2) / link)
    dense = StepModel.build(
        model_card("llama-3.1-8b"), h, parse_vllm_flags(["-tp", "4", "--enable-expert-parallel"]), for_gpu(h)
    )
    assert dense.allreduce_s_per_token == pytest.approx(
        StepModel.build(
            model_card("llama-3.1-8b"), h, parse_vllm_flags(["-tp", "4"]), for_gpu(h)
        ).allreduce_s_per_token
    )


def test_routing_spread_interpolates_between_shared_and_independent_experts() -> None:
    card = model_card("deepseek-v2-lite")
    shared = StepModel.build(
        card, H100, SimConfig(), for_gpu(H100).model_copy(update={"moe_routing_spread": 0.0})
    )
    half = StepModel.build(
        card, H100, SimConfig(), for_gpu(H100).model_copy(update={"moe_routing_spread": 0.5})
    )
    # spread 0: 16 tokens read what one does; spread 0.5: what 1 + 0.5 x 15 = 8.5 independent tokens do
    assert shared.experts_touched(16) == pytest.approx(6 / 64)
    assert half.experts_touched(16) == pytest.approx(1 - (58 / 64) ** 8.5)


def test_the_moe_gemm_rate_slows_prefill_not_a_small_decode_and_leaves_dense_models_alone() -> None:
    """moe_gemm_efficiency divides the routed experts' FLOP rate: a prefill-sized step (FLOP bound) slows
    by the routed share of its FLOPs; a 16-token decode step (weight-read bound) does not move; a dense
    model has no routed FLOPs to slow."""
    card = model_card("deepseek-v2-lite")
    cal = for_gpu(H100)
    fast = StepModel.build(card, H100, SimConfig(), cal)
    slow = StepModel.build(card, H100, SimConfig(), cal.model_copy(update={"moe_gemm_efficiency": 0.5}))
    routed = card.params.routed_experts_active / card.active_params
    assert 0.3 < routed < 1.0
    assert slow.flop_s_per_token == pytest.approx(fast.flop_s_per_token * (1 + routed))
    assert slow.step_s(16, 16384, 0, 0.0, False) > 1.2 * fast.step_s(16, 16384, 0, 0.0, False)
    decode = (16, 16, 16 * 1024, 0.0, True)  # 16 sequences, one token each, 1,024 of context each
    assert slow.step_s(*decode) == pytest.approx(fast.step_s(*decode))
    dense = model_card("llama-3.1-8b")
    a = StepModel.build(dense, H100, SimConfig(), cal)
    b = StepModel.build(dense, H100, SimConfig(), cal.model_copy(update={"moe_gemm_efficiency": 0.5}))
    assert a.flop_s_per_token == b.flop_s_per_token


def test_the_moe_layer_overhead_is_paid_per_moe_layer_every_step_and_never_by_a_dense_model() -> None:
    cal = for_gpu(H100)
    card = model_card("deepseek-v2-lite")  # 26 MoE layers
    base = StepModel.build(card, H100, SimConfig(), cal.model_copy(update={"moe_layer_overhead_us": 0.0}))
    more = StepModel.build(card, H100, SimConfig(), cal.model_copy(update={"moe_layer_overhead_us": 40.0}))
    for n, tokens in ((1, 1), (64, 64), (4, 2048)):
        delta = more.step_s(n, tokens, 1024 * n, 0.0, True) - base.step_s(n, tokens, 1024 * n, 0.0, True)
        assert delta == pytest.approx(26 * 40e-6)  # 1.04 ms whatever the batch
    dense = model_card("llama-3.1-8b")
    a = StepModel.build(dense, H100, SimConfig(), cal.model_copy(update={"moe_layer_overhead_us": 0.0}))
    b = StepModel.build(dense, H100, SimConfig(), cal.model_copy(update={"moe_layer_overhead_us": 40.0}))
    assert a.step_s(8, 8, 8192, 0.0, True) == b.step_s(8, 8, 8192, 0.0, True)


def test_an_ungraphed_moe_step_takes_the_longer_of_its_host_launches_and_its_gpu_work() -> None:
    """vLLM runs a step of more tokens than its largest captured graph (512 by default) op by op: the MoE
    layers' host work (26 layers x 2,780 us here: 72.3 ms) overlaps the GPU's, so a short prefill waits
    for the host and a long one does not; a graphed step never pays it, nor does a dense model."""
    cal = for_gpu(H100).model_copy(update={"moe_ungraphed_layer_us": 2780.0})
    card = model_card("deepseek-v2-lite")
    on = StepModel.build(card, H100, SimConfig(), cal)
    off = StepModel.build(card, H100, SimConfig(), cal.model_copy(update={"moe_ungraphed_layer_us": 0.0}))
    host = 26 * 2780e-6
    assert on.ungraphed_host_s == pytest.approx(host)

    def gpu_s(m: StepModel, n: int, tokens: int, pairs: float) -> float:
        return sum(m.parts(n, tokens, 0, pairs, False)[:3])

    # a 768-token prefill: over the 512-token graphs, GPU work well under the host's 72.3 ms
    short = (1, 768, 0, 768 * 769 / 2, False)
    assert not on.graphed(False, 768)
    assert gpu_s(on, 1, 768, short[3]) < host
    assert on.step_s(*short) - off.step_s(*short) == pytest.approx(host - gpu_s(off, 1, 768, short[3]))
    # the same prompt at 512 tokens is graphed in pieces: nothing extra
    assert on.graphed(False, 512)
    assert on.step_s(1, 512, 0, 512 * 513 / 2, False) == off.step_s(1, 512, 0, 512 * 513 / 2, False)
    # a 16,384-token prefill's GPU work outlasts the launches: hidden
    long = (2, 16384, 0, 2 * 8192 * 8193 / 2, False)
    assert gpu_s(off, 2, 16384, long[3]) > host
    assert on.step_s(*long) == off.step_s(*long)
    # graphs up to 2048 tokens make the 768-token prefill graphed again
    big = StepModel.build(card, H100, SimConfig(max_cudagraph_capture_size=2048), cal)
    assert big.graphed(False, 768) and big.step_s(*short) == pytest.approx(off.step_s(*short))
    # decode-only batches are graphed; eager mode graphs nothing; FULL runs mixed batches eagerly
    assert on.step_s(64, 64, 64 * 1024, 0.0, True) == off.step_s(64, 64, 64 * 1024, 0.0, True)
    eager = StepModel.build(card, H100, SimConfig(cudagraph_mode="NONE"), cal)
    full = StepModel.build(card, H100, SimConfig(cudagraph_mode="FULL"), cal)
    assert not eager.graphed(True, 1) and not full.graphed(False, 64) and full.graphed(True, 64)
    dense = model_card("llama-3.1-8b")
    a = StepModel.build(dense, H100, SimConfig(), cal)
    b = StepModel.build(dense, H100, SimConfig(), cal.model_copy(update={"moe_ungraphed_layer_us": 0.0}))
    assert a.ungraphed_host_s == 0.0 and a.step_s(*short) == b.step_s(*short)


def test_calibrating_from_a_moe_bundle_fits_the_ungraphed_host_time(tmp_path: Path) -> None:
    """`perftune sim calibrate --model deepseek-v2-lite --from` the 2026-12-04 H200 run's lone prefills
    (vLLM 0.26.0, graphs up to 512 tokens): 22 ms to the first token at 512 prompt tokens, 93 ms at 768.
    Only the ungraphed host term can give that jump; the fit finds it, and the calibrated simulator
    puts the 768-token prefill near its measured TTFT and the 512-token one well below it."""
    from perftune import api
    from perftune.sim.calibrate import from_bundles, predict_point

    run = Path(__file__).parents[3] / "benchmarks/results/2026-12-04-h200-vllm-0.26.0-moe-prefill/defaults"
    cells = [run / f"c1-isl{n}/summary.json" for n in (512, 768, 1024, 4096)]
    cal = api.sim_calibrate([], tmp_path / "cal.yaml", bundles=cells, model="deepseek-v2-lite", maxiter=40)
    assert "moe_ungraphed_layer_us" in cal.fitted and (tmp_path / "cal.yaml").exists()
    assert cal.moe_ungraphed_layer_us > 1000.0  # about 2.5 ms per MoE layer: 26 layers, ~65 ms
    card, g = model_card("deepseek-v2-lite"), gpu("h200")
    points = {m.isl: m for m in from_bundles(cells, "h200")[0]}
    assert points[768].ttft_ms > 3 * points[512].ttft_ms  # the measured jump: 93 vs 22 ms
    at = {n: predict_point(card, g, cal, points[n]).ttft_ms for n in (512, 768)}
    assert at[768] == pytest.approx(points[768].ttft_ms, rel=0.25)
    assert at[768] > 2.5 * at[512]
    none = cal.model_copy(update={"moe_ungraphed_layer_us": 0.0})
    assert predict_point(card, g, none, points[768]).ttft_ms < 0.6 * points[768].ttft_ms


def test_an_expert_pool_fills_in_a_few_tokens_and_then_stops_growing() -> None:
    """A router that reaches only a pool of the experts (dummy weights: TPOT up 25% from batch 1 to 4, flat
    from 4 to 16): a step of T tokens reads pool x (1 - (1 - share/pool)^T) of them. Hand-computed for
    DeepSeek-V2-Lite (64 routed, top-6) with a pool of a quarter (16 experts)."""
    card = model_card("deepseek-v2-lite")
    cal = for_gpu(H100)
    pool = StepModel.build(card, H100, SimConfig(), cal.model_copy(update={"moe_expert_pool": 0.25}))
    full = StepModel.build(card, H100, SimConfig(), cal)
    assert pool.experts_touched(1) == pytest.approx(6 / 64) == full.experts_touched(1)  # one token: top_k
    assert pool.experts_touched(4) == pytest.approx(0.25 * (1 - (10 / 16) ** 4))  # 0.211...: 13.5 experts
    assert pool.experts_touched(256) == pytest.approx(0.25)  # saturates at the pool, not at every expert
    assert full.experts_touched(4) == pytest.approx(1 - (58 / 64) ** 4)  # pool 1: the uniform formula
    # the pool fills faster than the uniform spread over every expert, then stays below it
    assert pool.experts_touched(4) / full.experts_touched(4) > 0.65
    assert pool.experts_touched(64) < 0.3 * full.experts_touched(64)
    # a pool smaller than one token's experts is clamped to top_k/E: every token reads the same experts
    tiny = StepModel.build(card, H100, SimConfig(), cal.model_copy(update={"moe_expert_pool": 0.01}))
    assert tiny.experts_touched(1) == tiny.experts_touched(64) == pytest.approx(6 / 64)


def test_a_busy_engine_hides_an_ungraphed_steps_launches_behind_the_step_before() -> None:
    """With async scheduling the CPU launches a step's ops while the GPU runs the one before. A 768-token
    prefill after an idle engine pays its whole host excess (as at c=1); the same prefill right after a
    step with enough GPU time free pays nothing; after a step with 10 ms free, 10 ms less. A calibration
    without `ungraphed_ahead` (0, files before 2026-12-05) keeps the old cost whatever came before."""
    card = model_card("deepseek-v2-lite")
    cal = for_gpu(H100).model_copy(update={"moe_ungraphed_layer_us": 2780.0, "ungraphed_ahead": 1.0})
    m = StepModel.build(card, H100, SimConfig(), cal)
    short = (1, 768, 0, 768 * 769 / 2, False)
    idle = m.parts(*short)
    excess = m.ungraphed_host_s - sum(idle[:3])
    assert excess > 0.05  # host-bound: 72.3 ms of launches against a few ms of GPU work
    assert sum(m.parts(*short, free_s=0.010)) == pytest.approx(sum(idle) - 0.010)
    assert sum(m.parts(*short, free_s=1.0)) == pytest.approx(sum(idle) - excess)
    old = StepModel.build(card, H100, SimConfig(), cal.model_copy(update={"ungraphed_ahead": 0.0}))
    assert sum(old.parts(*short, free_s=1.0)) == pytest.approx(sum(idle))
    # --no-async-scheduling: the CPU waits for each step, nothing is launched ahead
    sync = StepModel.build(card, H100, parse_vllm_flags(["--no-async-scheduling"]), cal)
    assert sum(sync.parts(*short, free_s=1.0)) == pytest.approx(sum(idle))
    assert parse_vllm_flags(["--async-scheduling"]).async_scheduling and SimConfig().async_scheduling
    # what a step leaves free: a graphed decode all its GPU time, a host-bound ungraphed step nothing
    dec = m.parts(8, 8, 8 * 1024, 0.0, True)
    assert m.free_after(dec, True, 8) == pytest.approx(sum(dec[:3]))
    assert m.free_after(idle, False, 768) == 0.0


def test_the_engine_core_lends_a_steps_free_gpu_time_only_while_it_stays_busy() -> None:
    """Two 768-token prompts: the first reaches an idle engine (its prefill host-bound), the second
    arrives while the first is still decoding, after a decode step, and pays the host excess less that
    step's GPU time; once the engine drains, the next prompt pays it in full again."""
    from perftune.sim.core import EngineCore, SimRequest

    card = model_card("deepseek-v2-lite")
    cal = for_gpu(H100).model_copy(
        update={"moe_ungraphed_layer_us": 2780.0, "ungraphed_ahead": 1.0, "jitter_cv": 0.0}
    )
    core = EngineCore(card, H100, SimConfig(), cal)
    core.add(SimRequest(0, 768, 4))
    first = core.step().duration_s  # prefill (and first token) after idle
    dec = core.step().duration_s  # a decode step: its GPU time is free for the next launches
    core.add(SimRequest(1, 768, 4))
    mixed = core.step().duration_s  # the second prefill, batched with the first's decode
    while core.has_work():
        core.step()
    core.add(SimRequest(2, 768, 4))
    again = core.step().duration_s
    assert again == pytest.approx(first)
    m = core.timing
    assert first == pytest.approx(sum(m.parts(1, 768, 0, 768 * 769 / 2, False)))
    dec_parts = m.parts(1, 1, 769, 0.0, True)  # the decode step: 769 tokens of context
    assert dec == pytest.approx(sum(dec_parts))
    free = m.free_after(dec_parts, True, 1)
    assert free == pytest.approx(sum(dec_parts[:3])) and free > 0.0
    # the mixed step: the first request's decode (770 of context) and the second's 768-token prefill
    assert mixed == pytest.approx(sum(m.parts(2, 769, 770, 768 * 769 / 2, False, free)))
    # still host-bound after one decode step: the whole of its free GPU time comes off
    assert mixed == pytest.approx(sum(m.parts(2, 769, 770, 768 * 769 / 2, False)) - free)
