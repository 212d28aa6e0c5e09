"""Evidence that survives: streamed partial records, the out-folder check, the fallback folder, bounds."""

import tempfile
from pathlib import Path

import orjson
import pytest

from perftune.bench import records as records_mod
from perftune.bench.load import assess_load
from perftune.bench.metrics import summarize_trial
from perftune.bench.output import (
    check_out_dir,
    fmt_num,
    headline_rows,
    incomplete_run,
    write_run_safely,
)
from perftune.bench.records import (
    PARTIAL_NAME,
    PartialSink,
    RawCapture,
    decode,
    partial_data_path,
    raw_from_meta,
    raw_meta,
    read_partial,
)
from perftune.bench.runner import BenchConfig, BenchRun, assemble, validate
from perftune.bench.workloads import WorkloadSpec, build_workload
from perftune.errors import ConfigError

MS = 1_000_000


def _sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _cap(idx: int, trial: int = 0, text: str = "héllo") -> RawCapture:
    c = RawCapture(idx=idx, trial=trial, api="completions", t_sched_ns=idx, t_send_ns=idx + 1, status=200)
    u = {"prompt_tokens": 8, "completion_tokens": 1}
    c.reads = [
        (idx + 100 * MS, _sse({"choices": [{"text": text}], "usage": u})),
        (idx + 120 * MS, _sse({"choices": [{"text": "!"}], "usage": {**u, "completion_tokens": 2}}) + b"da"),
        (idx + 121 * MS, b"ta: [DONE]\n\n"),  # a frame split across reads, as on the wire
    ]
    c.t_end_ns = c.reads[-1][0]
    c.expected_input_tokens = 8
    return c


def test_raw_capture_lines_round_trip_losslessly_and_decode_the_same() -> None:
    cap = _cap(3, text="naïve — ✓")
    blob = b"".join(r[1] for r in cap.reads)
    back = raw_from_meta(orjson.loads(raw_meta(cap, 5, len(blob))), b"xxxxx" + blob + b"yy")
    assert back == cap
    a, b = decode(cap), decode(back)
    assert a.to_json() == b.to_json() and a.ok and a.output_tokens == 2 and a.text == "naïve — ✓!"


def test_partial_sink_streams_buffered_lines_a_reader_can_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records_mod, "FLUSH_EVERY", 3)
    monkeypatch.setattr(records_mod, "FLUSH_S", 1e9)  # count-driven flushes only: deterministic
    path = tmp_path / PARTIAL_NAME
    sink = PartialSink(path, {"num_requests": 5, "trials": 1})
    assert len(path.read_bytes().splitlines()) == 1  # the header is on disk at once
    for i in range(2):
        sink.add(_cap(i))
    assert len(path.read_bytes().splitlines()) == 1  # buffered: no write per request
    sink.add(_cap(2))
    assert len(path.read_bytes().splitlines()) == 4  # the 3rd record flushed the buffer
    sink.add(_cap(3))
    # a writer killed mid-line leaves a torn tail: the reader keeps every complete line
    with path.open("ab") as fh:
        fh.write(b'{"idx": 9, "trial": 0, "ap')
    header, caps = read_partial(path)
    assert header["incomplete"] is True and header["num_requests"] == 5
    assert [c.idx for c in caps] == [0, 1, 2]
    assert [decode(c).to_json() for c in caps] == [decode(_cap(i)).to_json() for i in range(3)]
    sink.close()
    assert sink.count == 4 and sink.error is None
    # a line whose response bytes never reached the side file is skipped, not misread
    data = partial_data_path(path)
    data.write_bytes(data.read_bytes()[:-5])
    assert [c.idx for c in read_partial(path)[1]] == [0, 1, 2]


def test_a_failing_partial_file_never_stops_the_measurement(tmp_path: Path) -> None:
    sink = PartialSink(tmp_path / PARTIAL_NAME, {})
    assert sink._fh is not None
    sink._fh.close()  # the disk went away under it
    sink.add(_cap(0))
    sink.flush()
    sink.close()
    assert sink.error is not None and "closed file" in sink.error and sink.count == 0


def test_out_dir_check_refuses_unwritable_folders_before_measuring(tmp_path: Path) -> None:
    assert check_out_dir(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone
    with pytest.raises(ConfigError, match=r"cannot write to the out folder /proc/x") as e:
        check_out_dir("/proc/x")
    assert "--out" in e.value.hint
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot write to the out folder"):
        check_out_dir(tmp_path / "file" / "sub")


def test_a_folder_with_partial_records_says_which_trial_is_incomplete(tmp_path: Path) -> None:
    sink = PartialSink(tmp_path / PARTIAL_NAME, {"num_requests": 3, "trials": 2})
    for i in range(3):
        sink.add(_cap(i, trial=0))
    sink.add(_cap(0, trial=1))
    sink.close()
    msg = incomplete_run(tmp_path)
    assert msg is not None
    assert "holds 4 finished requests of a bench that never completed" in msg
    assert "trial 0: 3/3 requests; trial 1: 1/3 requests; trial 1 incomplete" in msg
    with pytest.raises(ConfigError, match="never completed") as e:
        check_out_dir(tmp_path)
    assert "killed" in e.value.hint
    assert check_out_dir(tmp_path, refuse_incomplete=False) == tmp_path  # a caller that owns the folder
    assert incomplete_run(tmp_path / "nothing-here") is None


def _run() -> BenchRun:
    cfg = BenchConfig(
        endpoint="http://127.0.0.1:1",
        model="m",
        concurrency=1,
        workload=WorkloadSpec(kind="random", isl=8, osl=2, num_requests=1),
    )
    assert cfg.workload is not None
    wl = build_workload(cfg.workload)
    rec = decode(_cap(0))
    load = assess_load([0], [1], concurrency=1, requested_rate=None)
    trials = [summarize_trial(i, [rec], load, {}) for i in range(3)]
    res = assemble(cfg, wl, {"owned_by": "vllm"}, 0, "2025-01-01T00:00:00+00:00", trials, 0)
    return BenchRun(res, wl, [rec])


def test_a_failing_out_folder_after_measuring_writes_to_a_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    out.write_text("the folder became a file after the check")
    paths = write_run_safely(_run(), out)
    assert "could not write to" in paths["fallback"] and str(tmp_path / "tmp") in paths["fallback"]
    summary = Path(paths["summary"])
    assert summary.is_file() and summary.parent.parent == tmp_path / "tmp"
    assert Path(paths["records"]).read_text().count("\n") == 1


def test_the_final_write_replaces_the_partial_records(tmp_path: Path) -> None:
    sink = PartialSink(tmp_path / PARTIAL_NAME, {})
    sink.add(_cap(0))
    sink.close()
    paths = write_run_safely(_run(), tmp_path)
    assert "fallback" not in paths and not (tmp_path / PARTIAL_NAME).exists()
    assert not partial_data_path(tmp_path / PARTIAL_NAME).exists()
    assert incomplete_run(tmp_path) is None


def test_num_requests_is_bounded_with_a_config_error() -> None:
    cfg = BenchConfig(
        endpoint="http://127.0.0.1:1",
        model="m",
        concurrency=1,
        workload=WorkloadSpec(kind="random", num_requests=10**12),
    )
    with pytest.raises(ConfigError, match=r"num_requests 1,000,000,000,000 is above the bound 1,000,000"):
        validate(cfg)
    with pytest.raises(ConfigError, match="above the bound"):
        build_workload(WorkloadSpec(kind="random", num_requests=1_000_001))


def test_table_numbers_have_separators_and_fixed_decimals() -> None:
    assert fmt_num(11900.27) == "11,900.3"
    assert fmt_num(1.19e4) == "11,900.0"
    assert fmt_num(15.0234) == "15.02"
    assert fmt_num(0.85) == "0.850"
    assert fmt_num(None) == "-"
    rows = headline_rows(_run())
    names = [r[0] for r in rows]
    assert names.index("tpot_ms (median)") == names.index("tpot_ms") + 1
    assert all("e+" not in cell for r in rows for cell in r)
