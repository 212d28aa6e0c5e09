"""What a new user meets first (issue 14): data checked in phase 0, bad input exits 2 and writes
nothing, SIGINT/SIGTERM tear down + publish + print the resume command, a red opt-in tune does not
block the campaign."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from perftune import api
from perftune.campaign.state import CampaignState
from perftune.errors import ModelError
from perftune.lake.db import query
from perftune.models.resolve import model_card
from perftune.targets.local import group_alive

from .conftest import small_campaign

pytestmark = pytest.mark.e2e


def _pt(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perftune", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def test_missing_corpus_is_red_in_phase0_with_the_fix(tmp_path: Path, monkeypatch: Any) -> None:
    # Reproduces: the main job benched for minutes, then stopped at phase 8's first chat cell.
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "inspect_evals" else real(name, *a)
    )
    intent = small_campaign(tmp_path, workloads=["random", "chat"])
    run_dir, state = api.optimize(
        runs_dir=tmp_path / "runs", intent=intent, confirm=lambda _: True, lake=tmp_path / "l.duckdb"
    )
    p0 = state.phases["0"]
    assert p0.status == "red" and "WritingBench" in p0.reason and "inspect-evals" in p0.hint
    assert state.phases["1"].status == "pending" and not state.cells  # nothing was deployed or benched
    assert "Hint for phase 0" in (run_dir / "summary.md").read_text()


def test_unknown_model_exits_2_and_leaves_no_campaign(tmp_path: Path) -> None:
    runs, lake = tmp_path / "runs", tmp_path / "lake.duckdb"
    r = _pt(
        "optimize", "llama-3.1-8bb", "--engines", "sim", "--yes", "--runs-dir", str(runs), "--lake", str(lake)
    )
    assert r.returncode == 2, r.stderr
    assert "unknown model 'llama-3.1-8bb'" in r.stderr and "hint:" in r.stderr
    assert "Traceback" not in r.stderr
    assert not runs.exists() or not any(runs.iterdir())
    assert not lake.exists()  # no campaign row for a typo


def test_a_missing_folder_is_reported_as_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model folder not found") as e:
        model_card(str(tmp_path / "no" / "such-model"))
    assert e.value.exit_code == 2
    r = _pt("inspect", "./models/missing-folder/x")
    assert r.returncode == 2 and "model folder not found" in r.stderr and "HFValidationError" not in r.stderr


def stop(proc: subprocess.Popen[str], runs: Path) -> None:
    """Stop a campaign this test started, whatever phase it reached: SIGTERM (its own teardown), then
    SIGKILL if it has not exited in two minutes (a loaded CI machine), never a leaked process. How a
    campaign answers SIGTERM is asserted by test_stop_signals_tear_down_publish_and_print_the_resume_..."""
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        for f in runs.glob("*/campaign.json"):  # its servers, which it had no chance to stop
            for d in CampaignState.load(f.parent).live:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(d.pgid, signal.SIGKILL)


def _wait_for_phase8_with_a_live_server(runs: Path, proc: subprocess.Popen[str]) -> CampaignState:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        for f in runs.glob("*/campaign.json"):
            try:
                st = CampaignState.model_validate(json.loads(f.read_text()))
            except ValueError:
                continue
            if st.phases["8"].status == "running" and st.live:
                return st
        time.sleep(0.2)
    raise AssertionError("phase 8 never ran with a live server")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signals_tear_down_publish_and_print_the_resume_command(tmp_path: Path, sig: int) -> None:
    runs, lake = tmp_path / "runs", tmp_path / "lake.duckdb"
    cmd = [sys.executable, "-m", "perftune", "optimize", "llama-3.1-8b", "--engines", "sim", "--yes"]
    cmd += ["--runs-dir", str(runs), "--lake", str(lake), "--registry", str(tmp_path / "kg.yaml")]
    cmd += ["--findings", str(tmp_path / "f.yaml"), "--workloads", "random,prefix", "--ladder", "4,8"]
    cmd += ["--isl", "256", "--osl", "64", "--trials", "3"]
    # A test run launched as a background job of a non-interactive shell (`nohup ... &`) starts with
    # SIGINT ignored, and an ignored signal stays ignored across exec: the campaign would rightly ignore
    # Ctrl-C too. A handler does not survive exec, so installing one here gives the campaign the default.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        st = _wait_for_phase8_with_a_live_server(runs, proc)
        servers = [d.pgid for d in st.live]
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.returncode is None:  # failed before it exited: no process outlives the test
            stop(proc, runs)
            proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    assert f"perftune optimize --resume {st.run_id} --runs-dir {runs} --lake {lake} --yes" in err
    assert "Traceback" not in err
    assert not any(group_alive(p) for p in servers)  # torn down, not orphaned
    after = CampaignState.load(runs / st.run_id)
    assert not after.live and after.phases["8"].status == "pending"
    assert query(lake, "select count(*) as n from campaigns")[0]["n"] == 1  # published on the way out


def test_a_red_opt_in_tune_does_not_block_the_campaign(tmp_path: Path) -> None:
    intent = small_campaign(tmp_path, workloads=["random"], ladder=[4], trials=1)
    runs = tmp_path / "runs"
    run_dir, state = api.optimize(runs_dir=runs, intent=intent, until="1", lake=None)
    # what `perftune tune` leaves when its budget or time box stops it
    state.phases["3"].status, state.phases["3"].reason = "red", "tuning stopped at its time limit"
    state.save(run_dir)
    _, final = api.optimize(runs_dir=runs, resume=run_dir.name, until="8", confirm=lambda _: True, lake=None)
    p3 = final.phases["3"]
    assert p3.status == "skipped" and "tuning stopped at its time limit" in p3.reason
    assert final.phases["8"].status == "green"


def test_lake_export_to_an_unwritable_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    from perftune.lake.db import connect

    lake = tmp_path / "lake.duckdb"
    with connect(lake):
        pass
    r = _pt("lake", "export", "--out", "/proc/perftune-x", "--lake", str(lake))
    assert (
        r.returncode == 2
        and "cannot write to the export folder /proc/perftune-x" in r.stderr
        and "Traceback" not in r.stderr
    )
    ok = _pt("lake", "export", "--out", str(tmp_path / "x"), "--lake", str(lake))
    assert ok.returncode == 0 and (tmp_path / "x" / "cells.parquet").exists()


def test_two_processes_resuming_one_run_the_second_refuses_naming_the_first(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "perftune", "optimize", "llama-3.1-8b", "--engines", "sim", "--yes"]
    cmd += [
        "--runs-dir",
        str(runs),
        "--lake",
        str(tmp_path / "l.duckdb"),
        "--registry",
        str(tmp_path / "k.yaml"),
    ]
    cmd += ["--findings", str(tmp_path / "f.yaml"), "--workloads", "random,prefix", "--ladder", "4,8"]
    cmd += ["--isl", "256", "--osl", "64", "--trials", "3", "--no-capacity"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        st = _wait_for_phase8_with_a_live_server(runs, proc)
        second = _pt("optimize", "--resume", st.run_id, "--runs-dir", str(runs), "--yes")
        assert second.returncode == 2, second.stderr
        assert f"already being driven by another process (PID {proc.pid})" in second.stderr
        tune = _pt("tune", "--run", st.run_id, "--runs-dir", str(runs), "--yes")
        assert tune.returncode == 2 and f"PID {proc.pid}" in tune.stderr
    finally:
        stop(proc, runs)
    # the refused tune changed nothing
    assert CampaignState.load(runs / st.run_id).intent.tuning.enabled is False


def test_phase0_red_for_too_few_gpus_writes_the_source_it_lists(tmp_path: Path) -> None:
    intent = small_campaign(tmp_path, model="llama-3.1-70b", gpu="l40s")
    run_dir, state = api.optimize(runs_dir=tmp_path / "runs", intent=intent, lake=None)
    p0 = state.phases["0"]
    assert p0.status == "red" and "SOURCE.md" in p0.artifacts and "needs TP=" in p0.reason
    assert (run_dir / "SOURCE.md").exists() and p0.reason in (run_dir / "SOURCE.md").read_text()
