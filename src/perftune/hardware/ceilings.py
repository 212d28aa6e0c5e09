"""Load GPU ceilings from ceilings.yaml (the only place peaks come from)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field
from ruamel.yaml import YAML

from perftune.errors import ConfigError


class Gpu(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(description="ceilings.yaml key, e.g. h100-sxm")
    name: str
    memory_gb: float = Field(description="HBM capacity, decimal GB")
    hbm_tb_s: float = Field(description="peak HBM bandwidth, TB/s")
    tflops: dict[str, float] = Field(description="dense tensor TFLOPS per dtype")
    interconnect_gb_s: float = Field(description="GPU-to-GPU bandwidth, GB/s (bidirectional)")
    power_w: float
    aliases: list[str] = Field(default_factory=list)
    source: str = Field(description="where the figures come from")
    host_check: str | None = Field(
        None, description="what a real host of this GPU reported and measured against these figures"
    )
    sol_basis: str | None = Field(
        None, description="which HBM figure %SoL divides by, where the datasheet and a measurement differ"
    )

    @property
    def native_fp4(self) -> bool:
        """Whether the GPU has FP4 tensor cores (a peak of its own for fp4): Blackwell, not Hopper."""
        return "fp4" in self.tflops

    def peak_tflops(self, dtype: str) -> float:
        d = {"fp16": "bf16", "int4": "bf16", "nvfp4": "fp4", "mxfp4": "fp4"}.get(dtype, dtype)
        # Weight-only quantized GEMMs run at the activation dtype where the GPU has no faster path; fp4 and
        # int8 without a figure of their own take the fp8 rate (the same 8-bit tensor path on Hopper and
        # Ada: a higher peak keeps the floor a lower bound), then bf16.
        fallback = "fp8" if d in ("fp4", "int8") else "bf16"
        return self.tflops.get(d) or self.tflops.get(fallback) or self.tflops["bf16"]


@cache
def all_gpus() -> dict[str, Gpu]:
    text = resources.files("perftune.hardware").joinpath("ceilings.yaml").read_text()
    data = YAML(typ="safe").load(text)
    return {k: Gpu(key=k, **v) for k, v in data.items()}


def gpu(name: str) -> Gpu:
    key = name.lower().strip()
    gpus = all_gpus()
    if key in gpus:
        return gpus[key]
    for g in gpus.values():
        if key in g.aliases:
            return g
    raise ConfigError(f"unknown GPU '{name}'", hint="one of: " + ", ".join(sorted(gpus)))
