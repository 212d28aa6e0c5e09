"""Reading a bundle: the intent in both forms, bad documents, run resolution, records."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from perftune.bench.records import Chunk, RequestRecord
from perftune.campaign.state import FLAT, Intent
from perftune.errors import ConfigError
from perftune.report.bundle import NESTED, load_bundle, load_records, parse_campaign, resolve_run_dir

from . import _data


def test_nested_names_are_the_campaigns_flat_names() -> None:
    # the report cannot import the campaign: its own map must agree with campaign.state.FLAT
    for part, fields in NESTED.items():
        for nested, flat in fields.items():
            assert FLAT[flat] == (part, nested), flat


def test_nested_and_flat_intents_read_alike() -> None:
    intent = Intent.model_validate(
        {
            "model": "m",
            "model_path": "/x",
            "engines": ["sim"],
            "gpu": "h200",
            "slo_tpot_ms": 30,
            "ladder": [4],
        }
    )
    nested = parse_campaign({**_data.doc(), "intent": intent.model_dump(mode="json")}, "x").intent
    flat = parse_campaign({**_data.doc(), "intent": {k: v for k, v in _flat(intent).items()}}, "x").intent
    assert nested == flat
    assert (nested.model, nested.model_path, nested.gpu, nested.slo_tpot_ms, nested.ladder) == (
        "m",
        "/x",
        "h200",
        30.0,
        [4],
    )


def _flat(intent: Intent) -> dict[str, object]:
    d = intent.model_dump(mode="json")
    return {flat: d[part][field] for flat, (part, field) in FLAT.items()}


def test_a_bad_campaign_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match=r"not a perftune campaign \(intent"):
        parse_campaign({"run_id": "x", "intent": {"engines": []}}, "campaign.json")


def test_unknown_run_and_folder_without_campaign(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no campaign 'nope' in"):
        resolve_run_dir("nope", tmp_path)
    (tmp_path / "r").mkdir()
    with pytest.raises(ConfigError, match=r"holds no campaign\.json"):
        resolve_run_dir("r", tmp_path)
    (tmp_path / "r" / "campaign.json").write_text("{}")
    assert resolve_run_dir("r", tmp_path) == tmp_path / "r"
    assert resolve_run_dir(str(tmp_path / "r"), tmp_path / "elsewhere") == tmp_path / "r"


def _rec(trial: int, idx: int) -> RequestRecord:
    chunks = [Chunk(1_000_000 * (10 + k), 1, 3) for k in range(4)]
    return RequestRecord(
        idx=idx, trial=trial, api="completions", ok=True, error_kind=None, error_message="", status=200,
        t_sched_ns=0, t_send_ns=0, t_end_ns=14_000_000, input_tokens=8, output_tokens=4,
        token_source="usage_delta", expected_input_tokens=8, expected_output_tokens=4, chunks=chunks,
    )  # fmt: skip


def test_records_plain_and_gzip_drop_the_warmup(tmp_path: Path) -> None:
    lines = b"".join(json.dumps(r.to_json()).encode() + b"\n" for r in (_rec(-1, 0), _rec(0, 1), _rec(1, 2)))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "records.jsonl").write_bytes(lines)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "records.jsonl.gz").write_bytes(gzip.compress(lines))
    for d in ("a", "b"):
        recs = load_records(tmp_path / d)
        assert recs is not None and [r.trial for r in recs] == [0, 1]
        assert recs[0].ttft_ms == 10.0 and recs[0].tpot_ms == pytest.approx(4 / 3)
    assert load_records(tmp_path) is None
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "records.jsonl").write_text("{broken\n")
    with pytest.raises(ConfigError, match="unreadable records"):
        load_records(tmp_path / "c")


def test_a_bundle_missing_files_says_which(tmp_path: Path) -> None:
    doc = _data.doc([_data.cell("8")], status={"3": "green", "8": "green"})
    b = load_bundle(tmp_path, doc)
    assert any("summary.json (cell p8.vllm.baseline.random.c16" in m for m in b.missing)
    assert any(m.startswith("phase3/tune.json") for m in b.missing)
    assert b.extras["p8.vllm.baseline.random.c16"].ttft_p99_ms is None


def test_cell_extras_average_the_trials_p99(tmp_path: Path) -> None:
    c = _data.cell("8")
    f = tmp_path / c["path"] / "summary.json"
    f.parent.mkdir(parents=True)
    f.write_text(
        json.dumps(
            {"trials": [{"ttft_ms": {"p99": 400.0}, "tpot_ms": {"p99": 9}}, {"ttft_ms": {"p99": 500}}]}
        )
    )
    b = load_bundle(tmp_path, _data.doc([c]))
    ex = b.extras[c["cell_id"]]
    assert (ex.ttft_p99_ms, ex.tpot_p99_ms, ex.found) == (450.0, 9.0, True)
