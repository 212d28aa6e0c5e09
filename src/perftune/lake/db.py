"""The only module that talks to DuckDB: schema migrations, idempotent publish, queries, export.

Publishing a campaign replaces every row of that campaign in one transaction (delete, then insert
rows derived only from the bundle), so publishing twice leaves the lake byte-for-byte the same and a
crash mid-publish leaves the previous state. Every row carries its tier; DRAFT and partial campaigns
are published with their gaps.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from perftune.errors import LakeError

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE campaigns (
            campaign_id VARCHAR PRIMARY KEY, model VARCHAR, gpu VARCHAR, engines VARCHAR, focus VARCHAR,
            created_at VARCHAR, status VARCHAR, tier VARCHAR, gaps VARCHAR, intent_json VARCHAR,
            phases_json VARCHAR);
        CREATE TABLE cells (
            campaign_id VARCHAR, cell_id VARCHAR, phase VARCHAR, engine VARCHAR, config VARCHAR,
            workload VARCHAR, concurrency INTEGER, gpus INTEGER, output_tok_s DOUBLE,
            output_tok_s_std DOUBLE, output_tok_s_ci_lo DOUBLE, output_tok_s_ci_hi DOUBLE,
            tpot_median_ms DOUBLE, ttft_mean_ms DOUBLE, trials INTEGER, sol_pct DOUBLE,
            ceiling_key VARCHAR, tier VARCHAR, simulated BOOLEAN, prefix_cache BOOLEAN,
            levers_json VARCHAR, context_json VARCHAR, PRIMARY KEY (campaign_id, cell_id));
        CREATE TABLE trials (
            campaign_id VARCHAR, cell_id VARCHAR, trial INTEGER, span_s DOUBLE, ok INTEGER,
            errors INTEGER, output_tok_s DOUBLE, req_s DOUBLE, ttft_ms_mean DOUBLE, tpot_ms_mean DOUBLE,
            tpot_ms_p50 DOUBLE, itl_ms_p99 DOUBLE, prefix_cache_hit_rate DOUBLE,
            PRIMARY KEY (campaign_id, cell_id, trial));
        CREATE TABLE requests (
            campaign_id VARCHAR, cell_id VARCHAR, trial INTEGER, idx INTEGER, ok BOOLEAN,
            ttft_ms DOUBLE, tpot_ms DOUBLE, e2e_ms DOUBLE, input_tokens INTEGER, output_tokens INTEGER,
            token_source VARCHAR, PRIMARY KEY (campaign_id, cell_id, trial, idx));
        CREATE TABLE champions (
            campaign_id VARCHAR, model VARCHAR, rank INTEGER, recommended BOOLEAN, engine VARCHAR,
            config VARCHAR, gpus INTEGER, metric VARCHAR, value DOUBLE, ci_lo DOUBLE, ci_hi DOUBLE,
            concurrency INTEGER, cell_id VARCHAR, tier VARCHAR, eligible BOOLEAN, reason VARCHAR,
            failing_gates VARCHAR, PRIMARY KEY (campaign_id, rank));
        CREATE TABLE findings (
            campaign_id VARCHAR, model VARCHAR, next_lever VARCHAR, next_value VARCHAR,
            rationale VARCHAR, PRIMARY KEY (campaign_id, model));
        """,
    ),
]
TABLES = ("campaigns", "cells", "trials", "requests", "champions", "findings")


def default_lake() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "perftune" / "lake.duckdb"


@contextlib.contextmanager
def connect(path: str | Path, read_only: bool = False) -> Iterator[Any]:
    import duckdb

    p = Path(path)
    if read_only and not p.exists():
        raise LakeError(f"no lake at {p}", hint="run a campaign first, or pass --lake PATH")
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(p), read_only=read_only)
    except duckdb.Error as e:
        raise LakeError(f"cannot open the lake {p}: {e}", hint="is another process writing it?") from e
    try:
        if not read_only:
            migrate(con)
        yield con
    finally:
        con.close()


def migrate(con: Any) -> int:
    """Apply pending migrations in order; returns the schema version."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
    done = {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
    for version, sql in MIGRATIONS:
        if version in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations VALUES (?)", [version])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
    return max(v for v, _ in MIGRATIONS)


def publish_rows(path: str | Path, campaign_id: str, rows: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Replace one campaign's rows in every table, atomically. Returns rows written per table."""
    import duckdb

    unknown = set(rows) - set(TABLES)
    if unknown:
        raise LakeError(f"unknown lake tables: {sorted(unknown)}", hint="a perftune bug: report it")
    with connect(path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            for table in TABLES:
                con.execute(f"DELETE FROM {table} WHERE campaign_id = ?", [campaign_id])
                batch = rows.get(table) or []
                if not batch:
                    continue
                cols = list(batch[0])
                marks = ", ".join("?" for _ in cols)
                con.executemany(
                    f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})",
                    [[r[c] for c in cols] for r in batch],
                )
            con.execute("COMMIT")
        except duckdb.Error as e:
            con.execute("ROLLBACK")
            raise LakeError(
                f"publish of {campaign_id} failed and was rolled back: {e}", hint="nothing changed"
            ) from e
    return {t: len(rows.get(t) or []) for t in TABLES}


def query(path: str | Path, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    import duckdb

    with connect(path, read_only=True) as con:
        try:
            cur = con.execute(sql, params or [])
        except duckdb.Error as e:
            raise LakeError(
                f"query failed: {str(e).splitlines()[0]}", hint="tables: " + ", ".join(TABLES)
            ) from e
        if cur.description is None:
            return []
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def export_parquet(path: str | Path, out_dir: str | Path) -> list[str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with connect(path, read_only=True) as con:
        for table in TABLES:
            f = out / f"{table}.parquet"
            tmp = out / f".{table}.parquet.tmp"
            con.execute(f"COPY (SELECT * FROM {table} ORDER BY ALL) TO '{tmp}' (FORMAT parquet)")
            tmp.replace(f)
            written.append(str(f))
    return written


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
