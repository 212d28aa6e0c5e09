"""Per-request records: the raw capture of the hot path, and the pure decode into exact tokens.

`RawCapture` is what the client keeps while a request is in flight: timestamps and the network reads,
nothing parsed. `decode()` turns it into a `RequestRecord` with per-chunk token counts. Raw records are
kept on disk, so a metrics fix never needs a re-run.

A failed request keeps what it received: its record counts the tokens that arrived before the failure
(`output_tokens`, `chunks`), and `error_kind` says how it failed (FAILURE_CLASSES). The client marks
every transport failure `error`; decode() tells them apart from the capture's own facts (see
failure_class), so captures recorded before the finer classes existed decode into them too.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from perftune.bench.sse import DONE, parse_reads

ErrorKind = Literal["error", "timeout", "cancelled", "dropped", "connection"]
FAILURE_CLASSES: dict[str, str] = {
    "error": "the server answered an HTTP error status, or its stream carried an error event, "
    "unparseable data or no generated tokens",
    "timeout": "no complete response within the per-request timeout (a wedged or stalled engine)",
    "cancelled": "cancelled by the client (interrupt or trial stop)",
    "dropped": "the response broke off after its 200 head: the connection was closed or reset "
    "mid-stream (an engine that died or dropped the request); the tokens received so far are kept",
    "connection": "no response head: the connection was refused, reset or closed before the status "
    "line (an engine that is down)",
}
TokenSource = Literal[
    "usage_delta", "final_usage_chunks", "final_usage", "retokenized", "chunk_count", "none"
]
# Sources whose per-chunk token counts are exact, so per-token times (ITL) are too: the per-chunk
# change of usage.completion_tokens, or the final usage equal to the chunk count (one token a chunk).
EXACT_SOURCES: frozenset[str] = frozenset({"usage_delta", "final_usage_chunks"})
TOKEN_SOURCES: dict[str, str] = {
    "usage_delta": "exact: the per-chunk change of usage.completion_tokens (continuous usage stats)",
    "final_usage_chunks": "exact: the final usage.completion_tokens equals the number of chunks that "
    "can carry a token, so every chunk carried one",
    "final_usage": "total exact (final usage), per-chunk split estimated: where the usage exceeds the "
    "chunks that can carry a token, every such chunk got one and only the surplus (estimated_tokens) "
    "went where the text is longest (retokenized with a tokenizer), so TTFT, TPOT, e2e and tok/s stay "
    "exact; where it is below that count (a server sending chunks without tokens), the whole total "
    "was split over the text chunks (estimated_tokens = all of them)",
    "retokenized": "no usage from the server: the text retokenized with the model's tokenizer",
    "chunk_count": "no usage and no tokenizer: one token per text chunk (approximate)",
    "none": "no chunk carried choices",
}
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
    estimated_tokens: int = 0  # tokens whose chunk was estimated (not exact): see TOKEN_SOURCES

    # ---- derived metrics (ms); None when undefined for this request ----
    @property
    def itl_exact(self) -> bool:
        """Per-chunk token counts (so per-token times) are exact, not split by an estimate."""
        return self.token_source in EXACT_SOURCES

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


def _carries_no_token(choice: dict[str, Any], api: Api) -> bool:
    """A chunk that is structure, not a token: a chat role-only opener, or a finish-only closer
    without any text field (an empty text field may still stand for a token)."""
    if api == "chat":
        delta = choice.get("delta") or {}
        fields = ("content", "reasoning_content", "reasoning")
        if "role" in delta:
            return True
        return bool(choice.get("finish_reason")) and all(delta.get(f) is None for f in fields)
    return bool(choice.get("finish_reason")) and choice.get("text") is None


def _at_least_one(
    rows: list[tuple[int, str, int | None]], every: list[int], total: int, count_tokens: CountTokens | None
) -> list[int] | None:
    """Tokens per row where the final usage exceeds the chunks that can carry a token (`every`): one
    each, and the surplus where the text is longest (retokenized when a tokenizer is given). None where
    there are fewer tokens than such chunks (then no chunk is sure to carry one)."""
    if not every or total < len(every):
        return None
    if count_tokens is not None:
        weights = [max(0, count_tokens(rows[i][1]) - 1) for i in every]
    else:
        weights = [len(rows[i][1]) for i in every]
    extra = _spread(total - len(every), weights)
    out = [0] * len(rows)
    for i, k in zip(every, extra, strict=True):
        out[i] = 1 + k
    return out


def _one_per_chunk(rows: list[tuple[int, str, int | None]], every: list[int], total: int) -> set[int] | None:
    """The chunks that carried one token each, where the final usage says exactly that many did.

    An equal count is taken as one token a chunk: a merged chunk of two tokens and an empty-text
    chunk of none would cancel out, but vLLM and SGLang send no token-less choice chunk besides the
    opener and closer excluded here, so the count is exact for them (tested on their transcripts):
    every chunk that can carry a token, else the text chunks alone (an engine that sends no chunk for
    a token with no text yet); None where neither count equals the total (several tokens in a chunk)."""
    for cand in (every, [i for i in every if rows[i][1]]):
        if cand and len(cand) == total:
            return set(cand)
    return None


def failure_class(raw: RawCapture) -> ErrorKind | None:
    """How a capture failed, from its facts (None: it did not fail in transport).

    The client marks an HTTP error status and every transport failure `error`; it records the status
    only once a response head arrived. So `error` with status 200 is a stream that broke off after its
    head (dropped), and `error` with no status at all never got a head (connection)."""
    if raw.error_kind != "error":
        return raw.error_kind
    if raw.status == 0:
        return "connection"
    if raw.status == 200:
        return "dropped"
    return "error"


def decode(raw: RawCapture, count_tokens: CountTokens | None = None) -> RequestRecord:
    """Turn a raw capture into exact per-chunk token counts.

    Order of trust: the per-chunk change of `usage.completion_tokens` (continuous usage stats); then
    the final `usage` checked against the chunk count: where it equals the number of chunks that can
    carry a token (every choice chunk but a chat role-only opener and a finish-only closer without a
    text field; else the text chunks), each carried exactly one (`final_usage_chunks`, as vLLM and
    SGLang stream without speculative decoding); only where it does not is the final total split
    over the chunks by retokenizing them or by text length (`final_usage`, per-token times
    approximate); without usage, retokenizing the text; one chunk = one token only when nothing else
    is available (`chunk_count`). See TOKEN_SOURCES.

    A capture that failed in transport keeps its class (failure_class); its reads are still decoded,
    up to a torn last event, so the record holds the tokens that arrived before the failure.
    """
    error_kind = failure_class(raw)
    ok = error_kind is None
    error_message = raw.error_message
    rows: list[tuple[int, str, int | None]] = []  # (t, text, cumulative completion tokens)
    # Rows that cannot carry a token: a chat stream's role-only opener, and a finish-only closer with
    # no text field at all (SGLang's chat streams end so). An empty text field can carry one (vLLM
    # streams a token whose text is still an incomplete UTF-8 sequence as "").
    empty: set[int] = set()
    final_completion: int | None = None
    prompt_tokens: int | None = None
    saw_done = False
    for ev in parse_reads(raw.reads):
        if ev.data == DONE:
            saw_done = True
            continue
        try:
            obj = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            if ok:  # a failed capture's last event may be torn by the failure: it just ends there
                ok, error_kind, error_message = False, "error", f"unparseable SSE data: {ev.data[:200]!r}"
            break
        if not isinstance(obj, dict):
            continue
        if "error" in obj:  # engines report mid-stream failures as an error event: the engine's
            # own word on the failure, so it classifies it whatever the transport did afterwards
            err = obj["error"]
            msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            after = f" (then {raw.error_message})" if not ok and raw.error_message else ""
            ok, error_kind, error_message = False, "error", f"stream error: {msg}{after}"
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
            choice = choices[0] if isinstance(choices[0], dict) else {}
            text = _choice_text(choice, raw.api)
            if not text and _carries_no_token(choice, raw.api):
                empty.add(len(rows))
            rows.append((ev.t_ns, text, None if cum is None else int(cum)))
    if ok and not saw_done and not rows:
        ok, error_kind, error_message = False, "error", "stream ended without any data"

    chunks: list[Chunk]
    source: TokenSource
    estimated = 0  # tokens whose chunk is an estimate (the rest are placed exactly)
    text = "".join(r[1] for r in rows)
    capable = [i for i in range(len(rows)) if i not in empty]
    if capable and all(rows[i][2] is not None for i in capable):
        # (SGLang puts no usage on its chat opener and closer: they carry no token anyway)
        source, prev, chunks = "usage_delta", 0, []
        for t, tx, cum in rows:
            chunks.append(Chunk(t, 0 if cum is None else max(0, cum - prev), len(tx)))
            prev = prev if cum is None else max(prev, cum)
    elif rows and final_completion is not None and (one := _one_per_chunk(rows, capable, final_completion)):
        source = "final_usage_chunks"
        chunks = [Chunk(t, 1 if i in one else 0, len(tx)) for i, (t, tx, _) in enumerate(rows)]
    elif (
        rows
        and final_completion is not None
        and (pinned := _at_least_one(rows, capable, final_completion, count_tokens))
    ):
        # Several tokens in some chunks (vLLM merges a request's pending tokens into one chunk when
        # its API server falls behind, SGLang holds an incomplete UTF-8 byte back): every chunk that
        # can carry a token carried at least one, so only the surplus is placed by estimate.
        source, chunks = "final_usage", [Chunk(t, pinned[i], len(tx)) for i, (t, tx, _) in enumerate(rows)]
        estimated = final_completion - sum(1 for v in pinned if v)
    elif rows:
        text_idx = [i for i, r in enumerate(rows) if r[1]]
        if final_completion is not None:
            source, total = "final_usage", final_completion
        elif count_tokens is not None:
            source, total = "retokenized", count_tokens(text)
        else:  # one token per chunk that can carry one (a stream that failed before its usage, too)
            source, total = "chunk_count", len(capable)
            text_idx = capable
        if total == len(text_idx):  # the common case: one token per text chunk, exactly
            weights = [1] * len(text_idx)
        elif count_tokens is not None:
            weights = [count_tokens(rows[i][1]) for i in text_idx]
        else:  # no tokenizer: split by text length, and the source says how the count was made
            weights = [len(rows[i][1]) for i in text_idx]
        spread = dict(zip(text_idx, _spread(total, weights), strict=True))
        chunks = [Chunk(t, spread.get(i, 0), len(tx)) for i, (t, tx, _) in enumerate(rows)]
        estimated = total  # no chunk is sure to carry a token: every placement is an estimate
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
        estimated_tokens=estimated,
    )


# ---------------------------------------------------------------- streaming raw captures to disk

PARTIAL_NAME = "records.partial.jsonl"
PARTIAL_DATA_NAME = "records.partial.bin"
PARTIAL_SCHEMA = "perftune.bench.partial/v1"
FLUSH_EVERY = 256  # records
FLUSH_S = 1.0  # seconds


def partial_data_path(path: str | Path) -> Path:
    """The response-bytes side file of a partial records file."""
    return Path(path).with_name(PARTIAL_DATA_NAME)


def raw_meta(cap: RawCapture, data_at: int, data_len: int) -> bytes:
    """A finished capture's JSONL line: everything but the response bytes, which sit in the side file
    at [data_at, data_at + data_len). Bytes kept raw: JSON-escaping SSE text would cost the hot path
    ~10x more than the copy."""
    reads = cap.reads
    return (
        orjson.dumps(
            {
                "idx": cap.idx,
                "trial": cap.trial,
                "api": cap.api,
                "t_sched_ns": cap.t_sched_ns,
                "t_send_ns": cap.t_send_ns,
                "t_headers_ns": cap.t_headers_ns,
                "t_end_ns": cap.t_end_ns,
                "status": cap.status,
                "error_kind": cap.error_kind,
                "error_message": cap.error_message,
                "expected_input_tokens": cap.expected_input_tokens,
                "expected_output_tokens": cap.expected_output_tokens,
                "read_t_ns": [r[0] for r in reads],
                "read_len": [len(r[1]) for r in reads],
                "data_at": data_at,
                "data_len": data_len,
            }
        )
        + b"\n"
    )


def raw_from_meta(d: dict[str, Any], data: bytes) -> RawCapture:
    """Rebuild a capture from its JSONL line and the side file's bytes."""
    d = dict(d)
    at = int(d.pop("data_at"))
    blob = data[at : at + int(d.pop("data_len"))]
    reads, k = [], 0
    for t, n in zip(d.pop("read_t_ns"), d.pop("read_len"), strict=True):
        reads.append((int(t), blob[k : k + int(n)]))
        k += int(n)
    return RawCapture(**d, reads=reads)


class PartialSink:
    """Streams each finished request's raw capture to disk while the trials run, so a killed bench keeps
    what it measured: one JSON line per request in `records.partial.jsonl` (the first line a header
    saying the file is incomplete) and its response bytes, raw, in `records.partial.bin`.

    Hot-path cost per request: one small orjson.dumps and two writes into 1 MiB user-space buffers;
    the buffers reach the files every FLUSH_EVERY records or FLUSH_S seconds, whichever comes first (a
    SIGKILL loses at most that), bytes before lines, so a flushed line's bytes are on disk. A failing
    disk never stops the measurement: the sink switches itself off and says why in `error`.
    """

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.count = 0
        self.error: str | None = None
        self._pending = 0
        self._at = 0
        self._t_flush = time.monotonic()
        self._data: IO[bytes] | None = open(partial_data_path(path), "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._fh: IO[bytes] | None = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        head = {"schema": PARTIAL_SCHEMA, "incomplete": True, "data_file": PARTIAL_DATA_NAME, **header}
        self._guard(lambda fh, _d: fh.write(orjson.dumps(head) + b"\n"))
        self.flush()

    def _guard(self, op: Callable[[IO[bytes], IO[bytes]], object]) -> None:
        if self._fh is None or self._data is None:
            return
        try:
            op(self._fh, self._data)
        except (OSError, ValueError) as e:  # disk full, file gone: keep measuring, say so later
            self.error = f"{type(e).__name__}: {e}"
            files, self._fh, self._data = (self._fh, self._data), None, None
            for f in files:
                with contextlib.suppress(OSError, ValueError):
                    f.close()

    def add(self, cap: RawCapture) -> None:
        if self._fh is None:
            return
        blob = b"".join([r[1] for r in cap.reads])
        at = self._at

        def write(fh: IO[bytes], data: IO[bytes]) -> None:
            data.write(blob)
            fh.write(raw_meta(cap, at, len(blob)))

        self._guard(write)
        if self._fh is None:
            return
        self._at += len(blob)
        self.count += 1
        self._pending += 1
        if self._pending >= FLUSH_EVERY or time.monotonic() - self._t_flush >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        def both(fh: IO[bytes], data: IO[bytes]) -> None:
            data.flush()  # bytes first: a line on disk always finds its bytes on disk
            fh.flush()

        self._guard(both)
        self._pending = 0
        self._t_flush = time.monotonic()

    def close(self) -> None:
        self.flush()

        def close(fh: IO[bytes], data: IO[bytes]) -> None:
            data.close()
            fh.close()

        self._guard(close)
        self._fh = self._data = None


def read_partial(path: str | Path) -> tuple[dict[str, Any], list[RawCapture]]:
    """A partial records file: its header and every complete capture (a torn last line, or a line
    whose bytes never reached the side file, from a killed writer is skipped). decode() each capture
    to get RequestRecords."""
    header: dict[str, Any] = {}
    caps: list[RawCapture] = []
    try:
        data = partial_data_path(path).read_bytes()
    except FileNotFoundError:
        data = b""
    for line in Path(path).read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        if obj.get("schema") == PARTIAL_SCHEMA:
            header = obj
            continue
        try:
            if int(obj["data_at"]) + int(obj["data_len"]) > len(data):
                continue
            caps.append(raw_from_meta(obj, data))
        except (KeyError, TypeError, ValueError):
            continue
    return header, caps
