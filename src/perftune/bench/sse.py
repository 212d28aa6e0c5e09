"""Pure Server-Sent-Events framing over timestamped network reads.

The client's hot path only stamps each network read with a monotonic ns clock and keeps the bytes;
this module turns those reads into events afterwards. An event is stamped with the arrival time of
the read that completed it (the moment the client could first have seen it), so parsing cost never
shifts a timestamp.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DONE = b"[DONE]"


@dataclass(frozen=True, slots=True)
class SseEvent:
    t_ns: int
    data: bytes  # the joined `data:` field; b"[DONE]" for the terminator


def _split_events(buf: bytes) -> tuple[list[bytes], bytes]:
    """Split complete events (blank-line terminated) off `buf`; return them and the remainder."""
    # Servers use "\n\n"; the spec also allows "\r\n\r\n". Normalise CR LF first, only when present.
    if b"\r" in buf:
        buf = buf.replace(b"\r\n", b"\n")
    parts = buf.split(b"\n\n")
    return parts[:-1], parts[-1]


def _event_data(raw: bytes) -> bytes | None:
    """The data field of one raw event, or None for comments/keep-alives and field-only events."""
    data_lines: list[bytes] = []
    for line in raw.split(b"\n"):
        if not line or line.startswith(b":"):  # comment / keep-alive (": ping")
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            data_lines.append(value[1:] if value.startswith(b" ") else value)
        # event:, id:, retry: fields carry nothing we time
    if not data_lines:
        return None
    return b"\n".join(data_lines)


def parse_reads(reads: Iterable[tuple[int, bytes]]) -> list[SseEvent]:
    """Frame timestamped reads into data events. Keep-alive and comment-only events are dropped."""
    events: list[SseEvent] = []
    buf = b""
    last_t = 0
    for t_ns, chunk in reads:
        last_t = t_ns
        buf += chunk
        if b"\n\n" not in buf and b"\r\n\r\n" not in buf:
            continue
        complete, buf = _split_events(buf)
        for raw in complete:
            data = _event_data(raw)
            if data is not None:
                events.append(SseEvent(t_ns, data))
    if buf.strip():  # a final event without its blank line (connection closed): still an event
        data = _event_data(buf.strip(b"\r\n"))
        if data is not None:
            events.append(SseEvent(last_t, data))
    return events
