"""GPU state during a trial, from NVML (nvidia-ml-py): clocks, power, temperature, throttle reasons.

A trial measured while the GPU throttled is not comparable with one that did not: on an H200 at
concurrency 64-256 the SM clock fell from 1,980 to 1,520-1,660 MHz with the software power cap
active, while a cell's TPOT drifted 12.2 -> 13.7 -> 14.7 ms over its three trials (issue 23). The
sampler runs in a thread at a fixed period (NVML calls are blocking C calls of a few microseconds;
the bench's event loop is never touched) and `summarize` is pure.

Where the GPU has GPM (Hopper and later: `nvmlGpmQueryDeviceSupport`), every sample also reads the
DRAM bandwidth utilisation, SM occupancy and tensor-pipe activity over the last period from two GPM
samples: the L3 counters behind a cell's byte-grounded %SoL (issue 22). GPM is read in the same
thread at the same period; a GPU without it reads None and the trial says why.

`nvml` is injectable, so the sampler and the summary are tested against a fake NVML without a GPU.
Sampling reads this host's GPUs: it is meaningful only when the server runs on this host (see
`endpoint_is_local`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import socket
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

# NVML's clocks-event (throttle) reason bits, as in nvml.h. Idle and application-clock settings are
# not slowdowns and are left out of the report.
REASONS: dict[int, str] = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
}
# Reasons that are the hardware protecting itself: always flagged.
HARD_REASONS = frozenset({"hw_slowdown", "hw_thermal", "hw_power_brake", "sw_thermal"})
CLOCK_SM, CLOCK_MEM, TEMP_GPU = 1, 2, 0  # NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU
PERIOD_S = 0.2
HARD_SHARE = 0.05  # a hardware slowdown in >= 5% of samples throttled the trial
CAP_SHARE = 0.10  # the power cap in >= 10% of samples ...
CAP_CLOCK = 0.95  # ... with the median SM clock below 95% of the GPU's maximum throttled it
BUSY_UTIL_PCT = 5.0  # a GPU busy on average in the trial is one the server runs on


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    gpu: int
    sm_mhz: float
    mem_mhz: float
    power_w: float
    temp_c: float
    util_pct: float
    reasons: int
    dram_pct: float | None = None  # GPM: DRAM bandwidth utilisation over the last period, % of peak
    sm_occ_pct: float | None = None  # GPM: SM occupancy (warps resident / max), %
    tensor_pct: float | None = None  # GPM: any tensor pipe active, % of cycles


def endpoint_is_local(endpoint: str) -> bool:
    """Whether the server at this URL runs on this host (loopback, or one of this host's addresses)."""
    host = urlparse(endpoint).hostname or ""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.gethostbyname(host))
        except (OSError, ValueError):
            return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    try:
        mine = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False
    return str(ip) in mine


def _optional(fn: Any, *args: Any) -> float | None:
    """An NVML query a GPU may not support (power on some boards, utilisation under MIG): None."""
    try:
        return float(fn(*args))
    except Exception:
        return None


class Gpm:
    """GPM metrics of one GPU, each over the interval between two consecutive `read` calls."""

    METRICS = (
        ("dram_pct", "NVML_GPM_METRIC_DRAM_BW_UTIL"),
        ("sm_occ_pct", "NVML_GPM_METRIC_SM_OCCUPANCY"),
        ("tensor_pct", "NVML_GPM_METRIC_ANY_TENSOR_UTIL"),
    )

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml, self.handle = nvml, handle
        self.prev = nvml.nvmlGpmSampleAlloc()
        self.cur = nvml.nvmlGpmSampleAlloc()
        nvml.nvmlGpmSampleGet(handle, self.prev)

    def read(self) -> dict[str, float | None]:
        n = self.nvml
        n.nvmlGpmSampleGet(self.handle, self.cur)
        mg = n.c_nvmlGpmMetricsGet_t()
        mg.version = n.NVML_GPM_METRICS_GET_VERSION
        mg.numMetrics = len(self.METRICS)
        mg.sample1, mg.sample2 = self.prev, self.cur
        for k, (_name, const) in enumerate(self.METRICS):
            mg.metrics[k].metricId = getattr(n, const)
        n.nvmlGpmMetricsGet(mg)
        self.prev, self.cur = self.cur, self.prev
        out: dict[str, float | None] = {}
        for k, (name, _const) in enumerate(self.METRICS):
            m = mg.metrics[k]
            v = float(m.value) if int(getattr(m, "nvmlReturn", 0)) == 0 else None
            # The first read after the reader is made covers no full interval: NVML gives NaN.
            out[name] = None if v is None or math.isnan(v) else v
        return out

    def close(self) -> None:
        for s in (self.prev, self.cur):
            with contextlib.suppress(Exception):
                self.nvml.nvmlGpmSampleFree(s)


def gpm_for(nvml: Any, handle: Any) -> tuple[Gpm | None, str | None]:
    """A GPM reader for this GPU, or None and why (no GPM before Hopper, an old driver or binding)."""
    try:
        sup = nvml.nvmlGpmQueryDeviceSupport(handle)
        if not int(getattr(sup, "isSupportedDevice", sup)):
            return None, "GPM not supported on this GPU (Hopper or later has it)"
        return Gpm(nvml, handle), None
    except Exception as e:
        return None, f"GPM not available: {type(e).__name__}: {e}".rstrip(": ")


def _load_nvml() -> Any:
    import pynvml

    return pynvml


class NvmlSampler:
    """Samples every visible GPU (or `indices`) every `period_s` seconds in a daemon thread."""

    def __init__(self, nvml: Any = None, period_s: float = PERIOD_S, indices: Sequence[int] | None = None):
        self.period_s = period_s
        self.samples: list[Sample] = []
        self.devices: list[dict[str, Any]] = []
        self.unavailable: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handles: list[tuple[int, Any]] = []
        self._gpm: dict[int, Gpm] = {}
        self.gpm_note: str | None = None
        try:
            self.nvml = nvml if nvml is not None else _load_nvml()
            self.nvml.nvmlInit()
            count = int(self.nvml.nvmlDeviceGetCount())
            for i in indices if indices is not None else range(count):
                h = self.nvml.nvmlDeviceGetHandleByIndex(i)
                name = self.nvml.nvmlDeviceGetName(h)
                self._handles.append((i, h))
                limit = _optional(self.nvml.nvmlDeviceGetEnforcedPowerLimit, h)
                self.devices.append(
                    {
                        "index": i,
                        "name": name.decode() if isinstance(name, bytes) else str(name),
                        "sm_clock_max_mhz": _optional(self.nvml.nvmlDeviceGetMaxClockInfo, h, CLOCK_SM),
                        "power_limit_w": None if limit is None else limit / 1000.0,
                    }
                )
            if not self._handles:
                self.unavailable = "NVML sees no GPU on this host"
            for i, h in self._handles:
                reader, why = gpm_for(self.nvml, h)
                if reader is not None:
                    self._gpm[i] = reader
                else:
                    self.gpm_note = why
        except Exception as e:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded...
            self.unavailable = f"NVML not available: {type(e).__name__}: {e}".rstrip(": ")

    def _reasons(self, h: Any) -> int:
        for fn in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            f = getattr(self.nvml, fn, None)
            if f is not None:
                return int(f(h))
        return 0

    def sample_once(self) -> None:
        """One sample per GPU. The SM clock is required; a query a GPU does not support reads 0."""
        n, t = self.nvml, time.monotonic()
        for i, h in self._handles:
            util = _optional(lambda x: n.nvmlDeviceGetUtilizationRates(x).gpu, h)
            power = _optional(n.nvmlDeviceGetPowerUsage, h)
            gpm: dict[str, float | None] = {}
            if i in self._gpm:
                try:
                    gpm = self._gpm[i].read()
                except Exception as e:  # a GPM read that fails once fails for the trial: say so
                    self.gpm_note = f"GPM read failed: {type(e).__name__}: {e}"
                    self._gpm.pop(i).close()
            self.samples.append(
                Sample(
                    t_s=t,
                    gpu=i,
                    sm_mhz=float(n.nvmlDeviceGetClockInfo(h, CLOCK_SM)),
                    mem_mhz=_optional(n.nvmlDeviceGetClockInfo, h, CLOCK_MEM) or 0.0,
                    power_w=(power or 0.0) / 1000.0,
                    temp_c=_optional(n.nvmlDeviceGetTemperature, h, TEMP_GPU) or 0.0,
                    util_pct=util or 0.0,
                    reasons=int(_optional(self._reasons, h) or 0),
                    **gpm,
                )
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as e:  # a GPU that fell off the bus mid-trial: stop, and say so
                self.unavailable = f"NVML sampling failed mid-trial: {type(e).__name__}: {e}"
                return
            self._stop.wait(self.period_s)

    def start(self) -> None:
        if self.unavailable is not None or self._thread is not None:
            return
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="perftune-nvml", daemon=True)
        self._thread.start()

    def stop(self) -> GpuTrialState:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            if self._thread.is_alive():  # a hung NVML call: never start a second sampler beside it
                self.unavailable = "NVML sampling hung (no answer within 5 s); sampling stopped"
            else:
                self._thread = None
        return summarize(list(self.samples), self.devices, self.period_s, self.unavailable, self.gpm_note)

    def close(self) -> None:
        """Release NVML (its init is reference-counted)."""
        if self._handles and self._thread is None:
            for g in self._gpm.values():
                g.close()
            self._gpm = {}
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
            self._handles = []


class GpuTrialState(BaseModel):
    """The GPU during one trial: what NVML read at a fixed period, summarized."""

    model_config = ConfigDict(extra="forbid")
    available: bool
    note: str | None = Field(None, description="why there is no state (no NVML, remote server, ...)")
    devices: list[dict[str, Any]] = Field(default_factory=list, description="index, name, max SM clock")
    samples: int = 0
    period_s: float = PERIOD_S
    sm_clock_mhz: dict[str, float] | None = Field(None, description="min, median, max over samples")
    sm_clock_max_mhz: float | None = Field(None, description="the GPU's maximum SM clock (NVML)")
    mem_clock_mhz: float | None = Field(None, description="median memory clock")
    power_w: dict[str, float] | None = Field(None, description="mean and max board power")
    power_limit_w: float | None = None
    temp_max_c: float | None = None
    util_mean_pct: float | None = None
    reasons: dict[str, float] = Field(
        default_factory=dict, description="throttle reason -> share of samples it was active in"
    )
    throttled: bool = Field(False, description="see `why`")
    why: str | None = Field(None, description="what made the trial throttled")
    dram_bw_util_pct: float | None = Field(
        None, description="GPM DRAM bandwidth utilisation, mean over busy samples, % of the GPU's peak"
    )
    sm_occupancy_pct: float | None = Field(None, description="GPM SM occupancy, mean over busy samples")
    tensor_active_pct: float | None = Field(None, description="GPM tensor-pipe activity, mean")
    gpm_samples: int = Field(0, description="samples with GPM figures")
    gpm_note: str | None = Field(None, description="why there are no GPM figures")


def _mean(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.fmean(v) if v else None


def summarize(
    samples: Sequence[Sample],
    devices: Sequence[dict[str, Any]],
    period_s: float,
    unavailable: str | None,
    gpm_note: str | None = None,
) -> GpuTrialState:
    """One trial's GPU state; throttled where a hardware slowdown showed in >= 5% of samples, or the
    power cap in >= 10% with the median SM clock below 95% of the GPU's maximum. Pure."""
    if not samples:
        return GpuTrialState(
            available=False,
            note=unavailable or "no NVML sample in the trial (shorter than the sampling period?)",
            devices=list(devices),
        )
    # NVML sees every GPU of the host: judge the ones the trial kept busy (an idle neighbour's full
    # clock would hide a serving GPU's power cap), all of them where none was.
    util: dict[int, list[float]] = {}
    for smp in samples:
        util.setdefault(smp.gpu, []).append(smp.util_pct)
    busy = {g for g, u in util.items() if statistics.fmean(u) >= BUSY_UTIL_PCT}
    idle = sorted(set(util) - busy) if busy else []
    if busy:
        samples = [smp for smp in samples if smp.gpu in busy]
        devices = [d for d in devices if d.get("index") in busy]
    if idle:
        left = f"idle GPU(s) {', '.join(map(str, idle))} left out"
        unavailable = f"{unavailable}; {left}" if unavailable else left
    sm = sorted(s.sm_mhz for s in samples)
    share: dict[str, float] = {}
    for bit, name in REASONS.items():
        k = sum(1 for s in samples if s.reasons & bit)
        if k:
            share[name] = k / len(samples)
    top = max((float(d.get("sm_clock_max_mhz") or 0.0) for d in devices), default=0.0) or None
    med = statistics.median(sm)
    hard = {k: v for k, v in share.items() if k in HARD_REASONS and v >= HARD_SHARE}
    why = None
    if hard:
        why = ", ".join(f"{k} in {v:.0%} of samples" for k, v in sorted(hard.items()))
    elif share.get("sw_power_cap", 0.0) >= CAP_SHARE and top and med < CAP_CLOCK * top:
        why = (
            f"sw_power_cap in {share['sw_power_cap']:.0%} of samples, median SM clock {med:,.0f} of "
            f"{top:,.0f} MHz"
        )
    powers = [s.power_w for s in samples]
    # The first GPM figure of a trial covers the interval since the previous trial's last sample (or
    # the sampler's start): left out, so idle time between trials never dilutes a trial's bandwidth.
    first: dict[int, Sample] = {}
    for smp in samples:
        first.setdefault(smp.gpu, smp)
    timed = [smp for smp in samples if first[smp.gpu] is not smp and smp.dram_pct is not None]
    gnote = gpm_note if not timed else None
    if not busy and timed:
        # No GPU was busy: the server is not on this host's GPUs (a simulator, a CPU engine). An idle
        # GPU's DRAM figure says nothing about the server's bytes.
        timed, gnote = [], "no GPU was busy in the trial (the server runs on none of this host's GPUs)"
    if gpm_note and "failed" in gpm_note:
        # GPM stopped mid-trial: the figure would cover part of the trial only. None, and say why.
        timed, gnote = [], gpm_note
    if not timed and gnote is None:
        gnote = "no GPM sample in the trial (GPM needs two samples, one period apart)"
    return GpuTrialState(
        available=True,
        note=unavailable,
        devices=list(devices),
        samples=len(samples),
        period_s=period_s,
        sm_clock_mhz={"min": sm[0], "median": med, "max": sm[-1]},
        sm_clock_max_mhz=top,
        mem_clock_mhz=statistics.median(s.mem_mhz for s in samples),
        power_w={"mean": statistics.fmean(powers), "max": max(powers)},
        power_limit_w=max((float(d.get("power_limit_w") or 0.0) for d in devices), default=0.0) or None,
        temp_max_c=max(s.temp_c for s in samples),
        util_mean_pct=statistics.fmean(s.util_pct for s in samples),
        reasons=share,
        throttled=why is not None,
        why=why,
        dram_bw_util_pct=_mean([smp.dram_pct for smp in timed]),
        sm_occupancy_pct=_mean([smp.sm_occ_pct for smp in timed]),
        tensor_active_pct=_mean([smp.tensor_pct for smp in timed]),
        gpm_samples=len(timed),
        gpm_note=gnote,
    )
