"""Write a bench run's evidence: records (JSONL or Parquet), summary JSON, per-trial CSV, the workload.

Everything goes through temp-file + rename, so an interrupted run never leaves half a file. The out
folder is checked for writability before anything is measured, and a measurement is never lost to an
output error: if the folder fails after the run, the evidence goes to a fallback folder instead.
While a run measures, `records.partial.jsonl` (+ `.bin`) streams its raw captures (see
records.PartialSink); the final write removes them, so a folder that still holds one belongs to a run
that never finished.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Literal

import orjson

from perftune.bench.metrics import HEADLINE
from perftune.bench.records import PARTIAL_NAME, RequestRecord, partial_data_path, read_partial
from perftune.bench.runner import BenchRun
from perftune.bench.workloads import save_workload
from perftune.errors import BenchError, ConfigError
from perftune.util.atomic import atomic_path, write_bytes, write_text
from perftune.util.fs import writable_dir

RecordsFormat = Literal["jsonl", "parquet"]


def records_jsonl(records: list[RequestRecord]) -> bytes:
    return b"".join(orjson.dumps(r.to_json()) + b"\n" for r in records)


def _write_parquet(records: list[RequestRecord], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r.to_json() for r in records]
    for row in rows:  # nested chunk lists as three parallel columns
        chunks = row.pop("chunks")
        row["chunk_t_ns"] = [c[0] for c in chunks]
        row["chunk_tokens"] = [c[1] for c in chunks]
        row["chunk_text_len"] = [c[2] for c in chunks]
    table = pa.Table.from_pylist(rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def trials_csv(run: BenchRun) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = [
        "trial",
        "sent",
        "ok",
        "errors",
        "timeouts",
        "cancelled",
        "output_tokens",
        "span_s",
        "ttft_ms_mean",
        "ttft_ms_p99",
        "tpot_ms_mean",
        "tpot_ms_p50",
        "itl_ms_mean",
        "itl_ms_p99",
        "e2e_ms_mean",
        "output_tok_s",
        "total_tok_s",
        "req_s",
        "goodput_req_s",
        "lag_p99_ms",
        "achieved_rate",
        "valid",
    ]
    w.writerow(cols)
    for t in run.result.trials:
        w.writerow(
            [
                t.trial,
                t.counts.sent,
                t.counts.ok,
                t.counts.errors,
                t.counts.timeouts,
                t.counts.cancelled,
                t.counts.output_tokens,
                round(t.span_s, 6),
                t.ttft_ms.mean,
                t.ttft_ms.p99,
                t.tpot_ms.mean,
                t.tpot_ms.p50,
                t.itl_ms.mean,
                t.itl_ms.p99,
                t.e2e_ms.mean,
                t.output_tok_s,
                t.total_tok_s,
                t.req_s,
                t.goodput_req_s,
                t.load.lag_p99_ms,
                t.load.achieved_rate,
                t.load.valid,
            ]
        )
    return buf.getvalue()


def incomplete_run(out_dir: str | Path) -> str | None:
    """A one-line account of a killed run's partial records in `out_dir`, or None when there are none."""
    path = Path(out_dir) / PARTIAL_NAME
    if not path.is_file():
        return None
    try:
        header, caps = read_partial(path)
    except OSError as e:
        return f"{path} exists but cannot be read ({e.strerror})"
    per: dict[int, int] = {}
    for c in caps:
        per[c.trial] = per.get(c.trial, 0) + 1
    n = header.get("num_requests")
    parts = [f"trial {t}: {k}" + (f"/{n} requests" if n else " requests") for t, k in sorted(per.items())]
    last = max(per) if per else 0
    if n is None or per.get(last, 0) < n:
        parts.append(f"trial {last} incomplete")
    return (
        f"{path} holds {len(caps)} finished requests of a bench that never completed "
        f"({'; '.join(parts)}; no summary.json)"
    )


def check_out_dir(out_dir: str | Path, *, refuse_incomplete: bool = True) -> Path:
    """Before measuring: the out folder exists (created), takes a file, and (unless told otherwise)
    holds no unfinished run's partial records."""
    out = writable_dir(
        out_dir, what="the out folder", hint="pick a folder you can write, e.g. --out ./runs/my-bench"
    )
    partial = incomplete_run(out) if refuse_incomplete else None
    if partial is not None:
        raise ConfigError(
            partial,
            hint="that run was killed mid-measurement and its records are kept there (one raw capture "
            "per line); bench into another --out, or move that folder away first",
        )
    return out


def fallback_dir() -> Path:
    """Where evidence goes when the out folder fails after measuring: the temp dir, else the cwd."""
    name = f"perftune-bench-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for root in (Path(tempfile.gettempdir()), Path.cwd()):
        try:
            d = root / name
            d.mkdir(parents=True, exist_ok=True)
            return d
        except OSError:
            continue
    raise BenchError(
        "cannot write the bench evidence anywhere (out folder, temp dir and cwd all failed)",
        hint="free some disk space; the measurement is lost",
    )


def write_run_safely(
    run: BenchRun, out_dir: str | Path, records_format: RecordsFormat = "jsonl"
) -> dict[str, str]:
    """write_run, but a failing out folder never loses the measurement: on an OSError the evidence goes
    to a fallback folder and paths["fallback"] says why and where. The partial records file is removed
    once the full records are written."""
    out = Path(out_dir)
    try:
        paths = write_run(run, out, records_format)
    except OSError as e:
        alt = fallback_dir()
        paths = write_run(run, alt, records_format)
        paths["fallback"] = (
            f"could not write to {out} ({type(e).__name__}: {e.strerror or e}); "
            f"the evidence is in {alt} instead"
        )
        return paths
    with contextlib.suppress(OSError):
        (out / PARTIAL_NAME).unlink(missing_ok=True)
        partial_data_path(out / PARTIAL_NAME).unlink(missing_ok=True)
    return paths


def write_run(run: BenchRun, out_dir: str | Path, records_format: RecordsFormat = "jsonl") -> dict[str, str]:
    """Write the run folder; returns the artifact paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "summary": out / "summary.json",
        "trials_csv": out / "trials.csv",
        "workload": out / "workload.json",
        "records": out / ("records.parquet" if records_format == "parquet" else "records.jsonl"),
    }
    save_workload(run.workload, paths["workload"])
    if records_format == "parquet":
        _write_parquet(run.records, paths["records"])
    else:
        write_bytes(paths["records"], records_jsonl(run.records))
    write_text(paths["trials_csv"], trials_csv(run))
    # The summary goes last: its presence means the folder is complete.
    write_bytes(
        paths["summary"], orjson.dumps(run.result.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
    )
    return {k: str(v) for k, v in paths.items()}


def fmt_num(x: float | None) -> str:
    """A table number: thousands separators and fixed decimals by magnitude (11,900.3 / 15.02 / 0.850)."""
    if x is None:
        return "-"
    a = abs(x)
    if a >= 100:
        return f"{x:,.1f}"
    if a >= 1:
        return f"{x:,.2f}"
    return f"{x:.3f}"


ROW_ORDER = ("ttft_ms", "tpot_ms", "tpot_median_ms", "itl_ms", "e2e_ms", "output_tok_s", "req_s")
assert set(HEADLINE) <= set(ROW_ORDER)


def headline_rows(run: BenchRun) -> list[tuple[str, str, str, str, str]]:
    """(metric, mean ± std, ci95, CV, per-trial values) rows for the console table; per-trial values
    of outlier trials carry a '*'."""
    rows = []
    outl = [t.outlier for t in run.result.trials]
    for name in ROW_ORDER:
        a = run.result.summary.get_metric(name)
        if a is None or a.mean is None:
            continue
        std = f" ± {fmt_num(a.std)}" if a.std is not None else ""
        ci = f"[{fmt_num(a.ci95[0])}, {fmt_num(a.ci95[1])}]" if a.ci95 else "-"
        cv = f"{a.cv:.1%}" if a.cv is not None else "-"
        trials = ", ".join(
            fmt_num(v) + ("*" if i < len(outl) and outl[i] else "") for i, v in enumerate(a.trials)
        )
        label = "tpot_ms (median)" if name == "tpot_median_ms" else name
        rows.append((label, f"{fmt_num(a.mean)}{std}", ci, cv, trials))
    return rows


def sol_line(run: BenchRun) -> str | None:
    """The decode %SoL line, labelled analytical, when the model card and GPU were given."""
    sol = run.result.summary.sol
    if sol is None:
        return None
    if sol.get("decode_sol_pct") is None:
        return f"decode %SoL: - ({sol.get('note', 'no median TPOT')})"
    return (
        f"decode %SoL: {sol['decode_sol_pct']:.1f}% (analytical: roofline floor "
        f"{fmt_num(sol['decode_step_floor_ms'])} ms/step, {sol['bound']}-bound, {sol['model_card']} on "
        f"{sol['tp']}x{sol['gpu']}, batch {sol['batch']}, context {sol['context']:,} / measured median "
        f"TPOT {fmt_num(sol['tpot_median_ms'])} ms)"
    )
