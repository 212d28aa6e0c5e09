"""The only module that talks to DuckDB: schema migrations, idempotent publish, queries, export.

Publishing a campaign replaces every row of that campaign in one transaction (delete, then insert
rows derived only from the bundle), so publishing twice leaves the lake byte-for-byte the same and a
crash mid-publish leaves the previous state. Every row carries its tier; DRAFT and partial campaigns
are published with their gaps.

DuckDB lets one process at a time open a database file for writing (an OS lock on the file; readers
are locked out too). A second publish, or a query during one, waits for the lock with backoff for
`lock_timeout_s` (default 120 s, $PERFTUNE_LAKE_LOCK_TIMEOUT_S), then fails naming the holder's PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from perftune.errors import ConfigError, LakeError
from perftune.util.fs import writable_dir

LOCK_TIMEOUT_ENV = "PERFTUNE_LAKE_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 120.0
# duckdb >= 0.9: 'IO Error: Could not set lock on file "<path>": Conflicting lock is held in <program>
# (PID <n>) by user <u>. See also https://duckdb.org/docs/connect/concurrency'
_LOCK_CONFLICT = re.compile(r"Could not set lock on file|Conflicting lock is held", re.IGNORECASE)
_HOLDER = re.compile(r"held in (?P<program>.+?) \(PID (?P<pid>\d+)\)(?: by user (?P<user>[^\s.]+))?")

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
    (
        2,
        """
        CREATE TABLE roofline (
            campaign_id VARCHAR, cell_id VARCHAR, phase VARCHAR, engine VARCHAR, config VARCHAR,
            concurrency INTEGER, tp INTEGER, context_tokens INTEGER, weight_dtype VARCHAR,
            kv_dtype VARCHAR, flops_per_step DOUBLE, bytes_per_step DOUBLE, intensity DOUBLE,
            tpot_ms DOUBLE, attained_tflops DOUBLE, attained_tb_s DOUBLE, hbm_pct DOUBLE,
            peak_tflops DOUBLE, hbm_tb_s DOUBLE, sol_rigor VARCHAR, simulated BOOLEAN, tier VARCHAR,
            PRIMARY KEY (campaign_id, cell_id));
        """,
    ),
    (
        3,
        """
        ALTER TABLE cells ADD COLUMN sol_rigor VARCHAR;
        ALTER TABLE cells ADD COLUMN dram_bw_util_pct DOUBLE;
        ALTER TABLE cells ADD COLUMN dram_tb_s DOUBLE;
        ALTER TABLE cells ADD COLUMN sol_bytes_pct DOUBLE;
        ALTER TABLE roofline ADD COLUMN measured_tb_s DOUBLE;
        ALTER TABLE roofline ADD COLUMN sol_bytes_pct DOUBLE;
        CREATE TABLE ledger (
            campaign_id VARCHAR, model VARCHAR, rank INTEGER, engine VARCHAR, rule VARCHAR, kind VARCHAR,
            lever VARCHAR, value VARCHAR, predicted VARCHAR, why VARCHAR, score DOUBLE,
            artifacts VARCHAR, citations_json VARCHAR, sol_rigor VARCHAR, tier VARCHAR, simulated BOOLEAN,
            PRIMARY KEY (campaign_id, rank));
        """,
    ),
    (
        4,
        """
        ALTER TABLE cells ADD COLUMN weights VARCHAR;
        CREATE TABLE evals (
            campaign_id VARCHAR, model VARCHAR, engine VARCHAR, weights VARCHAR, scheme VARCHAR,
            reference VARCHAR, api VARCHAR, task VARCHAR, n INTEGER, correct INTEGER, score_pct DOUBLE,
            ci_lo DOUBLE, ci_hi DOUBLE, delta_pts DOUBLE, delta_ci_lo DOUBLE, delta_ci_hi DOUBLE,
            paired_test VARCHAR, mcnemar_p DOUBLE, decision VARCHAR, accuracy_pass BOOLEAN,
            ship_decision VARCHAR, tier VARCHAR,
            PRIMARY KEY (campaign_id, weights, task));
        """,
    ),
    (
        5,
        """
        CREATE TABLE spec (
            campaign_id VARCHAR, model VARCHAR, engine VARCHAR, engine_version VARCHAR, hardware VARCHAR,
            method VARCHAR, k INTEGER, levers_json VARCHAR, workload VARCHAR, concurrency INTEGER,
            trials INTEGER, acceptance_reported BOOLEAN, accept_length DOUBLE, accept_rate DOUBLE,
            accept_per_pos_json VARCHAR, standing_tpot_ms DOUBLE, tpot_ms DOUBLE, tpot_speedup DOUBLE,
            tpot_speedup_ci_lo DOUBLE, tpot_speedup_ci_hi DOUBLE, tok_s_ratio DOUBLE,
            tok_s_ratio_ci_lo DOUBLE, tok_s_ratio_ci_hi DOUBLE, verdict VARCHAR,
            crossover_concurrency INTEGER, tier VARCHAR,
            PRIMARY KEY (campaign_id, engine, method, workload, concurrency));
        """,
    ),
    (
        6,
        """
        ALTER TABLE spec ADD COLUMN tokens_per_step DOUBLE;
        ALTER TABLE spec ADD COLUMN loop_share DOUBLE;
        ALTER TABLE spec ADD COLUMN standing_loop_share DOUBLE;
        ALTER TABLE spec ADD COLUMN gate_call VARCHAR;
        ALTER TABLE spec ADD COLUMN workload_crossover_concurrency INTEGER;
        """,
    ),
]
TABLES = (
    "campaigns",
    "cells",
    "trials",
    "requests",
    "champions",
    "findings",
    "roofline",
    "ledger",
    "evals",
    "spec",
)


def default_lake() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "perftune" / "lake.duckdb"


def lock_timeout_s(value: float | None = None) -> float:
    """How long to wait for another process's lock on the lake: `value`, else the env var, else 120 s."""
    if value is not None:
        return max(0.0, value)
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        return max(0.0, float(raw))
    except ValueError as e:
        raise ConfigError(
            f"${LOCK_TIMEOUT_ENV} is not a number of seconds: {raw!r}", hint="e.g. 300, or unset it"
        ) from e


def is_lock_conflict(message: str) -> bool:
    return _LOCK_CONFLICT.search(message) is not None


def lock_holder(message: str) -> str | None:
    """'PID 123 (/usr/bin/python3, user ann)' from duckdb's lock error, or None if it names none."""
    m = _HOLDER.search(message)
    if m is None:
        return None
    who = m.group("program") + (f", user {m.group('user')}" if m.group("user") else "")
    return f"PID {m.group('pid')} ({who})"


def open_with_retry(
    open_db: Callable[[], Any],
    where: Path,
    timeout_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Call `open_db` until it does not fail on another process's lock, for at most `timeout_s`.

    Exponential backoff (20 ms doubling to 1 s) with jitter, so waiting publishers do not retry in step.
    """
    import duckdb

    deadline = clock() + timeout_s
    delay = 0.02
    while True:
        try:
            return open_db()
        except duckdb.Error as e:
            msg = str(e)
            if not is_lock_conflict(msg):
                raise LakeError(
                    f"cannot open the lake {where}: {msg}",
                    hint="check the path, its permissions, and that it is a DuckDB file",
                ) from e
            left = deadline - clock()
            if left <= 0:
                holder = lock_holder(msg) or "another process"
                raise LakeError(
                    f"the lake {where} is locked by {holder}; waited {timeout_s:g} s for it",
                    hint=f"let that process finish, or wait longer with ${LOCK_TIMEOUT_ENV}=SECONDS",
                ) from e
            sleep(min(delay * random.uniform(0.5, 1.5), left))
            delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def connect(path: str | Path, read_only: bool = False, *, lock_timeout: float | None = None) -> Iterator[Any]:
    """Open the lake (migrated, unless read-only), waiting for a lock another process holds."""
    import duckdb

    p = Path(path)
    if read_only and not p.exists():
        raise LakeError(f"no lake at {p}", hint="run a campaign first, or pass --lake PATH")
    p.parent.mkdir(parents=True, exist_ok=True)
    con = open_with_retry(
        lambda: duckdb.connect(str(p), read_only=read_only), p, lock_timeout_s(lock_timeout)
    )
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


def publish_rows(
    path: str | Path,
    campaign_id: str,
    rows: dict[str, list[dict[str, Any]]],
    *,
    lock_timeout: float | None = None,
) -> dict[str, int]:
    """Replace one campaign's rows in every table, atomically. Returns rows written per table.

    Concurrent publishes are serialized by the lake's file lock (see `connect`); two publishes of one
    campaign leave one copy of its rows, because each deletes the campaign's rows before inserting.
    """
    import duckdb

    unknown = set(rows) - set(TABLES)
    if unknown:
        raise LakeError(f"unknown lake tables: {sorted(unknown)}", hint="a perftune bug: report it")
    with connect(path, lock_timeout=lock_timeout) as con:
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


def query(
    path: str | Path, sql: str, params: list[Any] | None = None, *, lock_timeout: float | None = None
) -> list[dict[str, Any]]:
    import duckdb

    with connect(path, read_only=True, lock_timeout=lock_timeout) as con:
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


def export_parquet(path: str | Path, out_dir: str | Path, *, lock_timeout: float | None = None) -> list[str]:
    if not Path(path).exists():
        raise LakeError(f"no lake at {path}", hint="run a campaign first, or pass --lake PATH")
    out = writable_dir(
        out_dir, what="the export folder", hint="pick a folder you can write, e.g. --out ./lake-export"
    )
    written = []
    with connect(path, read_only=True, lock_timeout=lock_timeout) as con:
        for table in TABLES:
            f = out / f"{table}.parquet"
            tmp = out / f".{table}.parquet.tmp"
            con.execute(f"COPY (SELECT * FROM {table} ORDER BY ALL) TO '{tmp}' (FORMAT parquet)")
            tmp.replace(f)
            written.append(str(f))
    return written


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
