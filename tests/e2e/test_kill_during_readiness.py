"""Issue 15: SIGKILL of `optimize` while phase 1 waits for the engine's health left the server running
after --resume (its group was recorded only once ready). The group is now recorded before the wait."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perftune import api
from perftune.campaign.state import CampaignState
from perftune.targets.local import group_alive, stop_group

pytestmark = pytest.mark.e2e


def test_kill_while_the_engine_loads_then_resume_reaps_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "perftune", "optimize", "llama-3.1-8b", "--engines", "mock"]
    cmd += ["--yes", "--runs-dir", str(runs), "--lake", str(tmp_path / "l.duckdb")]
    cmd += ["--registry", str(tmp_path / "kg.yaml"), "--findings", str(tmp_path / "f.yaml")]
    # a mock engine that takes 120 s to start listening: the campaign sits in its readiness wait
    cmd += ["--engine-arg", "mock=--startup-delay-s=120", "--workloads", "random", "--ladder", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, st = time.monotonic() + 120, None
    while time.monotonic() < deadline and proc.poll() is None:
        for f in runs.glob("*/campaign.json"):
            try:
                st = CampaignState.model_validate(json.loads(f.read_text()))
            except ValueError:
                continue
        if st is not None and st.live and st.phases["1"].status == "running":
            break
        time.sleep(0.1)
    assert st is not None and st.live, "the server group was not recorded before the readiness wait"
    pgid = st.live[0].pgid
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        assert group_alive(pgid)  # the loading engine outlived its campaign
        _, after = api.optimize(runs_dir=runs, resume=st.run_id, start_phase="0", until="0", lake=None)
        assert not group_alive(pgid) and not after.live  # --resume reaped it
    finally:
        if group_alive(pgid):
            stop_group(pgid, 5.0)
