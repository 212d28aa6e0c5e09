"""NVML GPM in the GPU sampler (issue 22): DRAM bandwidth utilisation, SM occupancy and tensor activity
read from two GPM samples per period, against a fake NVML that implements pynvml's GPM calls."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from perftune.telemetry.gpu import Gpm, GpuTrialState, NvmlSampler, gpm_for, summarize

DRAM, OCC, TENSOR = 10, 3, 5  # NVML_GPM_METRIC_DRAM_BW_UTIL, _SM_OCCUPANCY, _ANY_TENSOR_UTIL
NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED
METRIC_MAX = 98  # pynvml's c_nvmlGpmMetricsGet_t.metrics is a fixed array of NVML_GPM_METRIC_MAX


class FakeSample:
    """pynvml's c_nvmlGpmSample_t: an opaque buffer; here it remembers which GPU and which get filled it."""

    def __init__(self, n: int) -> None:
        self.n, self.handle, self.seq, self.freed = n, None, 0, False


class FakeMetric:
    def __init__(self) -> None:
        self.metricId, self.nvmlReturn, self.value = 0, 0, 0.0


class FakeMetricsGet:
    """pynvml's c_nvmlGpmMetricsGet_t."""

    def __init__(self) -> None:
        self.version = self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [FakeMetric() for _ in range(METRIC_MAX)]


class FakeNvml:
    """pynvml's device calls for `count` GPUs at a steady clock, without any GPM call."""

    def __init__(self, count: int = 1, util: dict[int, int] | None = None) -> None:
        self.count, self.util = count, util or {}
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"gpu{i}"

    def nvmlDeviceGetName(self, h: str) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetMaxClockInfo(self, h: str, kind: int) -> float:
        return 1980.0

    def nvmlDeviceGetEnforcedPowerLimit(self, h: str) -> int:
        return 700_000

    def nvmlDeviceGetClockInfo(self, h: str, kind: int) -> float:
        return 3201.0 if kind == 2 else 1980.0

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        return 500_000

    def nvmlDeviceGetTemperature(self, h: str, kind: int) -> int:
        return 55

    def nvmlDeviceGetUtilizationRates(self, h: str) -> Any:
        return SimpleNamespace(gpu=self.util.get(int(h[3:]), 100))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: str) -> int:
        return 0


class GpmNvml(FakeNvml):
    """FakeNvml plus pynvml's GPM API. `table[handle]` scripts one row per interval (metricId -> value):
    row k answers the metrics between that GPU's GPM sample k and sample k + 1."""

    NVML_GPM_METRIC_DRAM_BW_UTIL = DRAM
    NVML_GPM_METRIC_SM_OCCUPANCY = OCC
    NVML_GPM_METRIC_ANY_TENSOR_UTIL = TENSOR
    NVML_GPM_METRICS_GET_VERSION = 1

    def __init__(
        self,
        table: dict[str, list[dict[int, float]]],
        *,
        supported: int = 1,
        failing: frozenset[int] = frozenset(),
        raise_on: dict[str, int] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.table, self.supported, self.failing = table, supported, failing
        self.raise_on = raise_on or {}  # handle -> the metrics-get (1-based) that raises
        self.allocs: list[FakeSample] = []
        self.frees: list[FakeSample] = []
        self.gets: dict[str, int] = {}
        self.reads: dict[str, int] = {}

    def nvmlGpmQueryDeviceSupport(self, h: str) -> Any:
        return SimpleNamespace(version=1, isSupportedDevice=self.supported)

    def nvmlGpmSampleAlloc(self) -> FakeSample:
        s = FakeSample(len(self.allocs))
        self.allocs.append(s)
        return s

    def nvmlGpmSampleFree(self, s: FakeSample) -> None:
        assert not s.freed, "a GPM sample freed twice"
        s.freed = True
        self.frees.append(s)

    def nvmlGpmSampleGet(self, h: str, s: FakeSample) -> FakeSample:
        assert not s.freed
        self.gets[h] = self.gets.get(h, 0) + 1
        s.handle, s.seq = h, self.gets[h]
        return s

    def c_nvmlGpmMetricsGet_t(self) -> FakeMetricsGet:
        return FakeMetricsGet()

    def nvmlGpmMetricsGet(self, mg: FakeMetricsGet) -> FakeMetricsGet:
        s1, s2 = mg.sample1, mg.sample2
        assert mg.version == 1 and mg.numMetrics == 3
        # the interval is always the GPU's previous sample to its latest one: the buffers ping-pong
        assert s1 is not s2 and s1.handle == s2.handle and s2.seq == s1.seq + 1
        h = s2.handle
        self.reads[h] = self.reads.get(h, 0) + 1
        if self.raise_on.get(h) == self.reads[h]:
            raise RuntimeError("GPU is lost")
        row = self.table[h][s1.seq - 1]
        for m in mg.metrics[: mg.numMetrics]:
            if m.metricId in self.failing:
                m.nvmlReturn, m.value = NOT_SUPPORTED, 99.0  # the value of a failed metric is garbage
            else:
                m.nvmlReturn, m.value = 0, row[m.metricId]
        return mg


def row(dram: float, occ: float = 50.0, tensor: float = 20.0) -> dict[int, float]:
    return {DRAM: dram, OCC: occ, TENSOR: tensor}


def sampled(nvml: Any, n: int) -> tuple[NvmlSampler, GpuTrialState]:
    s = NvmlSampler(nvml=nvml)
    assert s.unavailable is None
    for _ in range(n):
        s.sample_once()
    return s, summarize(s.samples, s.devices, s.period_s, s.unavailable, s.gpm_note)


def test_gpm_means_leave_out_each_gpus_first_sample() -> None:
    # The first interval of each GPU (since the sampler started) reads high: it must not count.
    nv = GpmNvml(
        {
            "gpu0": [row(90, 80, 70), row(40, 30, 10), row(50, 40, 20), row(60, 50, 30)],
            "gpu1": [row(80, 90, 90), row(20, 10, 10), row(30, 20, 20), row(40, 30, 30)],
        },
        count=2,
    )
    s, state = sampled(nv, 4)
    assert s.gpm_note is None and sorted(s._gpm) == [0, 1]
    # every sample read GPM, the first ones included: only the summary leaves them out
    assert [(x.gpu, x.dram_pct) for x in s.samples[:2]] == [(0, 90.0), (1, 80.0)]
    assert state.available and state.samples == 8 and state.gpm_samples == 6
    assert state.dram_bw_util_pct == pytest.approx(40.0)  # (40+50+60+20+30+40)/6, not 51.25
    assert state.sm_occupancy_pct == pytest.approx(30.0)
    assert state.tensor_active_pct == pytest.approx(20.0)
    assert state.gpm_note is None
    assert state.sm_clock_mhz == {"min": 1980.0, "median": 1980.0, "max": 1980.0}
    assert nv.gets == {"gpu0": 5, "gpu1": 5} and nv.reads == {"gpu0": 4, "gpu1": 4}


def test_one_gpm_sample_per_gpu_gives_no_gpm_figure_and_says_why() -> None:
    _, state = sampled(GpmNvml({"gpu0": [row(70)]}), 1)
    assert state.samples == 1 and state.gpm_samples == 0 and state.dram_bw_util_pct is None
    assert "GPM needs two samples" in (state.gpm_note or "")


def test_an_idle_gpus_gpm_figures_are_left_out() -> None:
    nv = GpmNvml({"gpu0": [row(10), row(40), row(60)], "gpu1": [row(95)] * 3}, count=2, util={1: 0})
    _, state = sampled(nv, 3)
    assert [d["index"] for d in state.devices] == [0]
    assert state.dram_bw_util_pct == pytest.approx(50.0) and state.gpm_samples == 2


def test_a_gpu_without_gpm_has_clocks_and_says_gpm_is_not_supported() -> None:
    nv = GpmNvml({}, supported=0)
    s, state = sampled(nv, 3)
    assert not s._gpm and nv.allocs == [] and nv.reads == {}
    assert all(x.dram_pct is None and x.sm_occ_pct is None and x.tensor_pct is None for x in s.samples)
    assert state.available and state.samples == 3
    assert state.sm_clock_mhz == {"min": 1980.0, "median": 1980.0, "max": 1980.0}
    assert state.mem_clock_mhz == 3201.0 and state.power_w == {"mean": 500.0, "max": 500.0}
    assert state.dram_bw_util_pct is None and state.sm_occupancy_pct is None
    assert state.tensor_active_pct is None and state.gpm_samples == 0
    assert state.gpm_note == "GPM not supported on this GPU (Hopper or later has it)"


def test_a_binding_without_gpm_says_gpm_is_not_available() -> None:
    nv = FakeNvml()  # an old nvidia-ml-py: no nvmlGpmQueryDeviceSupport at all
    reader, why = gpm_for(nv, "gpu0")
    assert reader is None and (why or "").startswith("GPM not available: AttributeError")
    assert "nvmlGpmQueryDeviceSupport" in (why or "")
    s, state = sampled(nv, 2)
    assert s.gpm_note == why and state.gpm_note == why
    assert state.available and state.samples == 2 and state.sm_clock_mhz is not None
    assert state.dram_bw_util_pct is None and state.gpm_samples == 0


def test_a_driver_that_refuses_the_support_query_says_gpm_is_not_available() -> None:
    class Refusing(GpmNvml):
        def nvmlGpmQueryDeviceSupport(self, h: str) -> Any:
            raise RuntimeError("Not Supported")

    reader, why = gpm_for(Refusing({}), "gpu0")
    assert reader is None and why == "GPM not available: RuntimeError: Not Supported"


def test_a_metric_nvml_could_not_read_reads_none() -> None:
    nv = GpmNvml({"gpu0": [row(30, 40, 50), row(35, 45, 55)]}, failing=frozenset({TENSOR}))
    reader, why = gpm_for(nv, "gpu0")
    assert isinstance(reader, Gpm) and why is None
    assert reader.read() == {"dram_pct": 30.0, "sm_occ_pct": 40.0, "tensor_pct": None}  # not the 99.0
    reader.close()
    nv = GpmNvml({"gpu0": [row(30, 40, 50), row(35, 45, 55), row(45, 55, 65)]}, failing=frozenset({TENSOR}))
    _, state = sampled(nv, 3)
    assert state.gpm_samples == 2 and state.tensor_active_pct is None
    assert state.dram_bw_util_pct == pytest.approx(40.0) and state.sm_occupancy_pct == pytest.approx(50.0)


def test_a_gpm_read_that_fails_mid_run_drops_gpm_for_that_gpu_and_clocks_go_on() -> None:
    rows = [row(10 * k) for k in range(1, 7)]
    nv = GpmNvml({"gpu0": rows, "gpu1": rows}, count=2, raise_on={"gpu0": 3})
    s, state = sampled(nv, 5)
    assert (s.gpm_note or "").startswith("GPM read failed: RuntimeError: GPU is lost")
    assert sorted(s._gpm) == [1]
    # gpu0: GPM in samples 1-2, none from the failed read on; it is never asked again
    assert [x.dram_pct for x in s.samples if x.gpu == 0] == [10.0, 20.0, None, None, None]
    assert nv.reads["gpu0"] == 3
    # its two GPM samples were freed when it was dropped; gpu1's are still in use
    assert {(x.handle, x.freed) for x in nv.allocs} == {("gpu0", True), ("gpu1", False)}
    assert [x.dram_pct for x in s.samples if x.gpu == 1] == [10.0, 20.0, 30.0, 40.0, 50.0]
    # the clocks of both GPUs were sampled every time
    assert len(s.samples) == 10 and all(x.sm_mhz == 1980.0 for x in s.samples)
    assert state.available and state.samples == 10 and state.sm_clock_mhz is not None
    # GPM stopped mid-trial on one GPU: the trial has no DRAM figure (it would cover part of the
    # trial only, and a byte-grounded cell must rest on whole trials) and it says why
    assert state.gpm_samples == 0 and state.dram_bw_util_pct is None
    assert (state.gpm_note or "").startswith("GPM read failed")
    s.close()
    assert all(x.freed for x in nv.allocs) and len(nv.frees) == 4


def test_a_gpm_read_that_fails_on_the_first_read_leaves_the_trial_without_gpm_and_says_so() -> None:
    nv = GpmNvml({"gpu0": [row(50)] * 4}, raise_on={"gpu0": 1})
    s, state = sampled(nv, 4)
    assert not s._gpm and nv.reads == {"gpu0": 1}
    assert state.samples == 4 and state.sm_clock_mhz is not None
    assert state.dram_bw_util_pct is None and state.gpm_samples == 0
    assert (state.gpm_note or "").startswith("GPM read failed: RuntimeError: GPU is lost")


def test_close_frees_every_gpm_sample_once_and_shuts_nvml_down() -> None:
    nv = GpmNvml({"gpu0": [row(10)] * 3, "gpu1": [row(10)] * 3}, count=2)
    s, _ = sampled(nv, 2)
    assert len(nv.allocs) == 4 and nv.frees == []  # two buffers per GPU, ping-ponged
    s.close()
    assert sorted(x.n for x in nv.frees) == [0, 1, 2, 3] and nv.shutdowns == 1
    assert s._gpm == {}
    s.close()  # a second close frees nothing twice (the fake asserts) and does not shut down again
    assert len(nv.frees) == 4 and nv.shutdowns == 1


def test_a_free_that_fails_still_frees_the_other_sample() -> None:
    class BadFree(GpmNvml):
        def nvmlGpmSampleFree(self, s: FakeSample) -> None:
            if s.n == 0:
                raise RuntimeError("Uninitialized")
            super().nvmlGpmSampleFree(s)

    nv = BadFree({"gpu0": [row(10)]})
    reader, _ = gpm_for(nv, "gpu0")
    assert reader is not None
    reader.close()
    assert [x.n for x in nv.frees] == [1]


def test_no_busy_gpu_gives_no_dram_figure() -> None:
    """A simulator or a CPU engine on a GPU host: every GPU idle, so GPM's DRAM figure is of idle
    GPUs, not of the server's bytes: none, and the trial says why."""
    from perftune.telemetry.gpu import Sample, summarize

    samples = [
        Sample(
            t_s=0.2 * k,
            gpu=g,
            sm_mhz=1980.0,
            mem_mhz=3201.0,
            power_w=80.0,
            temp_c=30.0,
            util_pct=0.0,
            reasons=0,
            dram_pct=0.0,
        )
        for k in range(5)
        for g in (0, 1)
    ]
    st = summarize(samples, [{"index": 0}, {"index": 1}], 0.2, None)
    assert st.available and st.samples == 10
    assert st.dram_bw_util_pct is None and st.gpm_samples == 0
    assert "no GPU was busy" in (st.gpm_note or "")
