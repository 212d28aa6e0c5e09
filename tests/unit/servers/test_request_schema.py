"""The OpenAI request schema shared by the mock and the simulator, and the mock's body framing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from perftune.mock.server import MAX_BODY_BYTES, RequestError, content_length, parse_request

VOCAB = 1000


def _refused(body: Any, chat: bool = False) -> RequestError:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(RequestError) as e:
        parse_request(raw, chat, VOCAB)
    return e.value


def test_a_bench_request_passes_with_its_extra_fields() -> None:
    body = {
        "model": "m",
        "prompt": [1, 2, 999],
        "max_tokens": 8,
        "min_tokens": 8,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "temperature": 0,
        "top_p": 1,
        "n": 1,
        "seed": 3,
        "logprobs": None,
    }
    raw, req = parse_request(orjson.dumps(body), False, VOCAB)
    assert raw == body and req.requested_tokens == 8 and req.stream
    assert req.stream_options is not None and req.stream_options.include_usage
    _, chat = parse_request(
        orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}), True, VOCAB
    )
    assert chat.requested_tokens is None  # the server's default applies


@pytest.mark.parametrize(
    ("body", "chat", "param"),
    [
        ({"model": "m", "prompt": "x", "max_tokens": "lots"}, False, "max_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": "5"}, False, "max_tokens"),  # strict: JSON types
        ({"model": "m", "prompt": "x", "max_tokens": 0}, False, "max_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": 2.5}, False, "max_tokens"),
        ({"model": "m", "messages": "nope"}, True, "messages"),
        ({"model": "m", "messages": []}, True, "messages"),
        ({"model": "m", "messages": [{"content": "no role"}]}, True, "messages"),
        ({"model": "m"}, True, "messages"),
        ({"model": "m", "prompt": "x", "temperature": -0.1}, False, "temperature"),
        ({"model": "m", "prompt": "x", "temperature": 2.1}, False, "temperature"),
        ({"model": "m", "prompt": "x", "top_p": 0}, False, "top_p"),
        ({"model": "m", "prompt": "x", "min_tokens": -1}, False, "min_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": 2, "min_tokens": 3}, False, "min_tokens"),
        ({"model": "m", "prompt": None}, False, "prompt"),
        ({"model": "m", "prompt": ""}, False, "prompt"),
        ({"model": "m", "prompt": []}, False, "prompt"),
        ({"model": "m", "prompt": [1, True]}, False, "prompt"),
        ({"model": "m", "prompt": [1, VOCAB]}, False, "prompt"),
        ({"model": "m", "prompt": [-1, 5]}, False, "prompt"),
        ({"model": "m"}, False, "prompt"),
        ({"prompt": "x"}, False, "model"),
        ({"model": 7, "prompt": "x"}, False, "model"),
        ({"model": "m", "prompt": "x", "stream": "yes"}, False, "stream"),
        ({"model": "m", "prompt": "x", "stream": 1}, False, "stream"),
        ({"model": "m", "prompt": "x", "stream_options": []}, False, "stream_options"),
        ({"model": "m", "prompt": "x", "ignore_eos": "true"}, False, "ignore_eos"),
        ({"model": "m", "prompt": "x", "n": 2}, False, "n"),
        ({"model": "m", "prompt": "x", "n": True}, False, "n"),
    ],
)
def test_malformed_fields_are_refused_with_their_name(body: dict[str, Any], chat: bool, param: str) -> None:
    e = _refused(body, chat)
    assert e.status == 400 and e.param == param
    err = e.body()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == 400
    assert err["message"].startswith(param)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[1, 2]", b'"x"', b"null", b"NaN", b'{"a": 1e400}'])
def test_bodies_that_are_not_json_objects_are_refused(raw: bytes) -> None:
    e = _refused(raw)
    assert e.status == 400 and e.param is None and "JSON" in e.message


def test_out_of_vocabulary_ids_name_the_id_and_the_vocabulary() -> None:
    assert (
        "token id 1000 is outside the vocabulary [0, 1000)"
        in _refused({"model": "m", "prompt": [5, 1000]}).message
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["Host: x"], 0),
        (["Content-Length: 12"], 12),
        (["content-length:  7 "], 7),
        (["Content-Length: 3", "Content-Length: 3"], 3),
        ([f"Content-Length: {MAX_BODY_BYTES}"], MAX_BODY_BYTES),
    ],
)
def test_content_length_is_read(headers: list[str], expected: int) -> None:
    assert content_length(headers) == expected


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (["Content-Length: abc"], 400),
        (["Content-Length: -1"], 400),
        (["Content-Length: 1e3"], 400),
        (["Content-Length: \u00b2"], 400),  # a digit to str.isdigit, not to HTTP
        (["Content-Length: 3", "Content-Length: 4"], 400),
        (["Content-Length: 99999999999999999999999"], 400),
        ([f"Content-Length: {MAX_BODY_BYTES + 1}"], 413),
        (["Content-Length: 999999999999"], 413),
        (["Transfer-Encoding: chunked"], 411),
    ],
)
def test_unframeable_bodies_are_refused(headers: list[str], status: int) -> None:
    with pytest.raises(RequestError) as e:
        content_length(headers)
    assert e.value.status == status
    if status == 413:
        assert str(MAX_BODY_BYTES) in e.value.message and "8 MiB" in e.value.message
