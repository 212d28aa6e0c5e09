"""On the GPU host: check the ceilings file's GPU against what the host reports and measures.

NVML: name, memory, maximum SM and memory clocks, power limit. Measured: device-to-device copy
bandwidth (torch, bf16 tensors, CUDA events; a copy reads and writes every byte) while perftune's
NVML sampler reads GPM's DRAM bandwidth utilisation, so the copy's bytes/s and GPM's % of peak give
the peak GPM measures against. Prints one JSON object.

    python3 scripts/gpu/h200_ceiling_check.py GPU_KEY > ceiling_check.json
"""

from __future__ import annotations

import json
import sys

import pynvml
import torch

from perftune.hardware.ceilings import gpu
from perftune.telemetry.gpu import NvmlSampler

key = sys.argv[1] if len(sys.argv) > 1 else "h200"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 1500  # ~3 s of copying: many GPM periods inside it
g = gpu(key)
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
name = pynvml.nvmlDeviceGetName(h)
mem = pynvml.nvmlDeviceGetMemoryInfo(h)
host = {
    "name": name.decode() if isinstance(name, bytes) else str(name),
    "memory_total_gb": mem.total / 1e9,
    "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
    "mem_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM),
    "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
    "memory_bus_width_bits": pynvml.nvmlDeviceGetMemoryBusWidth(h),
}
# Theoretical HBM peak from the memory clock and bus width (HBM is double data rate).
host["hbm_peak_from_clock_tb_s"] = (
    host["mem_clock_max_mhz"] * 1e6 * 2 * host["memory_bus_width_bits"] / 8 / 1e12
)

n = 4 * 1024**3 // 2  # 4 GiB of bf16 per tensor
src = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
dst = torch.empty_like(src)
for _ in range(3):
    dst.copy_(src)
torch.cuda.synchronize()
sampler = NvmlSampler(period_s=0.2, indices=[0])
sampler.start()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(reps):
    dst.copy_(src)
end.record()
torch.cuda.synchronize()
state = sampler.stop()
sampler.close()
secs = start.elapsed_time(end) / 1e3
copy_tb_s = 2 * n * 2 * reps / secs / 1e12  # read + write, 2 bytes per element
util = state.dram_bw_util_pct
print(
    json.dumps(
        {
            "ceilings_key": g.key,
            "ceilings": {
                "name": g.name,
                "memory_gb": g.memory_gb,
                "hbm_tb_s": g.hbm_tb_s,
                "source": g.source,
            },
            "host": host,
            "copy": {"bytes_per_copy": 4 * n, "reps": reps, "seconds": secs, "tb_s": copy_tb_s},
            "gpm_during_copy": {
                "dram_bw_util_pct": util,
                "samples": state.gpm_samples,
                "note": state.gpm_note,
                "sm_clock_mhz": state.sm_clock_mhz,
                "mem_clock_mhz": state.mem_clock_mhz,
            },
            "copy_over_datasheet": copy_tb_s / g.hbm_tb_s,
            "gpm_implied_peak_tb_s": copy_tb_s / (util / 100.0) if util else None,
            "gpm_samples_dram_pct": [s.dram_pct for s in sampler.samples],
        },
        indent=2,
    )
)
