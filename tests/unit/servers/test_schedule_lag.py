"""The simulator's virtual schedule and its lag tracking, on an injected clock (no wall time)."""

from __future__ import annotations

from perftune.sim.server import FAITHFUL_P99_LAG_MS, LAG_BIN_GROWTH, ScheduleLag, VirtualClock

MS = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t


def run(
    clock: VirtualClock, lag: ScheduleLag, now: FakeClock, steps: int, step_ms: float, host_ms: float
) -> None:
    """Drive steps as the engine loop does, on a host that needs `host_ms` of wall time per step.

    The engine sleeps to each step's scheduled end; a host slower than the model wakes after it.
    Each step emits one token, written when the host gets to it."""
    for _ in range(steps):
        start = clock.start()
        began = now.t
        deadline = clock.end(start, round(step_ms * MS))
        now.t = max(deadline, began + round(host_ms * MS))
        lag.step(now.t - deadline, round(step_ms * MS))
        lag.token(now.t - deadline)


def _setup() -> tuple[FakeClock, VirtualClock, ScheduleLag]:
    now = FakeClock()
    return now, VirtualClock(now), ScheduleLag(now)


def test_a_host_that_keeps_up_is_faithful() -> None:
    now, clock, lag = _setup()
    run(clock, lag, now, steps=100, step_ms=10, host_ms=3)
    out = lag.to_json()
    assert out["faithful"] is True and out["late_steps"] == 0 and out["window_steps"] == 100
    assert out["schedule_lag_ms"] == {"p50": 0.0, "p99": 0.0, "max": 0.0}
    assert now.t == 100 * 10 * MS  # wall time is exactly the modelled time


def test_a_host_slower_than_the_model_falls_behind_and_says_so() -> None:
    # The busy 2-core host of the c=16 cell: each 10 ms step needs 12 ms of wall time.
    now, clock, lag = _setup()
    run(clock, lag, now, steps=100, step_ms=10, host_ms=12)
    out = lag.to_json()
    assert out["faithful"] is False
    assert out["late_steps"] == 99  # the first step is 2 ms late, under the threshold; then lag grows
    q = out["schedule_lag_ms"]
    assert q["max"] == 200.0 and q["p50"] < q["p99"] < q["max"] + 1e-9  # 2 ms more behind per step
    assert q["p99"] > FAITHFUL_P99_LAG_MS


def test_a_stall_is_caught_up_on_the_virtual_schedule() -> None:
    now, clock, lag = _setup()
    run(clock, lag, now, steps=50, step_ms=10, host_ms=3)
    now.t += 30 * MS  # the host stalls for 30 ms in the middle of a step
    run(clock, lag, now, steps=450, step_ms=10, host_ms=3)
    # Later steps keep their scheduled ends (start = the previous scheduled end, not the late wake-up),
    # so the engine catches up and the run ends on the modelled time.
    assert now.t == 500 * 10 * MS
    out = lag.to_json()
    assert out["schedule_lag_ms"]["max"] == 30.0 - 10.0 + 3.0  # the stalled step woke 23 ms late
    assert 1 <= out["late_steps"] <= 5  # ... and the few steps after it, until caught up
    assert out["faithful"] is True  # a 1-in-500 blip: under 1% late steps, p99 lag 0


def test_an_idle_engine_reanchors_at_the_next_arrival() -> None:
    now, clock, lag = _setup()
    run(clock, lag, now, steps=3, step_ms=10, host_ms=1)
    clock.idle()
    now.t += 5_000 * MS  # nothing to do for 5 s: no lag is owed for it
    assert clock.start() == now.t
    run(clock, lag, now, steps=3, step_ms=10, host_ms=1)
    assert lag.to_json()["schedule_lag_ms"]["max"] == 0.0


def test_late_step_threshold_is_2ms_or_5_percent_of_the_step() -> None:
    _, _, lag = _setup()
    lag.step(round(1.9 * MS), 10 * MS)  # under the 2 ms floor
    lag.step(round(4.9 * MS), 100 * MS)  # under 5% of a 100 ms step
    assert lag.late_steps == 0
    lag.step(round(2.1 * MS), 10 * MS)
    lag.step(round(5.1 * MS), 100 * MS)
    assert lag.late_steps == 2


def test_reset_starts_a_new_window() -> None:
    now, clock, lag = _setup()
    run(clock, lag, now, steps=20, step_ms=10, host_ms=15)
    assert lag.to_json()["faithful"] is False
    lag.reset()
    now.t += 2 * MS
    out = lag.to_json()
    assert out["faithful"] is True and out["late_steps"] == out["window_steps"] == out["window_tokens"] == 0
    assert out["window_s"] == 0.002


def test_lag_quantiles_are_within_one_bin_of_the_exact_ones() -> None:
    _, _, lag = _setup()
    lags = [round((i % 997) * 0.037 * MS) for i in range(20_000)]  # 0 .. 36.9 ms
    for x in lags:
        lag.token(x)
    exact = sorted(lags)
    out = lag.to_json()["schedule_lag_ms"]
    for key, q in (("p50", 0.5), ("p99", 0.99)):
        want = exact[int(q * len(exact)) - 1] / MS
        assert want <= out[key] <= want * LAG_BIN_GROWTH + 0.01  # never low, at most one bin high
    assert out["max"] == max(lags) / MS
