"""Write a bench run's evidence: records (JSONL or Parquet), summary JSON, per-trial CSV, the workload.

Everything goes through temp-file + rename, so an interrupted run never leaves half a file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Literal

import orjson

from perftune.bench.metrics import HEADLINE
from perftune.bench.records import RequestRecord
from perftune.bench.runner import BenchRun
from perftune.bench.workloads import save_workload
from perftune.util.atomic import atomic_path, write_bytes, write_text

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


def headline_rows(run: BenchRun) -> list[tuple[str, str, str, str, str]]:
    """(metric, mean ± std, ci95, per-trial values) rows for the console table."""
    rows = []
    for name in HEADLINE:
        a = run.result.summary[name]
        if isinstance(a, bool | list | dict) or a.mean is None:
            continue
        std = f" ± {a.std:.3g}" if a.std is not None else ""
        ci = f"[{a.ci95[0]:.4g}, {a.ci95[1]:.4g}]" if a.ci95 else "-"
        cv = f"{a.cv:.1%}" if a.cv is not None else "-"
        trials = ", ".join("-" if v is None else f"{v:.4g}" for v in a.trials)
        rows.append((name, f"{a.mean:.4g}{std}", ci, cv, trials))
    return rows
