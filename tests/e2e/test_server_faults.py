"""Malformed requests to the mock server and the simulator get a 4xx at once, never silence or a 5xx.

Both servers run as child processes on loopback; requests are raw bytes on a socket, so framing
errors (a bad Content-Length) can be sent as they are. Every read has a 5 s timeout: a server that
does not answer fails the test as a hang, it does not make it slow.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from benchmarks.fuzz_servers import (
    Case,
    Response,
    cases,
    exchange,
    exchange_on,
    http_request,
    mock_server,
    sim_server,
)
from hypothesis import HealthCheck, Phase, given, settings
from prometheus_client.parser import text_string_to_metric_families

from perftune.mock.server import MAX_BODY_BYTES

pytestmark = pytest.mark.e2e

SERVERS = ["mock", "sim"]


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[str, str]]:
    with mock_server() as s:
        yield s


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[str, str]]:
    with sim_server() as s:
        yield s


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> tuple[str, str]:
    s: tuple[str, str] = request.getfixturevalue(request.param)
    return s


def _post(url: str, path: str, body: Any, **kw: Any) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return exchange(url, http_request("POST", path, raw, **kw))


def _openai_error(r: Response, status: int, param: str | None = None) -> str:
    assert r.status == status, (r.status, r.body[:300])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == status and err["param"] == param
    assert isinstance(err["message"], str) and err["message"]
    return str(err["message"])


# The cases of the report: each got no response from the mock (a traceback in its log), a 500 from
# the simulator, or a 200 for a request that is not valid.
BAD_FIELDS = [
    ("/v1/completions", {"max_tokens": "lots"}, "max_tokens"),
    ("/v1/chat/completions", {"messages": "nope"}, "messages"),
    ("/v1/completions", {"temperature": -1.0}, "temperature"),
    ("/v1/completions", {"min_tokens": -1}, "min_tokens"),
    ("/v1/completions", {"max_tokens": 2, "min_tokens": 3}, "min_tokens"),
    ("/v1/completions", {"prompt": None}, "prompt"),
    ("/v1/completions", {"prompt": [1000, 2**20]}, "prompt"),  # out of every vocabulary
    ("/v1/completions", {"top_p": 0}, "top_p"),
    ("/v1/completions", {"n": 2}, "n"),
    ("/v1/completions", {"stream": "yes"}, "stream"),
    ("/v1/completions", {"model": ["x"]}, "model"),
]


@pytest.mark.parametrize(("path", "fields", "param"), BAD_FIELDS, ids=[f[2] for f in BAD_FIELDS])
def test_malformed_fields_get_400_naming_the_field(
    server: tuple[str, str], path: str, fields: dict[str, Any], param: str
) -> None:
    url, model = server
    base: dict[str, Any] = {"model": model, "max_tokens": 2}
    base |= {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"}
    msg = _openai_error(_post(url, path, base | fields), 400, param)
    assert msg.startswith(param)


def test_sim_checks_token_ids_against_the_models_vocabulary(sim: tuple[str, str]) -> None:
    url, model = sim
    body = {"model": model, "prompt": [1000, 128256], "max_tokens": 2}  # llama-3.1-8b: 128,256 entries
    assert "[0, 128256)" in _openai_error(_post(url, "/v1/completions", body), 400, "prompt")
    ok = _post(url, "/v1/completions", body | {"prompt": [1000, 128255]})
    assert ok.status == 200 and ok.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1, 2]", b"\xff\xfe\x00"])
def test_bodies_that_are_not_json_objects_get_400(server: tuple[str, str], body: bytes) -> None:
    assert "JSON" in _openai_error(_post(server[0], "/v1/completions", body), 400)


@pytest.mark.parametrize("length", ["abc", "-5", "12abc"])
def test_bad_content_length_gets_400(server: tuple[str, str], length: str) -> None:
    url, model = server
    body = json.dumps({"model": model, "prompt": "hi", "max_tokens": 2}).encode()
    r = _post(url, "/v1/completions", body, length=length)
    assert r.status == 400
    if server[1] == "mock":  # aiohttp's parser answers framing errors itself, in plain text
        _openai_error(r, 400)


def test_stated_body_over_the_limit_gets_413_before_the_body_is_sent(server: tuple[str, str]) -> None:
    url, model = server
    body = json.dumps({"model": model, "prompt": "hi"}).encode()
    r = _post(url, "/v1/completions", body, length="999999999999")  # the body never comes
    assert str(MAX_BODY_BYTES) in _openai_error(r, 413)


def test_ten_megabyte_body_gets_413_not_one_token(server: tuple[str, str]) -> None:
    url, model = server
    body = json.dumps({"model": model, "prompt": "a" * (10 * 2**20), "max_tokens": 2}).encode()
    r = _post(url, "/v1/completions", body)
    assert "8 MiB" in _openai_error(r, 413)


def test_chunked_request_body_is_refused_by_the_mock(mock: tuple[str, str]) -> None:
    url, _ = mock
    raw = http_request("POST", "/v1/completions", b"5\r\nhello\r\n0\r\n\r\n", length="")
    raw = raw.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1)
    _openai_error(exchange(url, raw), 411)


def test_oversized_request_head_is_refused_by_the_mock(mock: tuple[str, str]) -> None:
    raw = b"GET /health HTTP/1.1\r\nX-Junk: " + b"a" * (100 * 2**10)
    assert exchange(mock[0], raw).status == 431


def test_mock_connection_stays_usable_after_a_400(mock: tuple[str, str]) -> None:
    url, model = mock
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        bad = exchange_on(s, http_request("POST", "/v1/completions", b'{"model": "mock", "max_tokens": "x"}'))
        assert bad.status == 400
        body = json.dumps({"model": model, "prompt": "a b", "max_tokens": 3}).encode()
        ok = exchange_on(s, http_request("POST", "/v1/completions", body))
        assert ok.status == 200 and ok.json()["usage"] == {
            "prompt_tokens": 2,
            "completion_tokens": 3,
            "total_tokens": 5,
        }


def test_unknown_route_gets_an_openai_error(server: tuple[str, str]) -> None:
    r = exchange(server[0], http_request("GET", "/v1/nope"))
    assert r.status == 404 and r.json()["error"]["code"] == 404


def test_a_valid_stream_still_works(server: tuple[str, str]) -> None:
    url, model = server
    body = {"model": model, "prompt": [1000, 1001], "max_tokens": 3, "min_tokens": 3, "stream": True}
    body |= {"ignore_eos": True, "stream_options": {"include_usage": True}, "temperature": 0, "top_p": 1}
    r = _post(url, "/v1/completions", body)
    assert (
        r.status == 200
        and b"data: [DONE]" in r.body
        and b'"completion_tokens":3' in r.body.replace(b" ", b"")
    )


# --------------------------------------------------------------------------- fuzzing


@pytest.mark.slow
def test_fuzzed_requests_get_no_5xx_and_no_hang(server: tuple[str, str]) -> None:
    url, model = server

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: each example costs a request
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=cases(model))
    def post(case: Case) -> None:
        try:
            r = exchange(url, case.raw)
        except TimeoutError:
            pytest.fail(f"no response within 5 s: {case!r}")
        assert r.status < 500, (case, r.body[:300])

    post()
    with urllib.request.urlopen(url + "/health", timeout=5) as h:
        assert h.status == 200


# --------------------------------------------------------------------------- schedule lag


def test_sim_stats_report_schedule_lag_and_faithfulness(sim: tuple[str, str]) -> None:
    url, model = sim
    assert exchange(url, http_request("POST", "/sim/stats/reset")).json() == {"reset": True}
    for i in range(4):
        body = {"model": model, "prompt": f"request {i}", "max_tokens": 5, "stream": i % 2 == 0}
        assert _post(url, "/v1/completions", body).status == 200
    stats = exchange(url, http_request("GET", "/sim/stats")).json()
    lag = stats["schedule_lag_ms"]
    assert set(lag) == {"p50", "p99", "max"} and all(isinstance(v, float) for v in lag.values())
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"]
    assert isinstance(stats["late_steps"], int) and isinstance(stats["faithful"], bool)
    assert stats["window_tokens"] == 4 * 3  # streamed: one lag per token; whole responses: one each
    assert stats["window_steps"] >= 5 and stats["window_s"] > 0
    metrics = exchange(url, http_request("GET", "/metrics")).body.decode()
    families = {m.name: m for m in text_string_to_metric_families(metrics)}
    summary = families["perftune_sim_schedule_lag_seconds"]
    assert summary.type == "summary"
    assert {s.labels.get("quantile") for s in summary.samples} >= {"0.5", "0.99", "1.0"}
    assert families["perftune_sim_faithful"].samples[0].value in (0.0, 1.0)
    assert "perftune_sim_late_steps" in families
    exchange(url, http_request("POST", "/sim/stats/reset"))
    after = exchange(url, http_request("GET", "/sim/stats")).json()
    assert after["window_tokens"] == after["window_steps"] == after["late_steps"] == 0


def test_a_prefix_cache_reset_starts_a_new_lag_window(sim: tuple[str, str]) -> None:
    url, model = sim
    assert _post(url, "/v1/completions", {"model": model, "prompt": "a b c", "max_tokens": 3}).status == 200
    assert exchange(url, http_request("GET", "/sim/stats")).json()["window_tokens"] > 0
    assert exchange(url, http_request("POST", "/reset_prefix_cache")).status == 200
    assert exchange(url, http_request("GET", "/sim/stats")).json()["window_tokens"] == 0
