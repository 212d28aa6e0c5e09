"""Per-request records: the raw capture of the hot path, and the pure decode into exact tokens.

`RawCapture` is what the client keeps while a request is in flight: timestamps and the network reads,
nothing parsed. `decode()` turns it into a `RequestRecord` with per-chunk token counts. Raw records are
kept on disk, so a metrics fix never needs a re-run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson

from perftune.bench.sse import DONE, parse_reads

ErrorKind = Literal["error", "timeout", "cancelled"]
TokenSource = Literal["usage_delta", "final_usage", "retokenized", "chunk_count", "none"]
Api = Literal["completions", "chat"]

# Tokenizer hook for the retokenize fallback: text -> number of tokens.
CountTokens = Callable[[str], int]


@dataclass(slots=True)
class RawCapture:
    """Everything the hot path records for one request. Times are time.monotonic_ns()."""

    idx: int
    trial: int
    api: Api
    t_sched_ns: int
    t_send_ns: int = 0
    t_headers_ns: int = 0
    t_end_ns: int = 0
    status: int = 0
    reads: list[tuple[int, bytes]] = field(default_factory=list)
    error_kind: ErrorKind | None = None
    error_message: str = ""
    expected_input_tokens: int | None = None
    expected_output_tokens: int | None = None


@dataclass(slots=True)
class Chunk:
    t_ns: int
    tokens: int
    text_len: int


@dataclass(slots=True)
class RequestRecord:
    """One request, decoded. `chunks` holds every data chunk that carried choices, token-counted."""

    idx: int
    trial: int
    api: Api
    ok: bool
    error_kind: ErrorKind | None
    error_message: str
    status: int
    t_sched_ns: int
    t_send_ns: int
    t_end_ns: int
    input_tokens: int | None
    output_tokens: int
    token_source: TokenSource
    expected_input_tokens: int | None
    expected_output_tokens: int | None
    chunks: list[Chunk]
    text: str = ""

    # ---- derived metrics (ms); None when undefined for this request ----
    @property
    def token_chunks(self) -> list[Chunk]:
        return [c for c in self.chunks if c.tokens > 0]

    @property
    def ttft_ms(self) -> float | None:
        tc = self.token_chunks
        return (tc[0].t_ns - self.t_send_ns) / 1e6 if tc else None

    @property
    def e2e_ms(self) -> float | None:
        return (self.t_end_ns - self.t_send_ns) / 1e6 if self.ok else None

    @property
    def e2e_from_schedule_ms(self) -> float | None:
        return (self.t_end_ns - self.t_sched_ns) / 1e6 if self.ok else None

    @property
    def client_queue_ms(self) -> float:
        return (self.t_send_ns - self.t_sched_ns) / 1e6

    @property
    def tpot_ms(self) -> float | None:
        ttft, e2e = self.ttft_ms, self.e2e_ms
        if ttft is None or e2e is None or self.output_tokens < 2:
            return None
        return (e2e - ttft) / (self.output_tokens - 1)

    def itl_ms(self) -> list[float]:
        """Per-token intervals: a chunk's gap to the previous token chunk, spread over its tokens."""
        out: list[float] = []
        tc = self.token_chunks
        for prev, cur in itertools.pairwise(tc):
            per = (cur.t_ns - prev.t_ns) / 1e6 / cur.tokens
            out.extend([per] * cur.tokens)
        return out

    def icl_ms(self) -> list[float]:
        """Inter-chunk gaps between consecutive token-carrying chunks."""
        tc = self.token_chunks
        return [(b.t_ns - a.t_ns) / 1e6 for a, b in itertools.pairwise(tc)]

    @property
    def input_mismatch(self) -> bool:
        return (
            self.expected_input_tokens is not None
            and self.input_tokens is not None
            and self.input_tokens != self.expected_input_tokens
        )

    @property
    def output_mismatch(self) -> bool:
        return (
            self.ok
            and self.expected_output_tokens is not None
            and (self.output_tokens != self.expected_output_tokens)
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunks"] = [[c.t_ns, c.tokens, c.text_len] for c in self.chunks]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RequestRecord:
        d = dict(d)
        d["chunks"] = [Chunk(int(t), int(k), int(n)) for t, k, n in d["chunks"]]
        return cls(**d)


def _choice_text(choice: dict[str, Any], api: Api) -> str:
    if api == "completions":
        return str(choice.get("text") or "")
    delta = choice.get("delta") or {}
    # Reasoning models stream thinking tokens in a separate field; they are generated tokens too.
    return str(delta.get("content") or "") + str(
        delta.get("reasoning_content") or delta.get("reasoning") or ""
    )


def _spread(total: int, weights: list[int]) -> list[int]:
    """Split `total` over slots in proportion to `weights` (largest remainder); sums exactly."""
    if not weights:
        return []
    wsum = sum(weights)
    if wsum <= 0:
        weights, wsum = [1] * len(weights), len(weights)
    raw = [total * w / wsum for w in weights]
    base = [int(x) for x in raw]
    rest = total - sum(base)
    order = sorted(range(len(raw)), key=lambda i: raw[i] - base[i], reverse=True)
    for i in order[:rest]:
        base[i] += 1
    return base


def decode(raw: RawCapture, count_tokens: CountTokens | None = None) -> RequestRecord:
    """Turn a raw capture into exact per-chunk token counts.

    Order of trust: the per-chunk change of `usage.completion_tokens` (continuous usage stats), then the
    final `usage` spread over the text chunks, then retokenizing the text; never one chunk = one token
    unless nothing else is available (then the source says `chunk_count`).
    """
    ok = raw.error_kind is None
    error_kind, error_message = raw.error_kind, raw.error_message
    rows: list[tuple[int, str, int | None]] = []  # (t, text, cumulative completion tokens)
    final_completion: int | None = None
    prompt_tokens: int | None = None
    saw_done = False
    if ok:
        for ev in parse_reads(raw.reads):
            if ev.data == DONE:
                saw_done = True
                continue
            try:
                obj = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                ok, error_kind, error_message = False, "error", f"unparseable SSE data: {ev.data[:200]!r}"
                break
            if not isinstance(obj, dict):
                continue
            if "error" in obj:  # engines report mid-stream failures as an error event
                err = obj["error"]
                msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                ok, error_kind, error_message = False, "error", f"stream error: {msg}"
                break
            usage = obj.get("usage") or None
            cum: int | None = None
            if usage:
                cum = usage.get("completion_tokens")
                if usage.get("prompt_tokens") is not None:
                    prompt_tokens = int(usage["prompt_tokens"])
                if cum is not None:
                    final_completion = int(cum)
            choices = obj.get("choices") or []
            if choices:
                rows.append((ev.t_ns, _choice_text(choices[0], raw.api), None if cum is None else int(cum)))
        if ok and not saw_done and not rows:
            ok, error_kind, error_message = False, "error", "stream ended without any data"

    chunks: list[Chunk]
    source: TokenSource
    text = "".join(r[1] for r in rows)
    if rows and all(r[2] is not None for r in rows):
        source, prev, chunks = "usage_delta", 0, []
        for t, tx, cum in rows:
            assert cum is not None
            chunks.append(Chunk(t, max(0, cum - prev), len(tx)))
            prev = max(prev, cum)
    elif rows:
        text_idx = [i for i, r in enumerate(rows) if r[1]]
        if final_completion is not None:
            source, total = "final_usage", final_completion
        elif count_tokens is not None:
            source, total = "retokenized", count_tokens(text)
        else:
            source, total = "chunk_count", len(text_idx)
        if total == len(text_idx):  # the common case: one token per text chunk, exactly
            weights = [1] * len(text_idx)
        elif count_tokens is not None:
            weights = [count_tokens(rows[i][1]) for i in text_idx]
        else:  # no tokenizer: split by text length, and the source says how the count was made
            weights = [len(rows[i][1]) for i in text_idx]
        spread = dict(zip(text_idx, _spread(total, weights), strict=True))
        chunks = [Chunk(t, spread.get(i, 0), len(tx)) for i, (t, tx, _) in enumerate(rows)]
    else:
        source, chunks = "none", []

    out_tokens = sum(c.tokens for c in chunks)
    if ok and out_tokens == 0:
        ok, error_kind, error_message = False, "error", "response carried no generated tokens"
    return RequestRecord(
        idx=raw.idx,
        trial=raw.trial,
        api=raw.api,
        ok=ok,
        error_kind=error_kind,
        error_message=error_message,
        status=raw.status,
        t_sched_ns=raw.t_sched_ns,
        t_send_ns=raw.t_send_ns,
        t_end_ns=raw.t_end_ns,
        input_tokens=prompt_tokens,
        output_tokens=out_tokens,
        token_source=source,
        expected_input_tokens=raw.expected_input_tokens,
        expected_output_tokens=raw.expected_output_tokens,
        chunks=chunks,
        text=text,
    )
