"""Request fuzzing of perftune's own servers: a malformed request gets a 4xx, at once, never a 5xx.

Requests are built from the OpenAI request schema (hypothesis): valid bodies, bodies with one field
wrong (a bad value, a wrong type, or missing), wild mixes of both, JSON that is not an object, junk
bytes, and bad framing (Content-Length). Each goes on its own connection with a 5 s timeout to the
mock server and to the simulator, both child processes on loopback. A 5xx is a server error; no
complete response within the timeout is a hang; the server must still answer /health afterwards.
Valid requests ask for at most 4 tokens (or the default), so a fuzz run is not a load test.

    python benchmarks/fuzz_servers.py [--requests 2000] [--seed 0]

One line per server: `fuzz: N requests, E server errors, H hangs (mock)`. The e2e test
tests/e2e/test_server_faults.py runs the same cases, fewer of them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st

from perftune.mock.process import mock_process, ready_json_process

TIMEOUT_S = 5.0
MAX_MODEL_LEN = 131072  # llama-3.1-8b's context, and the mock's default max_model_len


# ------------------------------------------------------------------------------------ raw HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    length: str | None = None,
) -> bytes:
    """One HTTP/1.1 request as bytes; `length` overrides the Content-Length header ("" leaves it out)."""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is None:
        length = str(len(body))
    if length:
        head.append(f"Content-Length: {length}")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def exchange(url: str, raw: bytes, timeout_s: float = TIMEOUT_S) -> Response:
    """Send raw bytes on a new connection and read one complete response (TimeoutError: a hang)."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=timeout_s) as s:
        return exchange_on(s, raw, timeout_s)


def exchange_on(s: socket.socket, raw: bytes, timeout_s: float = TIMEOUT_S) -> Response:
    deadline = time.monotonic() + timeout_s
    # The server may answer (413) and stop reading before the body is sent; its answer still counts.
    with contextlib.suppress(OSError):
        s.sendall(raw)
    buf = b""

    def more() -> None:
        nonlocal buf
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete response")
        s.settimeout(left)
        data = s.recv(1 << 16)
        if not data:
            raise ConnectionError(f"connection closed after {len(buf)} bytes of response")
        buf += data

    while b"\r\n\r\n" not in buf:
        more()
    head, _, _ = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    start = len(head) + 4
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < start + n:
            more()
        return Response(status, headers, buf[start : start + n])
    if headers.get("transfer-encoding") == "chunked":
        while not buf.endswith(b"0\r\n\r\n") or len(buf) - start < 5:
            more()
        return Response(status, headers, buf[start:])
    raise ValueError(f"response without framing: {head!r}")


# ------------------------------------------------------------------------------------ request cases

_WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _wrong(*, ints: bool = True) -> st.SearchStrategy[Any]:
    """Values of the wrong type (plus null). Integers only where no integer is a slow valid request."""
    return st.one_of(_WRONG, st.integers()) if ints else _WRONG


_TOKENS_BAD = st.sampled_from([0, -1, -(2**31), MAX_MODEL_LEN + 1, 10**12, 2**64 - 1, 10**30])
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)}
)
# field: (valid values, invalid values: bad values and wrong types)
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "max_tokens": (st.integers(1, 4), st.one_of(_TOKENS_BAD, _wrong(ints=False))),
    "max_completion_tokens": (st.integers(1, 4), st.one_of(_TOKENS_BAD, _wrong(ints=False))),
    "min_tokens": (st.integers(0, 1), st.one_of(st.sampled_from([-1, 5, 10**9]), _wrong(ints=False))),
    "temperature": (
        st.floats(0, 2),
        st.one_of(st.sampled_from([-0.5, -1, 2.5, 1e308]), _wrong(ints=False)),
    ),
    "top_p": (
        st.floats(0, 1, exclude_min=True),
        st.one_of(st.sampled_from([0, -1, 1.5]), _wrong(ints=False)),
    ),
    "stream": (st.booleans(), _wrong()),
    "stream_options": (
        st.fixed_dictionaries(
            {}, optional={"include_usage": st.booleans(), "continuous_usage_stats": st.booleans()}
        ),
        st.one_of(st.fixed_dictionaries({"include_usage": st.text(max_size=3)}), _wrong()),
    ),
    "ignore_eos": (st.booleans(), _wrong()),
    "n": (st.just(1), st.one_of(st.sampled_from([0, 2, -1, 100]), _wrong(ints=False))),
    "prompt": (
        st.one_of(
            st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
            st.lists(st.integers(1000, 32000), min_size=1, max_size=16),
            st.lists(st.text("abc xyz", min_size=1, max_size=10), min_size=1, max_size=3),
        ),
        st.one_of(
            st.sampled_from(["", [], [-1], [2**40], [True], [None], [[1, 2]], [1, "a"], {"text": "x"}]),
            _wrong(),
        ),
    ),
    "messages": (
        st.lists(_MESSAGE, min_size=1, max_size=3),
        st.one_of(
            st.sampled_from(["nope", [], [{"content": "x"}], [{"role": 1, "content": "x"}], [1], [[]]]),
            st.lists(st.fixed_dictionaries({"role": _wrong(), "content": _wrong()}), min_size=1, max_size=2),
            _wrong(),
        ),
    ),
}
_EXTRA = st.dictionaries(
    st.sampled_from(["user", "seed", "logprobs", "stop", "best_of", "x-junk", "tools"]), _WRONG, max_size=3
)


@dataclass
class Case:
    kind: str
    path: str
    raw: bytes

    def __repr__(self) -> str:
        return f"Case({self.kind}, {self.path}, {self.raw[:300]!r}{'...' if len(self.raw) > 300 else ''})"


@st.composite
def cases(draw: st.DrawFn, model: str) -> Case:
    chat = draw(st.booleans())
    path = "/v1/chat/completions" if chat else "/v1/completions"
    required = {
        "model": st.just(model),
        ("messages" if chat else "prompt"): FIELDS["messages" if chat else "prompt"][0],
    }
    optional = {k: v for k, (v, _) in FIELDS.items() if k not in ("prompt", "messages")}
    kind = draw(st.sampled_from(["valid", "one_bad", "one_missing", "wild", "not_object", "junk", "framing"]))
    body: Any = draw(st.fixed_dictionaries(required, optional=optional))
    body.pop("min_tokens", None)  # valid only up to max_tokens: re-added below within it
    if draw(st.booleans()):
        body["min_tokens"] = min(draw(st.integers(0, 4)), body.get("max_tokens") or 1)
    if "max_tokens" not in body and "max_completion_tokens" not in body and draw(st.integers(0, 7)):
        body["max_tokens"] = draw(st.integers(1, 4))  # the default (up to 256 tokens) 1 time in 8
    if kind == "one_bad":
        key = draw(st.sampled_from(sorted(FIELDS)))
        body[key] = draw(FIELDS[key][1])
        if key in ("prompt", "messages"):
            body.pop("messages" if key == "prompt" else "prompt", None)
    elif kind == "one_missing":
        body.pop(draw(st.sampled_from(sorted(required))))
    elif kind == "wild":
        wild = {k: st.one_of(v, bad) for k, (v, bad) in FIELDS.items()}
        wild["model"] = st.one_of(st.just(model), st.text(max_size=8), _wrong())
        body = draw(st.fixed_dictionaries({}, optional=wild))
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = draw(st.one_of(st.integers(1, 4), _TOKENS_BAD))
        body |= draw(_EXTRA)
    elif kind == "not_object":
        body = draw(
            st.one_of(st.lists(st.integers(), max_size=3), st.text(max_size=8), st.integers(), st.none())
        )
    raw = json.dumps(body).encode()
    if kind == "junk":
        raw = draw(st.one_of(st.binary(max_size=200), st.just(raw[: draw(st.integers(0, len(raw) - 1))])))
    length = None
    if kind == "framing":
        length = draw(
            st.sampled_from(["abc", "-1", "1e3", " 12 x", "0x10", "999999999999", "99999999999999999999"])
        )
    return Case(kind, path, http_request("POST", path, raw, length=length))


# ------------------------------------------------------------------------------------ servers


@contextlib.contextmanager
def mock_server() -> Iterator[tuple[str, str]]:
    with mock_process(ttft_ms=1.0, itl_ms=1.0, model="mock") as url:
        yield url, "mock"


@contextlib.contextmanager
def sim_server() -> Iterator[tuple[str, str]]:
    cmd = [sys.executable, "-m", "perftune", "sim-server", "--model", "llama-3.1-8b", "--gpu", "h100"]
    cmd += ["--port", "0", "--ready-json", "--served-model-name", "sim"]
    with ready_json_process(cmd, "simulator", startup_timeout_s=60) as url:
        yield url, "sim"


def fuzz(url: str, model: str, n: int, seed: int) -> Counter[str]:
    """Post n fuzzed requests; count 'requests', 'server_errors', 'hangs', 'no_response', by status."""
    out: Counter[str] = Counter()

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hseed(seed)
    @given(case=cases(model))
    def run(case: Case) -> None:
        out["requests"] += 1
        try:
            r = exchange(url, case.raw)
        except TimeoutError:
            out["hangs"] += 1
            print(f"  hang: {case!r}", file=sys.stderr)
            return
        except OSError as e:
            out["no_response"] += 1
            print(f"  no response ({e}): {case!r}", file=sys.stderr)
            return
        out[f"status_{r.status}"] += 1
        if r.status >= 500:
            out["server_errors"] += 1
            print(f"  {r.status}: {case!r} -> {r.body[:300]!r}", file=sys.stderr)

    run()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=2000, help="requests per server")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bad = 0
    for start in (mock_server, sim_server):
        with start() as (url, model):
            t0 = time.monotonic()
            c = fuzz(url, model, args.requests, args.seed)
            alive = exchange(url, http_request("GET", "/health")).status == 200
        statuses = ", ".join(f"{k[7:]}: {v}" for k, v in sorted(c.items()) if k.startswith("status_"))
        print(
            f"fuzz: {c['requests']} requests, {c['server_errors']} server errors, {c['hangs']} hangs "
            f"({model}; {c['no_response']} without response; alive afterwards: {alive}; "
            f"{time.monotonic() - t0:.0f} s; statuses {statuses})",
            flush=True,
        )
        bad += c["server_errors"] + c["hangs"] + c["no_response"] + (not alive)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
