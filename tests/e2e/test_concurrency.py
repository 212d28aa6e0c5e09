"""Many processes writing one lake or one registry at once: every write lands, once, nothing is lost."""

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perftune.errors import LakeError
from perftune.lake.db import connect, lock_holder, publish_rows, query
from perftune.registry.store import BANNER, load_registry

pytestmark = pytest.mark.e2e

# One publisher: synthetic rows for campaign CID (N cells, 10 requests each) into the lake LAKE.
PUBLISH = """
import json, sys
from perftune.lake.db import publish_rows
lake, cid, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = {
    "campaigns": [{"campaign_id": cid, "model": "m-" + cid, "tier": "DRAFT"}],
    "cells": [{"campaign_id": cid, "cell_id": f"c{i}", "output_tok_s": float(i)} for i in range(n)],
    "requests": [
        {"campaign_id": cid, "cell_id": f"c{i}", "trial": 0, "idx": k, "ok": True, "ttft_ms": 1.0 * k}
        for i in range(n) for k in range(10)
    ],
}
print(json.dumps(publish_rows(lake, cid, rows)))
"""

# Holds the lake open for writing (as a long publish would) until killed; says when it has it.
HOLD = """
import sys, time
from perftune.lake.db import connect
with connect(sys.argv[1]) as con:
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""

RECORD = """
import sys
from pathlib import Path
from perftune.registry.schema import ModelEntry
from perftune.registry.store import record
record(Path(sys.argv[1]), sys.argv[2], ModelEntry(slug=sys.argv[2].split("/")[-1], engine="vllm",
       grind_frontier="value-findings.yaml -> x next_lever"))
"""


def _py(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _hold(lake: Path, seconds: float) -> subprocess.Popen[str]:
    holder = _py(HOLD, str(lake), str(seconds))
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "held":
        pytest.fail(f"the holder did not get the lake: {holder.communicate(timeout=60)[1]}")
    return holder


def _finish(holder: subprocess.Popen[str], *, kill: bool = False) -> None:
    if kill:
        holder.kill()
    _, err = holder.communicate(timeout=60)  # also closes its pipes
    assert kill or holder.returncode == 0, err


def _wait_all(procs: list[subprocess.Popen[str]], timeout_s: float = 240) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout_s)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


def test_concurrent_publishes_all_land_once(tmp_path: Path) -> None:
    lake = tmp_path / "lake.duckdb"
    sizes = {"camp-a": 5, "camp-b": 7, "camp-c": 11, "camp-d": 13}
    # A process holding the lake when they start makes every publisher meet the lock at least once.
    holder = _hold(lake, 3.0)
    procs = [_py(PUBLISH, str(lake), cid, str(n)) for cid, n in sizes.items()]
    procs += [_py(PUBLISH, str(lake), "camp-same", "9") for _ in range(2)]  # one campaign, twice at once
    outs = _wait_all(procs)
    _finish(holder)
    written = [json.loads(o) for o in outs]
    assert [w["cells"] for w in written] == [*sizes.values(), 9, 9]

    per = {
        r["campaign_id"]: r["n"]
        for r in query(lake, "SELECT campaign_id, count(*) AS n FROM cells GROUP BY ALL")
    }
    assert per == {**sizes, "camp-same": 9}
    [dup] = query(
        lake,
        "SELECT (SELECT count(*) FROM requests) AS n, "
        "(SELECT count(*) FROM (SELECT DISTINCT campaign_id, cell_id, trial, idx FROM requests)) AS d, "
        "(SELECT count(*) FROM campaigns) AS c",
    )
    assert dup == {"n": 10 * (sum(sizes.values()) + 9), "d": 10 * (sum(sizes.values()) + 9), "c": 5}


def test_publish_waits_for_a_holder_then_succeeds(tmp_path: Path) -> None:
    lake = tmp_path / "lake.duckdb"
    holder = _hold(lake, 1.5)
    t0 = time.monotonic()
    n = publish_rows(lake, "c1", {"cells": [{"campaign_id": "c1", "cell_id": "x"}]}, lock_timeout=60)
    assert n["cells"] == 1
    assert time.monotonic() - t0 > 0.5  # it did wait for the holder (a floor, not a ceiling)
    _finish(holder)
    assert query(lake, "SELECT count(*) AS n FROM cells") == [{"n": 1}]


def test_lock_timeout_names_the_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = tmp_path / "lake.duckdb"
    holder = _hold(lake, 60)
    try:
        with pytest.raises(LakeError, match=rf"locked by PID {holder.pid}\b.*waited 0\.3 s") as e:
            publish_rows(lake, "c1", {}, lock_timeout=0.3)
        assert "PERFTUNE_LAKE_LOCK_TIMEOUT_S" in (e.value.hint or "")
        monkeypatch.setenv("PERFTUNE_LAKE_LOCK_TIMEOUT_S", "0.2")
        with pytest.raises(LakeError, match=rf"PID {holder.pid}\b.*waited 0\.2 s"):
            query(lake, "SELECT 1")  # readers wait for a writer too
    finally:
        _finish(holder, kill=True)
    with connect(lake) as con:  # the lock goes with the process
        assert con.execute("SELECT count(*) FROM cells").fetchone() == (0,)


def test_lock_holder_parses_duckdb_message() -> None:
    msg = (
        'IO Error: Could not set lock on file "/x/lake.duckdb": Conflicting lock is held in '
        "/usr/bin/python3.11 (PID 4242) by user ann. See also https://duckdb.org/docs/connect/concurrency"
    )
    assert lock_holder(msg) == "PID 4242 (/usr/bin/python3.11, user ann)"
    assert lock_holder("IO Error: something else") is None


def test_twenty_concurrent_records_keep_every_entry_and_the_mode(tmp_path: Path) -> None:
    reg = tmp_path / "R.yaml"
    reg.write_text(BANNER)
    reg.chmod(0o640)
    models = [f"org/model-{i}" for i in range(20)]
    _wait_all([_py(RECORD, str(reg), m) for m in models])
    assert set(load_registry(reg).models) == set(models)  # the file is valid and holds all 20
    assert stat.S_IMODE(reg.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
