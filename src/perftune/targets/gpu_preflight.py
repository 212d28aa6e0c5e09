"""GPU preflight before an engine launches (NVML via nvidia-ml-py): the requested GPUs exist, nobody
else is on them, and they have the memory the plan needs. Refuses with one line naming the GPU.

`nvml` is injectable so the decision is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from perftune.errors import DeployError

BUSY_USED_FRACTION = 0.10  # another tenant holds more than this of a GPU's memory: busy


class GpuState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    processes: list[tuple[int, str]]


def read_gpus(nvml: Any = None) -> list[GpuState]:
    if nvml is None:
        try:
            import pynvml
        except ImportError as e:
            raise DeployError("nvidia-ml-py is not installed", hint="pip install nvidia-ml-py") from e
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError subclasses: no driver, no GPU
        raise DeployError(
            f"no NVIDIA GPU visible (NVML: {e})", hint="is the driver loaded? run nvidia-smi"
        ) from e
    try:
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            procs = []
            for p in nvml.nvmlDeviceGetComputeRunningProcesses(h):
                try:
                    pname = nvml.nvmlSystemGetProcessName(p.pid)
                except Exception:
                    pname = "?"
                procs.append((int(p.pid), pname.decode() if isinstance(pname, bytes) else str(pname)))
            name = nvml.nvmlDeviceGetName(h)
            out.append(
                GpuState(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    total_bytes=int(mem.total),
                    used_bytes=int(mem.used),
                    processes=procs,
                )
            )
        return out
    finally:
        nvml.nvmlShutdown()


def check_gpus(states: Sequence[GpuState], wanted: Sequence[int], need_bytes_per_gpu: float) -> None:
    """Raise DeployError for the first wanted GPU that is missing, busy or too small. Pure."""
    by_index = {s.index: s for s in states}
    for i in wanted:
        s = by_index.get(i)
        if s is None:
            raise DeployError(
                f"GPU {i} does not exist (this node has {len(states)})",
                hint="pick GPUs with --gpus, e.g. --gpus 0"
                + (f",{len(states) - 1}" if len(states) > 1 else ""),
            )
        gib = 2**30
        if s.processes or s.used_bytes > BUSY_USED_FRACTION * s.total_bytes:
            who = ", ".join(f"pid {p} ({n})" for p, n in s.processes) or "unknown processes"
            raise DeployError(
                f"GPU {i} ({s.name}) is busy: {s.used_bytes / gib:.1f} of {s.total_bytes / gib:.1f} GiB "
                f"used by {who}",
                hint="stop that process, or pick a free GPU with --gpus",
            )
        if s.total_bytes - s.used_bytes < need_bytes_per_gpu:
            raise DeployError(
                f"GPU {i} ({s.name}) has {(s.total_bytes - s.used_bytes) / gib:.1f} GiB free; "
                f"the model needs {need_bytes_per_gpu / gib:.1f} GiB per GPU",
                hint="raise --tp, quantize, or use a larger GPU",
            )
