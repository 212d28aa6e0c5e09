"""Drift made visible (issue 23): NVML against a fake, the engine's own /metrics figures against
recorded vLLM and SGLang scrapes, and the flags a throttled trial or an outlier first wave earns."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from perftune.bench import drift
from perftune.bench.records import Chunk, RequestRecord
from perftune.telemetry.gpu import NvmlSampler, endpoint_is_local, summarize
from perftune.telemetry.prom import gauges, parse_totals, trial_figures

from .factories import record

T = Path(__file__).parents[2] / "contract" / "transcripts"


class FakeNvml:
    """pynvml's calls as a table of per-call values: clocks fall and the power cap engages."""

    def __init__(self, sm: list[float], reasons: list[int], max_sm: float = 1980.0) -> None:
        self.sm, self.reasons, self.max_sm, self.i = sm, reasons, max_sm, 0
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"gpu{i}"

    def nvmlDeviceGetName(self, h: str) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetMaxClockInfo(self, h: str, kind: int) -> float:
        return self.max_sm

    def nvmlDeviceGetEnforcedPowerLimit(self, h: str) -> int:
        return 700_000

    def nvmlDeviceGetClockInfo(self, h: str, kind: int) -> float:
        if kind == 2:
            return 3201.0
        v = self.sm[min(self.i, len(self.sm) - 1)]
        return v

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        return 690_000

    def nvmlDeviceGetTemperature(self, h: str, kind: int) -> int:
        return 61

    def nvmlDeviceGetUtilizationRates(self, h: str) -> Any:
        return SimpleNamespace(gpu=100)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: str) -> int:
        v = self.reasons[min(self.i, len(self.reasons) - 1)]
        self.i += 1  # the last call of a sample
        return v


def _sampled(nvml: FakeNvml, n: int) -> Any:
    s = NvmlSampler(nvml=nvml)
    assert s.unavailable is None and s.devices[0]["name"] == "NVIDIA H200"
    for _ in range(n):
        s.sample_once()
    return summarize(s.samples, s.devices, s.period_s, s.unavailable)


def test_a_power_capped_trial_with_a_low_clock_is_throttled() -> None:
    state = _sampled(FakeNvml(sm=[1980, 1650, 1600, 1520, 1600], reasons=[0, 4, 4, 4, 4]), 5)
    assert state.available and state.samples == 5
    assert state.sm_clock_mhz == {"min": 1520.0, "median": 1600.0, "max": 1980.0}
    assert state.reasons == {"sw_power_cap": pytest.approx(0.8)}
    assert (
        state.throttled
        and "sw_power_cap in 80%" in (state.why or "")
        and "1,600 of 1,980" in (state.why or "")
    )
    assert state.power_w == {"mean": 690.0, "max": 690.0} and state.power_limit_w == 700.0


def test_full_clock_with_the_cap_flickering_is_not_throttled_but_a_hardware_slowdown_is() -> None:
    calm = _sampled(FakeNvml(sm=[1980] * 10, reasons=[4] + [0] * 9), 10)
    assert not calm.throttled and calm.reasons == {"sw_power_cap": pytest.approx(0.1)}
    hot = _sampled(FakeNvml(sm=[1980] * 10, reasons=[0x40] + [0] * 9), 10)
    assert hot.throttled and hot.why == "hw_thermal in 10% of samples"


def test_no_nvml_is_said_not_faked() -> None:
    class Broken:
        def nvmlInit(self) -> None:
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    s = NvmlSampler(nvml=Broken())
    s.start()
    state = s.stop()
    assert not state.available and state.samples == 0
    assert "NVML not available" in (state.note or "") and "libnvidia-ml" in (state.note or "")


def test_the_sampler_thread_samples_at_its_period() -> None:
    nv = FakeNvml(sm=[1980], reasons=[0])
    s = NvmlSampler(nvml=nv, period_s=0.01)
    s.start()
    import time

    time.sleep(0.2)
    state = s.stop()
    assert state.available and state.samples >= 3  # a loaded host still gets a few in 0.2 s


def test_only_a_server_on_this_host_is_sampled() -> None:
    assert endpoint_is_local("http://127.0.0.1:8000") and endpoint_is_local("http://localhost:8000/v1")
    assert not endpoint_is_local("http://203.0.113.7:8000")  # TEST-NET-3: never this host


@pytest.mark.parametrize("engine", ["vllm-0.26.0", "sglang-0.5.16"])
def test_engine_figures_from_recorded_scrapes(engine: str) -> None:
    before = parse_totals((T / engine / "metrics.prom").read_text())
    after = parse_totals((T / engine / "metrics_after.prom").read_text())
    # the queue gauges a poll reads, by METRICS' engine-neutral names
    assert {"running", "waiting", "kv_usage"} <= set(gauges((T / engine / "metrics_after.prom").read_text()))
    polled = [{"running": 3.0, "waiting": 0.0}, {"running": 5.0, "waiting": 7.0, "kv_usage": 0.4}]
    fig = trial_figures(before, after, polled, span_s=2.0)
    assert fig is not None
    assert fig.polls == 2 and fig.running_mean == 4.0 and fig.waiting_max == 7.0 and fig.kv_usage_max == 0.4
    assert fig.server_cpu_s is not None and fig.server_cpu_s >= 0
    assert fig.generation_tokens is not None and fig.generation_tokens > 0  # the transcripts' requests
    if engine.startswith("vllm"):
        assert fig.steps is not None and fig.steps > 0 and fig.step_ms_mean == pytest.approx(2000 / fig.steps)
    assert trial_figures(None, after, [], 1.0) is None  # no /metrics: no figures, not zeros


def _rec(idx: int, send_s: float, end_s: float) -> RequestRecord:
    ns = 1_000_000_000
    return record(
        idx=idx,
        t_send_ns=int(send_s * ns),
        t_end_ns=int(end_s * ns),
        input_tokens=1,
        output_tokens=2,
        chunks=[Chunk(int(end_s * ns), 2, 2)],
    )


def test_first_wave_is_the_first_concurrency_requests_sent() -> None:
    recs = [_rec(0, 0.0, 1.9), _rec(1, 0.0, 0.4), _rec(2, 0.5, 2.5), _rec(3, 1.0, 3.0)]
    assert drift.first_wave(recs, 2) == (0.4, 1.9)
    assert drift.first_wave(recs, None) is None and drift.first_wave(recs[:1], 2) is None


def test_assess_flags_a_hot_trial_clock_drift_and_an_outlier_first_wave_and_notes_a_steady_cap() -> None:
    capped = _sampled(FakeNvml(sm=[1520] * 4, reasons=[4] * 4), 4)
    full = _sampled(FakeNvml(sm=[1980] * 4, reasons=[0] * 4), 4)
    hot = _sampled(FakeNvml(sm=[1980] * 4, reasons=[0x40] * 4), 4)
    per, flags, notes = drift.assess([hot, full, capped], [None] * 3, [(0.4, 1.9), (0.5, 1.7), (8.0, 14.0)])
    assert per[0] == ["trial 0: GPU throttled (hw_thermal in 100% of samples)"]
    assert len(per[2]) == 1 and "first wave finished over 8.0-14.0 s" in per[2][0] and 1 not in per
    assert flags and flags[0].startswith(
        "GPU clock drifted across trials: median SM clock 1,980, 1,980, 1,520"
    )
    assert any(n.startswith("GPU power-capped in trial(s) 2 (sw_power_cap in 100%") for n in notes)
    assert any(n.startswith("first wave finished by 1.90, 1.70, 14.00 s") for n in notes)
    # a steady cap in every trial, as on the H200 under load: notes, no flag
    per, flags, notes = drift.assess([capped] * 3, [None] * 3, [(0.4, 1.9), (0.5, 1.7), (0.4, 1.8)])
    assert per == {} and flags == [] and "median SM clock per trial 1,520, 1,520, 1,520 MHz" in notes
    assert any(n.startswith("GPU power-capped in trial(s) 0 (") for n in notes)


def test_only_the_busy_gpus_are_judged() -> None:
    class TwoGpus(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:
            return 2

        def nvmlDeviceGetClockInfo(self, h: str, kind: int) -> float:
            return 3201.0 if kind == 2 else (1500.0 if h == "gpu0" else 1980.0)

        def nvmlDeviceGetUtilizationRates(self, h: str) -> Any:
            return SimpleNamespace(gpu=100 if h == "gpu0" else 0)

        def nvmlDeviceGetCurrentClocksEventReasons(self, h: str) -> int:
            return 4 if h == "gpu0" else 0

    s = NvmlSampler(nvml=TwoGpus(sm=[0], reasons=[0]))
    for _ in range(4):
        s.sample_once()
    state = summarize(s.samples, s.devices, s.period_s, s.unavailable)
    # the idle neighbour at full clock would have hidden the serving GPU's power cap
    assert state.sm_clock_mhz == {"min": 1500.0, "median": 1500.0, "max": 1500.0}
    assert state.reasons == {"sw_power_cap": 1.0} and state.throttled
    assert [d["index"] for d in state.devices] == [0] and "idle GPU(s) 1 left out" in (state.note or "")


def test_an_unsupported_optional_query_does_not_turn_telemetry_off() -> None:
    class NoPower(FakeNvml):
        def nvmlDeviceGetPowerUsage(self, h: str) -> int:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

        def nvmlDeviceGetEnforcedPowerLimit(self, h: str) -> int:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    state = _sampled(NoPower(sm=[1980], reasons=[0]), 3)
    assert state.available and state.samples == 3 and state.power_limit_w is None
