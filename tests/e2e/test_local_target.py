"""The local target with real processes: ready, teardown of the whole group, death, timeout, busy port."""

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from perftune.errors import ConfigError, DeployError
from perftune.serving.spec import LaunchPlan
from perftune.targets.local import check_port_free, down, free_port, group_alive, up, wait_ready

pytestmark = pytest.mark.e2e


def _plan(argv: list[str], served: str = "mock") -> LaunchPlan:
    return LaunchPlan(
        engine="mock",
        served_name=served,
        argv=argv,
        env={},
        health_path="/health",
        ready_rule="health + models",
        metrics_path=None,
        metric_names={},
        cache_reset=None,
        lever_argv=[],
    )


def test_ready_then_teardown_leaves_no_process(tmp_path: Path) -> None:
    port = free_port()
    # a server that also spawns a grandchild in its group: teardown must take the whole tree
    script = (
        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"sys.argv = ['perftune', 'mock-server', '--port', '{port}', '--model-name', 'm']; "
        "from perftune.cli.app import main; main()"
    )
    dep = up(_plan([sys.executable, "-c", script], served="m"), tmp_path, host="127.0.0.1", port=port)
    try:
        took = asyncio.run(wait_ready(dep, timeout_s=30))
        assert took < 30 and group_alive(dep.pgid)
    finally:
        down(dep, grace_s=5)
    assert not group_alive(dep.pgid)
    down(dep)  # idempotent
    assert dep.log_path.exists()


def test_process_death_shows_the_log_tail(tmp_path: Path) -> None:
    dep = up(
        _plan([sys.executable, "-c", "print('CUDA out of memory while loading'); raise SystemExit(3)"]),
        tmp_path,
        host="127.0.0.1",
        port=free_port(),
    )
    with pytest.raises(DeployError, match=r"(?s)exited with code 3.*CUDA out of memory") as e:
        asyncio.run(wait_ready(dep, timeout_s=30))
    assert e.value.log_path == str(dep.log_path)


def test_timeout_tears_nothing_down_by_itself(tmp_path: Path) -> None:
    dep = up(
        _plan([sys.executable, "-c", "import time; print('loading'); time.sleep(60)"]),
        tmp_path,
        host="127.0.0.1",
        port=free_port(),
    )
    try:
        with pytest.raises(DeployError, match="not ready within 1 s"):
            asyncio.run(wait_ready(dep, timeout_s=1, poll_s=0.1))
    finally:
        down(dep, grace_s=2)
    assert not group_alive(dep.pgid)


def test_busy_port_and_missing_engine(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match="is busy"):
            check_port_free("127.0.0.1", s.getsockname()[1])
    with pytest.raises(DeployError, match="not installed"):
        up(_plan(["/nonexistent/llama-server"]), tmp_path, host="127.0.0.1", port=free_port())
