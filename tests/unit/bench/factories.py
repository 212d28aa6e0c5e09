"""One way to build a decoded request record in tests: a successful, empty record, overridden by field."""

from typing import Any

from perftune.bench.records import RequestRecord


def record(**fields: Any) -> RequestRecord:
    base: dict[str, Any] = {
        "idx": 0,
        "trial": 0,
        "api": "completions",
        "ok": True,
        "error_kind": None,
        "error_message": "",
        "status": 200,
        "t_sched_ns": 0,
        "t_send_ns": 0,
        "t_end_ns": 0,
        "input_tokens": None,
        "output_tokens": 0,
        "token_source": "usage_delta",
        "expected_input_tokens": None,
        "expected_output_tokens": None,
        "chunks": [],
    }
    return RequestRecord(**(base | fields))
