"""Token accounting: the cheapest request that still counts every output token exactly. Pure.

Asking vLLM for usage on every chunk (`continuous_usage_stats`) makes its API server serialize a usage
object per token: on one H200 at concurrency 256 that cost about 0.9 s of API-server CPU per
512-request run (issue 23). Without speculative decoding, vLLM and SGLang stream one token per chunk,
so the final `usage.completion_tokens` plus the chunk count are already exact (records.decode checks
`chunks == completion_tokens` per request and says `final_usage_chunks`). Per-chunk usage is asked for
only where chunks can carry several tokens: a lever that says so (speculative decoding, multi-step
scheduling, a stream interval above one), or a warmup whose requests failed that check.

Modes (`BenchConfig.token_accounting`):
- `auto` (default): final usage, checked on the warmup (and on every trial); per-chunk usage where a
  lever or the warmup says chunks carry several tokens;
- `final`: final usage only, whatever happens (mismatches are still flagged per trial);
- `per-chunk`: usage on every chunk (the old behaviour; exact whatever the chunking).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perftune.bench.records import EXACT_SOURCES, RequestRecord

TokenAccounting = Literal["auto", "final", "per-chunk"]
Used = Literal["final", "per-chunk"]

# Levers (perftune's cross-engine names and the engines' own flags, as levers carry either) under
# which one chunk can carry several tokens. A value of None: any value but off/0/1/false does.
_MULTI_TOKEN_LEVERS: dict[str, str] = {
    "spec-method": "speculative decoding emits several accepted tokens per step",
    "spec-k": "speculative decoding emits several accepted tokens per step",
    "speculative-config": "speculative decoding emits several accepted tokens per step",
    "speculative-algorithm": "speculative decoding emits several accepted tokens per step",
    "speculative-model": "speculative decoding emits several accepted tokens per step",
    "num-scheduler-steps": "multi-step scheduling returns several tokens per step",
    "stream-interval": "the server batches several tokens into one chunk",
}
_OFF = {"", "0", "1", "off", "none", "false", "no"}


def multi_token_reason(levers: Mapping[str, Any]) -> str | None:
    """Why chunks may carry several tokens under these levers (None: one token per chunk expected)."""
    for key, value in levers.items():
        k = key.lstrip("-").replace("_", "-").lower()
        why = _MULTI_TOKEN_LEVERS.get(k)
        if why is not None and str(value).strip().lower() not in _OFF:
            return f"lever {key}={value}: {why}"
    return None


class ChunkCheck(BaseModel):
    """Per request: did the final usage equal the number of chunks (one token each)?"""

    model_config = ConfigDict(extra="forbid")
    checked: int = Field(description="successful requests checked")
    exact: int = Field(description="of them, requests whose per-chunk token counts are exact")
    example: str | None = Field(None, description="one request that was not, with its figures")

    @property
    def mismatches(self) -> int:
        return self.checked - self.exact


def check_chunks(records: Sequence[RequestRecord]) -> ChunkCheck:
    """How many successful records have exact per-chunk counts (EXACT_SOURCES), with one example."""
    ok = [r for r in records if r.ok]
    bad = [r for r in ok if r.token_source not in EXACT_SOURCES]
    example = None
    if bad:
        r = bad[0]
        carrying = sum(1 for c in r.chunks if c.tokens > 0)
        example = (
            f"request {r.idx}: {r.output_tokens} output tokens over {len(r.chunks)} chunks "
            f"({carrying} carrying tokens), counted as {r.token_source}"
        )
    return ChunkCheck(checked=len(ok), exact=len(ok) - len(bad), example=example)


class AccountingReport(BaseModel):
    """How a run counted its output tokens, and why."""

    model_config = ConfigDict(extra="forbid")
    requested: TokenAccounting = Field(description="the mode asked for")
    used: Used = Field(
        description="final: stream_options.include_usage only (one usage object per request); "
        "per-chunk: also continuous_usage_stats (a usage object on every chunk)"
    )
    reason: str = Field(description="why this mode was used")
    warmup: ChunkCheck | None = Field(None, description="the chunk check on the warmup (auto mode)")


def before_warmup(requested: TokenAccounting, levers: Mapping[str, Any]) -> tuple[Used, str]:
    """The mode for the warmup (and for the trials when nothing on the warmup changes it)."""
    if requested == "per-chunk":
        return "per-chunk", "asked for (--token-accounting per-chunk)"
    if requested == "final":
        return "final", "asked for (--token-accounting final)"
    why = multi_token_reason(levers)
    if why is not None:
        return "per-chunk", f"auto: {why}, so the final usage alone cannot place tokens on chunks"
    return "final", "auto: one token per chunk expected (no speculative or multi-step lever)"


def after_warmup(
    requested: TokenAccounting, levers: Mapping[str, Any], warmup: Sequence[RequestRecord] | None
) -> AccountingReport:
    """The mode for the trials: auto checks the warmup's requests one by one (records.decode)."""
    used, reason = before_warmup(requested, levers)
    if requested != "auto" or used == "per-chunk":
        return AccountingReport(requested=requested, used=used, reason=reason)
    if not warmup:
        return AccountingReport(
            requested=requested,
            used="final",
            reason=reason + "; no warmup to check it on: every trial request is checked instead",
        )
    check = check_chunks(warmup)
    if check.checked and check.mismatches == 0:
        return AccountingReport(
            requested=requested,
            used="final",
            reason=f"{reason}; confirmed on the warmup: all {check.checked} requests had exactly one "
            "token per chunk",
            warmup=check,
        )
    why = (
        f"{check.mismatches} of {check.checked} warmup requests did not have one token per chunk "
        f"({check.example})"
        if check.checked
        else "no warmup request succeeded to check"
    )
    return AccountingReport(
        requested=requested,
        used="per-chunk",
        reason=f"auto: {why}, so per-chunk usage is asked for",
        warmup=check,
    )


ESTIMATED_SHARE = 0.01  # above 1% of a trial's requests with estimated per-chunk counts, it is flagged


def trial_flag(trial: int, used: Used, records: Sequence[RequestRecord]) -> str | None:
    """A trial flag where more than 1% of its requests' per-chunk counts are estimated (their
    per-token times approximate); an odd merged chunk in a long run is counted, not flagged."""
    check = check_chunks(records)
    if not check.mismatches or check.mismatches <= ESTIMATED_SHARE * check.checked:
        return None
    hint = (
        "rerun with --token-accounting per-chunk" if used == "final" else "the server sent no per-chunk usage"
    )
    return (
        f"trial {trial}: {check.mismatches} of {check.checked} requests' per-chunk token counts are "
        f"estimated, so their per-token times (ITL, TTFT chunk) are approximate ({check.example}); {hint}"
    )
