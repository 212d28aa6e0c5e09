"""When a step's tokens leave the simulated engine. With async scheduling (vLLM's default) the engine
core launches step k+1 before it hands out step k's tokens, so a host-bound step k+1 (an ungraphed MoE
step's op-by-op launches) holds step k's tokens back by its launches (StepResult.held_s). Both drivers
of the core, `run_trial` (`perftune sim predict`) and the real-time `SimServer`, hand out the same way.
Times are hand-computed from scripted step durations."""

from __future__ import annotations

import asyncio
import time

import pytest

from perftune.hardware.ceilings import gpu
from perftune.models.resolve import model_card
from perftune.sim.calibration import Calibration, for_gpu
from perftune.sim.config import SimConfig, parse_vllm_flags
from perftune.sim.core import EngineCore, SimRequest, StepResult
from perftune.sim.predict import run_trial

H200 = gpu("h200")
# (duration s, held s): a short step, a host-bound one (60 of its 70 ms are launches), a short one
SCRIPT = [(0.010, 0.0), (0.070, 0.060), (0.005, 0.0)]


class ScriptedCore:
    """Stands in for EngineCore: one request, one token per scripted step, finished after the last."""

    def __init__(self, script: list[tuple[float, float]]) -> None:
        self.cal = Calibration(gpu="h200", api_latency_ms=0.0, frontend_ms_per_request=0.0)
        self.script = list(script)
        self.req: SimRequest | None = None

    def add(self, r: SimRequest) -> None:
        self.req = r

    def has_work(self) -> bool:
        return self.req is not None and bool(self.script)

    def step(self) -> StepResult:
        assert self.req is not None
        dur, held = self.script.pop(0)
        self.req.output += 1
        self.req.finished = not self.script
        done = [self.req] if self.req.finished else []
        return StepResult(dur, [self.req], done, 1, 1, held)


def test_a_steps_tokens_leave_after_the_next_steps_host_bound_launch() -> None:
    """Step 1 ends at 10 ms but its token leaves at 70 ms, once step 2's 60 ms of launches are done;
    step 2's leaves at its end (80 ms: step 3 launches at once); step 3's at 85 ms, the engine drained."""
    core = ScriptedCore(SCRIPT)
    (line,) = run_trial(core, [SimRequest(0, 16, 3)], concurrency=1, offsets=None, t0=0.0)  # type: ignore[arg-type]
    assert line.tokens == pytest.approx([0.070, 0.080, 0.085])
    assert line.t_end == pytest.approx(0.085)
    # nothing held (no async scheduling, or graphed steps): each step's token leaves at its end
    core = ScriptedCore([(d, 0.0) for d, _ in SCRIPT])
    (line,) = run_trial(core, [SimRequest(0, 16, 3)], concurrency=1, offsets=None, t0=0.0)  # type: ignore[arg-type]
    assert line.tokens == pytest.approx([0.010, 0.080, 0.085])


def test_the_real_time_server_hands_out_on_the_same_schedule() -> None:
    """SimServer on the same script: each token's scheduled hand-out time (the third item of its stream
    queue) is 60 ms after its step's end for step 1, then 10 and 5 ms apart; none is written early, and
    only the last token says the request is done."""
    from perftune.sim.server import SimServer, _Live

    async def handouts(script: list[tuple[float, float]]) -> list[int]:
        srv = SimServer(model_card("llama-3.1-8b"), H200, SimConfig(), Calibration(gpu="h200"))
        core = ScriptedCore(script)
        req = SimRequest(0, 16, 3)
        core.add(req)
        srv.core = core  # type: ignore[assignment]
        live = _Live(req)
        srv.live[0] = live
        t0 = time.monotonic_ns()
        loop = asyncio.create_task(srv.engine_loop())
        out, finals = [], []
        for _ in script:
            _, final, at = await asyncio.wait_for(live.queue.get(), 5.0)
            assert time.monotonic_ns() >= at  # written no earlier than scheduled
            out.append(at - t0)
            finals.append(final)
        loop.cancel()
        # final as of the token's own step: step 1's token is handed out after step 2 finished it
        assert finals == [False, False, True]
        return out

    held = asyncio.run(handouts(SCRIPT))
    assert held[0] >= 70e6 and (held[1] - held[0]) == pytest.approx(10e6) and held[2] - held[1] == 5e6
    plain = asyncio.run(handouts([(d, 0.0) for d, _ in SCRIPT]))
    assert plain[0] >= 10e6 and plain[1] - plain[0] == pytest.approx(70e6) and plain[2] - plain[1] == 5e6


def test_the_core_holds_tokens_back_by_an_ungraphed_steps_host_excess_with_async_scheduling() -> None:
    """A 768-token DeepSeek-V2-Lite prefill after an idle engine is host-bound: its held time is its
    whole host excess (its duration less its GPU work and its ordinary per-step host cost). A graphed
    decode step holds nothing; nor does anything with --no-async-scheduling, or a calibration without
    `ungraphed_ahead` (files before 2026-12-05, which predict as before)."""
    card = model_card("deepseek-v2-lite")
    cal = for_gpu(H200).model_copy(
        update={"moe_ungraphed_layer_us": 2780.0, "ungraphed_ahead": 1.0, "jitter_cv": 0.0}
    )

    def steps(cfg: SimConfig, c: Calibration) -> tuple[StepResult, StepResult, EngineCore]:
        core = EngineCore(card, H200, cfg, c)
        core.add(SimRequest(0, 768, 4))
        return core.step(), core.step(), core

    prefill, decode, core = steps(SimConfig(), cal)
    m = core.timing
    gemm, attn, comm, host = m.parts(1, 768, 0, 768 * 769 / 2, False)
    assert prefill.held_s == pytest.approx(m.host_excess_s(gemm + attn + comm, False, 768))
    assert prefill.held_s > 0.05 and prefill.held_s < prefill.duration_s  # 72 ms of launches
    assert host - prefill.held_s == pytest.approx(m.fixed_s + m.per_seq_s + m.launch_s(False, 768))
    assert decode.held_s == 0.0  # graphed
    for cfg, c in (
        (parse_vllm_flags(["--no-async-scheduling"]), cal),
        (SimConfig(), cal.model_copy(update={"ungraphed_ahead": 0.0})),
    ):
        p, _, _ = steps(cfg, c)
        assert p.held_s == 0.0 and p.duration_s == pytest.approx(prefill.duration_s)
