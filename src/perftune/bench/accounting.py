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

NO_USAGE_SOURCES = frozenset({"retokenized", "chunk_count"})

TokenAccounting = Literal["auto", "final", "per-chunk"]
Used = Literal["final", "per-chunk"]

# Levers under which one chunk can carry several tokens: perftune's catalog name (serving/levers.yaml
# `speculative`, alias `speculative-config`) and the engines' own flags, as levers may carry either.
# Each with the values that leave it off: a speculative lever is on at any value (one draft token
# already gives up to two tokens a step); a step or stream interval only above 1.
_SPEC = "speculative decoding emits several accepted tokens per step"
_OFF_ANY = frozenset({"", "off", "none", "null", "false", "no", "{}"})
_MULTI_TOKEN_LEVERS: dict[str, tuple[str, frozenset[str]]] = {
    "speculative": (_SPEC, _OFF_ANY),
    "spec-method": (_SPEC, _OFF_ANY),
    "speculative-config": (_SPEC, _OFF_ANY),
    "speculative-algorithm": (_SPEC, _OFF_ANY),
    "speculative-model": (_SPEC, _OFF_ANY),
    "speculative-num-draft-tokens": (_SPEC, _OFF_ANY | {"0"}),
    "num-speculative-tokens": (_SPEC, _OFF_ANY | {"0"}),
    "num-scheduler-steps": ("multi-step scheduling returns several tokens per step", _OFF_ANY | {"0", "1"}),
    "stream-interval": ("the server batches several tokens into one chunk", _OFF_ANY | {"0", "1"}),
}


def multi_token_reason(levers: Mapping[str, Any]) -> str | None:
    """Why chunks may carry several tokens under these levers (None: one token per chunk expected)."""
    for key, value in levers.items():
        k = key.lstrip("-").replace("_", "-").lower()
        entry = _MULTI_TOKEN_LEVERS.get(k)
        if entry is not None and str(value).strip().lower() not in entry[1]:
            return f"lever {key}={value}: {entry[0]}"
    return None


class ChunkCheck(BaseModel):
    """Per request: did every chunk carry exactly one token (the final usage equals the chunk count)?
    Requests without any usage from the server (retokenized, chunk_count) are counted apart: they say
    nothing about merged chunks, and per-chunk usage would not help them."""

    model_config = ConfigDict(extra="forbid")
    checked: int = Field(description="successful requests checked")
    exact: int = Field(description="of them, requests whose per-chunk token counts are exact")
    no_usage: int = Field(0, description="of them, requests the server sent no usage for")
    tokens: int = Field(0, description="output tokens of the checked requests")
    estimated_tokens: int = Field(
        0, description="of them, tokens whose chunk was estimated (merged chunks' surplus)"
    )
    example: str | None = Field(None, description="one request that was not exact, with its figures")

    @property
    def mismatches(self) -> int:
        """Requests with merged chunks (the final usage above the chunk count)."""
        return self.checked - self.exact - self.no_usage

    @property
    def estimated_share(self) -> float:
        return self.estimated_tokens / self.tokens if self.tokens else 0.0


def check_chunks(records: Sequence[RequestRecord]) -> ChunkCheck:
    """How many successful records have exact per-chunk counts (EXACT_SOURCES), with one example."""
    ok = [r for r in records if r.ok]
    none = [r for r in ok if r.token_source in NO_USAGE_SOURCES]
    bad = [r for r in ok if r.token_source not in EXACT_SOURCES and r.token_source not in NO_USAGE_SOURCES]
    example = None
    if bad:
        r = bad[0]
        carrying = sum(1 for c in r.chunks if c.tokens > 0)
        example = (
            f"request {r.idx}: {r.output_tokens} output tokens over {len(r.chunks)} chunks "
            f"({carrying} carrying tokens), counted as {r.token_source}"
        )
    return ChunkCheck(
        checked=len(ok),
        exact=len(ok) - len(bad) - len(none),
        no_usage=len(none),
        tokens=sum(r.output_tokens for r in ok),
        estimated_tokens=sum(r.estimated_tokens for r in bad),
        example=example,
    )


# Above 5% of output tokens placed by estimate, chunks carry several tokens by design (speculative
# decoding: typically 30-70%), not by the odd merge under load. Measured on one H200, vLLM 0.26.0,
# random 1024/128 with per-chunk usage: 1.000-1.012 tokens per chunk at c=64, 1.027-1.034 at c=256,
# 1.016-1.017 at c=512 (benchmarks/results/2026-12-02-h200-vllm-0.26.0-client-compare): 0-3.3%.
BY_DESIGN_SHARE = 0.05


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
    notes: list[str] = Field(
        default_factory=list, description="per trial: requests with merged chunks, below the flag line"
    )


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
    """The mode for the trials: auto checks the warmup's requests one by one (records.decode), and
    asks for per-chunk usage where more than 5% of their tokens could not be placed one per chunk."""
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
    if check.checked and check.no_usage == check.checked:
        return AccountingReport(
            requested=requested,
            used="final",
            reason="auto: the server sent no usage on the warmup, so per-chunk usage cannot help: tokens "
            "are retokenized (--tokenizer) or counted one per chunk, and per-token times are approximate",
            warmup=check,
        )
    if not check.checked:
        return AccountingReport(
            requested=requested,
            used="per-chunk",
            reason="auto: no warmup request succeeded to check one token per chunk on, so per-chunk "
            "usage is asked for",
            warmup=check,
        )
    if check.estimated_share <= BY_DESIGN_SHARE:
        detail = (
            f"all {check.checked} requests had exactly one token per chunk"
            if not check.mismatches
            else f"{check.mismatches} of {check.checked} requests had a merged chunk, "
            f"{check.estimated_share:.1%} of tokens (<= {BY_DESIGN_SHARE:.0%}: merging under load, not "
            "by design)"
        )
        return AccountingReport(
            requested=requested,
            used="final",
            reason=f"{reason}; confirmed on the warmup: {detail}",
            warmup=check,
        )
    return AccountingReport(
        requested=requested,
        used="per-chunk",
        reason=f"auto: on the warmup {check.estimated_share:.0%} of tokens came several to a chunk "
        f"(> {BY_DESIGN_SHARE:.0%}; {check.example}), so per-chunk usage is asked for",
        warmup=check,
    )


def trial_check(
    trial: int, used: Used, records: Sequence[RequestRecord], itl_slo: bool = False
) -> tuple[str | None, str | None]:
    """(flag, note) for one trial's token accounting. Merged chunks leave TTFT, TPOT, e2e and tok/s
    exact and estimate only where the surplus tokens of a merged chunk sit (per-token ITL): a note.
    A flag where more than 5% of tokens were placed by estimate, or where an ITL SLO judges them."""
    check = check_chunks(records)
    if check.no_usage and not check.mismatches:
        return None, (
            f"trial {trial}: the server sent no usage for {check.no_usage} of {check.checked} requests: "
            "their tokens were retokenized or counted one per chunk (approximate)"
        )
    if not check.mismatches:
        return None, None
    what = (
        f"trial {trial}: {check.mismatches} of {check.checked} requests had chunks of several tokens; "
        f"{check.estimated_tokens:,} of {check.tokens:,} tokens ({check.estimated_share:.1%}) placed by "
        f"estimate ({check.example})"
    )
    if check.estimated_share > BY_DESIGN_SHARE or itl_slo:
        hint = (
            "rerun with --token-accounting per-chunk"
            if used == "final"
            else "the server did not honour continuous_usage_stats"
        )
        why = (
            "an ITL SLO judges them"
            if itl_slo and check.estimated_share <= BY_DESIGN_SHARE
            else (f"> {BY_DESIGN_SHARE:.0%}")
        )
        return f"{what}: per-token ITL is approximate ({why}); {hint}", None
    return None, f"{what}: TTFT, TPOT, e2e and tok/s exact, per-token ITL of those chunks estimated"
