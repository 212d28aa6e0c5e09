"""The faithful client ceiling: how fast this host's client can go before its numbers stop being true.

Against the mock, ground truth is known: TTFT = ttft_ms, and a closed loop of c slots that each run
requests of ISL/OSL back to back delivers c * osl / (ttft + (osl - 1) * itl) output tok/s. The ceiling
is the highest measured output tok/s at which BOTH the measured mean TTFT and the measured output
throughput are within the tolerance of ground truth. Mean ITL alone is a weak signal: a saturated
client keeps it within 5% while its TTFT doubles.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_LADDER = (1, 16, 64, 128, 256, 512, 1024, 1536, 2048, 3072)
TOLERANCE = 0.10


class MockTruth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttft_ms: float = Field(100.0, description="mock time to first token")
    itl_ms: float = Field(20.0, description="mock per-token interval")
    tokens_per_chunk: int = Field(1, description="tokens per SSE chunk after the first")
    isl: int = Field(256, description="input tokens per request")
    osl: int = Field(128, description="output tokens per request")

    def request_ms(self) -> float:
        return self.ttft_ms + (self.osl - 1) * self.itl_ms

    def output_tok_s(self, concurrency: int) -> float:
        return concurrency * self.osl / (self.request_ms() / 1e3)


class CalibrationPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    concurrency: int = Field(description="closed-loop concurrency")
    ttft_ms: float = Field(description="measured mean TTFT")
    output_tok_s: float = Field(description="measured output throughput")
    truth_ttft_ms: float = Field(description="ground-truth TTFT")
    truth_output_tok_s: float = Field(description="ground-truth output throughput")
    ttft_err: float = Field(description="(measured - truth) / truth for TTFT")
    tput_err: float = Field(description="(measured - truth) / truth for output tok/s")
    itl_ms: float | None = Field(None, description="measured mean ITL (informational)")
    faithful: bool = Field(description="both errors within the tolerance")


def point(
    concurrency: int,
    ttft_ms: float,
    output_tok_s: float,
    truth: MockTruth,
    itl_ms: float | None = None,
    tolerance: float = TOLERANCE,
) -> CalibrationPoint:
    t_ttft, t_tput = truth.ttft_ms, truth.output_tok_s(concurrency)
    e1, e2 = (ttft_ms - t_ttft) / t_ttft, (output_tok_s - t_tput) / t_tput
    return CalibrationPoint(
        concurrency=concurrency,
        ttft_ms=ttft_ms,
        output_tok_s=output_tok_s,
        truth_ttft_ms=t_ttft,
        truth_output_tok_s=t_tput,
        ttft_err=e1,
        tput_err=e2,
        itl_ms=itl_ms,
        faithful=abs(e1) <= tolerance and abs(e2) <= tolerance,
    )


def ceiling(points: Sequence[CalibrationPoint]) -> CalibrationPoint | None:
    """The faithful point with the highest measured output tok/s (None if no point is faithful)."""
    good = [p for p in points if p.faithful]
    return max(good, key=lambda p: p.output_tok_s) if good else None


def requests_for(concurrency: int, rounds: int = 3) -> int:
    """Enough requests that every slot runs `rounds` back-to-back requests (steady state, not ramp)."""
    return max(concurrency * rounds, 8)
