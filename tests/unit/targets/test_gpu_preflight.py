"""GPU preflight decisions, and NVML reading through a fake NVML module."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from perftune.errors import DeployError
from perftune.targets.gpu_preflight import GpuState, check_gpus, read_gpus

GiB = 2**30


def _gpu(i: int, used_gib: float = 0.5, procs: list[tuple[int, str]] | None = None) -> GpuState:
    return GpuState(
        index=i,
        name="NVIDIA H100 80GB HBM3",
        total_bytes=80 * GiB,
        used_bytes=int(used_gib * GiB),
        processes=procs or [],
    )


def test_free_gpus_pass() -> None:
    check_gpus([_gpu(0), _gpu(1)], [0, 1], 16 * GiB)


@pytest.mark.parametrize(
    ("states", "wanted", "need", "message"),
    [
        ([_gpu(0)], [1], 0, "GPU 1 does not exist"),
        (
            [_gpu(0, 60, [(4242, "python3")])],
            [0],
            0,
            "GPU 0 (NVIDIA H100 80GB HBM3) is busy: 60.0 of 80.0 GiB used by pid 4242",
        ),
        ([_gpu(0, 0.2, [(7, "vllm")])], [0], 0, "is busy"),
        ([_gpu(0)], [0], 100 * GiB, "79.5 GiB free; the model needs 100.0 GiB per GPU"),
    ],
)
def test_refusals_name_the_gpu(states: list[GpuState], wanted: list[int], need: float, message: str) -> None:
    with pytest.raises(DeployError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_gpus(states, wanted, need)


class FakeNvml:
    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init, self.shutdown = fail_init, False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=80 * GiB, used=70 * GiB)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return [SimpleNamespace(pid=99)]

    def nvmlSystemGetProcessName(self, pid: int) -> bytes:
        return b"python3"

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"


def test_read_gpus_through_nvml() -> None:
    nv = FakeNvml()
    states = read_gpus(nv)
    assert states == [
        GpuState(
            index=0,
            name="NVIDIA H100 80GB HBM3",
            total_bytes=80 * GiB,
            used_bytes=70 * GiB,
            processes=[(99, "python3")],
        )
    ]
    assert nv.shutdown
    with pytest.raises(DeployError, match="busy"):
        check_gpus(states, [0], 0)


def test_no_driver_is_one_clear_error() -> None:
    with pytest.raises(DeployError, match="no NVIDIA GPU visible"):
        read_gpus(FakeNvml(fail_init=True))
