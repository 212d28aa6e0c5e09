"""The API server in front of the simulated engine (`Frontend`), against hand-computed schedules.

Times are virtual seconds; work is set through the calibration in ms per request and us per token.
"""

from __future__ import annotations

import pytest

from perftune.hardware.ceilings import gpu
from perftune.models.resolve import model_card
from perftune.sim.calibration import Calibration
from perftune.sim.config import SimConfig
from perftune.sim.core import EngineCore, Frontend, SimRequest
from perftune.sim.predict import run_trial


def front(
    req_ms: float = 0.0, shared_ms: float = 0.0, tok_us: float = 0.0, latency_ms: float = 0.0
) -> Frontend:
    """`req_ms`: the serial stage per request; `shared_ms`: CPU work per request on the shared CPU."""
    cal = Calibration(
        gpu="h200",
        frontend_ms_per_request=req_ms,
        frontend_shared_ms_per_request=shared_ms,
        frontend_us_per_token=tok_us,
        api_latency_ms=latency_ms,
    )
    return Frontend(cal)


def admitted_at(f: Frontend, until: float, step: float = 1e-4) -> dict[int, float]:
    """Poll `admit` on a fine grid, the way the engine loop meets it: key -> first time seen through."""
    out: dict[int, float] = {}
    t = 0.0
    while t <= until:
        for k in f.admit(t):
            out[k] = t
        t = round(t + step, 6)
    return out


def test_without_shared_work_a_burst_is_admitted_one_request_after_another() -> None:
    """A calibration before the shared CPU (only the serial cost): first come first served, as before."""
    f = front(req_ms=2.0, latency_ms=5.0)
    for k in range(3):
        f.arrive(0.0, k)
    assert f.next_ready() == pytest.approx(0.007)
    assert admitted_at(f, 0.02) == pytest.approx({0: 0.007, 1: 0.009, 2: 0.011})
    assert f.next_ready() is None


def test_a_burst_shares_the_cpu_and_then_passes_the_serial_stage_by_hand() -> None:
    f = front(req_ms=0.5, shared_ms=2.0, latency_ms=5.0)
    for k in range(4):
        f.arrive(0.0, k)
    # four requests of 2 ms sharing one CPU all finish there at 8 ms, then pass the serial stage 0.5 ms
    # apart (8.5 to 10 ms) and reach the engine 5 ms later
    assert f.next_ready() == pytest.approx(0.0135)
    assert f.admit(0.0134) == []
    assert admitted_at(f, 0.02, step=1e-5) == pytest.approx(
        {0: 0.0135, 1: 0.014, 2: 0.0145, 3: 0.015}, abs=1.1e-5
    )


def test_processor_sharing_by_hand_an_earlier_arrival_finishes_first() -> None:
    f = front(shared_ms=1.0)
    f.arrive(0.0, 0)  # alone until 0.5 ms: half its work done
    f.arrive(0.0005, 1)  # then both at half speed: 0 ends at 0.5 + 2 x 0.5 = 1.5 ms
    assert f.next_ready() == pytest.approx(0.0015)
    got = admitted_at(f, 0.003, step=1e-5)
    # request 1 had 0.5 ms of work at 1.5 ms and runs alone: it ends at 2.0 ms
    assert got[0] == pytest.approx(0.0015, abs=1.1e-5)
    assert got[1] == pytest.approx(0.0020, abs=1.1e-5)


def test_streamed_tokens_take_their_share_of_the_cpu() -> None:
    quiet, busy = front(shared_ms=1.0, tok_us=0.0), front(shared_ms=1.0, tok_us=10.0)
    for f in (quiet, busy):
        f.stream(0.0, 100)  # a step's 100 tokens: 1 ms of streaming where a token costs 10 us
        f.arrive(0.0, 7)
    assert quiet.next_ready() == pytest.approx(0.001)
    assert busy.next_ready() == pytest.approx(0.002)  # two 1 ms jobs sharing the CPU: both end at 2 ms


def test_a_request_that_leaves_gives_its_share_back() -> None:
    f = front(shared_ms=2.0)
    f.arrive(0.0, 0)
    f.arrive(0.0, 1)
    f.cancel(1, 0.002)  # each had 1 ms at 2 ms; request 0 then runs alone: through at 3 ms
    assert f.next_ready() == pytest.approx(0.003)
    assert f.admit(0.0029) == []
    assert f.admit(0.0031) == [0]
    assert f.next_ready() is None


def test_the_trial_driver_sees_a_burst_reach_the_engine_after_its_shared_work() -> None:
    """A closed loop of 8 starts at once. With 5 ms of shared work per request no first token comes
    before the burst's 40 ms; with 5 ms of serial work instead, the first request's comes ~35 ms
    earlier than the last's."""
    card, g = model_card("llama-3.1-8b"), gpu("h200")
    ttfts = {}
    for shared in (False, True):
        cal = Calibration(
            gpu="h200",
            frontend_ms_per_request=0.0 if shared else 5.0,
            frontend_shared_ms_per_request=5.0 if shared else 0.0,
            api_latency_ms=0.0,
        )
        core = EngineCore(card, g, SimConfig(), cal)
        reqs = [SimRequest(rid=i, prompt_len=64, max_tokens=4) for i in range(8)]
        lines = run_trial(core, reqs, concurrency=8, offsets=None, t0=0.0)
        ttfts[shared] = sorted(tl.tokens[0] - tl.t_send for tl in lines)
    assert ttfts[True][0] > 0.040
    assert ttfts[True][-1] - ttfts[True][0] < 0.005
    assert ttfts[False][0] < 0.015
    assert ttfts[False][-1] - ttfts[False][0] > 0.030


def test_the_trial_driver_streams_a_batch_at_the_cost_of_the_next_admissions() -> None:
    """A closed loop of 64 requests, then 64 more as slots free: with 200 us per streamed token the
    running batch's streaming shares the CPU with the later requests' admissions, so they reach the
    engine later; the first 64 arrive before any token is streamed and are admitted as fast either way."""
    card, g = model_card("llama-3.1-8b"), gpu("h200")
    first, later = {}, {}
    for tok_us in (0.0, 200.0):
        cal = Calibration(gpu="h200", frontend_shared_ms_per_request=1.0, frontend_us_per_token=tok_us)
        core = EngineCore(card, g, SimConfig(), cal)
        reqs = [SimRequest(rid=i, prompt_len=64, max_tokens=32 if i < 64 else 4) for i in range(128)]
        lines = run_trial(core, reqs, concurrency=64, offsets=None, t0=0.0)
        ttft = [tl.tokens[0] - tl.t_send for tl in lines]
        first[tok_us], later[tok_us] = sum(ttft[:64]) / 64, sum(ttft[64:]) / 64
    assert first[200.0] == pytest.approx(first[0.0], rel=0.05)
    assert later[200.0] > 1.2 * later[0.0]


def test_the_real_time_server_holds_a_burst_until_its_shared_work_is_done() -> None:
    """SimServer's admission in wall time: four requests arriving together with 20 ms of shared CPU each
    are all held at least 80 ms (sleeps never end early, so this bound holds on a busy host); with 20 ms
    of serial work instead, each is held at least 20 ms more than the one before."""
    import asyncio
    import time

    from perftune.sim.server import SimServer

    async def held(shared: bool) -> list[float]:
        cal = Calibration(
            gpu="h200",
            frontend_ms_per_request=0.0 if shared else 20.0,
            frontend_shared_ms_per_request=20.0 if shared else 0.0,
            api_latency_ms=0.0,
        )
        srv = SimServer(model_card("llama-3.1-8b"), gpu("h200"), SimConfig(), cal)
        t0 = time.monotonic()
        done: dict[int, float] = {}

        async def one(rid: int) -> None:
            await srv._admission(rid)
            done[rid] = time.monotonic() - t0

        await asyncio.gather(*(one(rid) for rid in range(4)))
        assert not srv.admitted and not srv.front.jobs and not srv.front.ready  # none left held
        return [done[rid] for rid in range(4)]

    assert min(asyncio.run(held(True))) >= 0.080
    serial = asyncio.run(held(False))
    assert serial == sorted(serial)
    assert all(t >= 0.020 * (k + 1) - 1e-3 for k, t in enumerate(serial))
