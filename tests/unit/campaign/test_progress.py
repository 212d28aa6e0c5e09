"""Live progress (issue 20), the pure parts: an event's plain line, the throttle a pipe gets, the tail
reader of a growing server log, the readiness wait's callback, a trial's live tok/s, phase N of M from
the PHASES table, and both renderers."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from perftune.bench.runner import Progress as BenchProgress
from perftune.campaign.base import (
    EngineReady,
    EngineStarting,
    Event,
    EventObserver,
    PhaseStart,
    TrialProgress,
    TuneBudget,
    event_line,
    tune_budget_of,
    wants_events,
)
from perftune.campaign.cells import TrialRate
from perftune.campaign.phases import PHASES
from perftune.cli.common import PlainThrottle, ProgressRenderer
from perftune.errors import DeployError
from perftune.serving.spec import LaunchPlan
from perftune.targets.local import LocalDeployment, last_log_line, wait_ready

ANSI = re.compile(r"\x1b\[")


def test_every_event_has_one_plain_line() -> None:
    assert event_line(PhaseStart(2, 13, "1", "deploy baseline per engine")) == (
        "phase 2 of 13 (id 1): deploy baseline per engine"
    )
    assert event_line(EngineStarting("vllm", 12.4, "Loading weights took 3.1 s")) == (
        "engine vllm: starting, 12 s | log: Loading weights took 3.1 s"
    )
    assert event_line(EngineStarting("vllm", 0.0, "")) == "engine vllm: starting, 0 s | log: (empty so far)"
    assert event_line(EngineReady("sim", 1.96, "Uvicorn running")) == (
        "engine sim: ready in 2.0 s | log: Uvicorn running"
    )
    assert event_line(TrialProgress("p8.sim.baseline.random.c4", 1, 3, 8, 16, 12345.6)) == (
        "cell p8.sim.baseline.random.c4: trial 1/3, 8/16 requests (50%), ~12,346 tok/s"
    )
    assert (
        event_line(TuneBudget(5, 2, 3.25, 60.0)) == "tune: 5 deploy(s) (2 replayed), 3.2 of 60 GPU-min spent"
    )
    assert event_line(TuneBudget(1, 0, 0.0, None)) == "tune: 1 deploy(s) (0 replayed), 0.0 GPU-min spent"


def test_the_tuners_own_budget_line_reads_back_as_an_event(tmp_path: Path) -> None:
    # perftune.tune may not import the campaign, so its line is the contract: parse what it really says
    from perftune.tune.arms import Arm
    from perftune.tune.evaluate import RecordingEvaluator
    from perftune.tune.search import Outcome

    class Inner:
        workloads = ("random",)

        def run(self, arm: Arm, concurrencies: list[int], trial: int, *, screening: bool) -> Outcome:
            return Outcome([], 90.0)

    lines: list[str] = []
    ev = RecordingEvaluator(Inner(), tmp_path / "j.jsonl", observe=lines.append, budget_gpu_s=1800)
    for t in range(3):
        ev.run(Arm(engine="sim", name="x"), [4], t, screening=False)
    budgets = [b for b in map(tune_budget_of, lines) if b is not None]
    assert budgets == [TuneBudget(1, 0, 0.0, 30.0), TuneBudget(2, 0, 1.5, 30.0), TuneBudget(3, 0, 3.0, 30.0)]
    assert tune_budget_of("tune: sim/x failed: crash") is None
    assert tune_budget_of("phase 3: green after 1.0 s — tuned") is None


def test_a_pipe_gets_trial_lines_at_quarters_or_every_5_s() -> None:
    th = PlainThrottle(trial_every_s=5.0)

    def tp(done: int, trial: int = 1) -> TrialProgress:
        return TrialProgress("c", trial, 2, done, 100, 1.0)

    printed = [d for d in range(1, 101) if th.wants(tp(d), now=d * 0.01)]
    assert printed == [25, 50, 75, 100]
    # a slow trial: a line every 5 s in between the quarters too
    th = PlainThrottle(trial_every_s=5.0)
    assert [t for t in range(0, 30) if th.wants(tp(1 + t // 10, trial=2), now=float(t))] == [
        5,
        10,
        15,
        20,
        25,
    ]
    # a new trial starts its own quarters
    assert th.wants(tp(25, trial=3), now=30.0) and not th.wants(tp(26, trial=3), now=30.5)


def test_a_pipe_gets_an_engine_start_at_once_then_every_10_s_and_always_its_ready_line() -> None:
    th = PlainThrottle(engine_every_s=10.0)
    told = [s for s in range(0, 35) if th.wants(EngineStarting("vllm", float(s), "x"), now=float(s))]
    assert told == [0, 10, 20, 30]
    assert th.wants(EngineReady("vllm", 35.0, "x"), now=35.0)
    assert th.wants(EngineStarting("vllm", 0.0, ""), now=36.0)  # the next start is news at once
    assert not th.wants(PhaseStart(1, 13, "0", "resolve"), now=37.0)  # the phase's own line says it
    assert not th.wants(TuneBudget(1, 0, 0.0, 1.0), now=37.0)  # the tuner's own line says it


def test_last_log_line_follows_a_log_being_appended(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    assert last_log_line(log) == ""  # not there yet
    log.write_text("")
    assert last_log_line(log) == ""
    with log.open("a") as f:
        f.write("INFO starting\n")
        f.flush()
        assert last_log_line(log) == "INFO starting"
        f.write("\x1b[32mINFO\x1b[0m loading weights\n\n   \n")  # colour, then blank lines
        f.flush()
        assert last_log_line(log) == "INFO loading weights"
        f.write("Loading: 10%\rLoading: 55%\r")  # a progress bar, its line not ended yet
        f.flush()
        assert last_log_line(log) == "Loading: 55%"
        f.write("\nready, [bold]markup[/] is text\r\n")
        f.flush()
        assert last_log_line(log) == "ready, [bold]markup[/] is text"


def test_last_log_line_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("x" * 100_000 + "\nlast one\n")
    assert last_log_line(log, max_bytes=64) == "last one"
    # one huge line: the cut tail is all there is, cut to the width
    log.write_text("y" * 100_000)
    assert last_log_line(log, max_bytes=64, width=20) == "y" * 19 + "…"
    # the cut first line of the window is never shown as if it were whole
    log.write_text("a" * 50 + "\n" + "b" * 10 + "\n")
    assert last_log_line(log, max_bytes=30) == "b" * 10
    log.write_text("a" * 50 + "\n\n\n")
    assert last_log_line(log, max_bytes=30) == ""


def test_the_readiness_wait_reports_elapsed_and_the_logs_last_line(tmp_path: Path) -> None:
    log = tmp_path / "engine-server.log"
    code = "import time; print('loading shards', flush=True); time.sleep(30)"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    plan = LaunchPlan(
        engine="sim",
        served_name="m",
        argv=[sys.executable],
        env={},
        health_path="/health",
        ready_rule="never: nothing listens on port 9",
        metrics_path=None,
        metric_names={},
        cache_reset=None,
        lever_argv=[],
    )
    dep = LocalDeployment(plan=plan, base_url="http://127.0.0.1:9", proc=proc, log_path=log)
    seen: list[tuple[float, str]] = []
    try:
        with pytest.raises(DeployError, match=r"not ready within 2\.5 s"):
            asyncio.run(
                wait_ready(dep, 2.5, poll_s=0.1, on_wait=lambda s, ln: seen.append((s, ln)), every_s=1.0)
            )
    finally:
        proc.kill()
        proc.wait()
    assert 3 <= len(seen) <= 4 and seen[0][0] < 0.5
    assert all(b - a >= 0.95 for (a, _), (b, _) in itertools.pairwise(seen))
    assert seen[-1][1] == "loading shards"


def test_a_trials_tok_s_starts_where_the_last_trial_left_off() -> None:
    r = TrialRate(now=0.0)
    r.update(BenchProgress("warmup", 0, 4, 4, 400), now=1.0)
    # trial 1 starts when the warmup's last request finished; the session-wide count minus the warmup's
    assert r.update(BenchProgress("trial", 0, 1, 10, 500), now=2.0) == pytest.approx(100.0)
    assert r.update(BenchProgress("trial", 0, 10, 10, 2400), now=5.0) == pytest.approx(500.0)
    assert r.update(BenchProgress("trial", 1, 1, 10, 2500), now=6.0) == pytest.approx(100.0)
    # a server whose usage arrives after the last data read: the bench counts 0; osl stands in
    r = TrialRate(now=0.0, osl=16)
    assert r.update(BenchProgress("trial", 0, 5, 10, 0), now=2.0) == pytest.approx(40.0)


def test_phase_n_of_m_comes_from_the_phases_table(tmp_path: Path) -> None:
    from perftune.campaign.pipeline import run_campaign
    from perftune.campaign.state import Intent

    class Collect:
        def __init__(self) -> None:
            self.lines: list[str] = []
            self.events: list[Event] = []

        def __call__(self, message: str, /) -> None:
            self.lines.append(message)

        def event(self, ev: Event, /) -> None:
            self.events.append(ev)

    obs = Collect()
    assert wants_events(obs) and isinstance(obs, EventObserver) and not wants_events(print)
    intent = Intent.model_validate(
        {
            "model": "llama-3.1-8b",
            "engines": ["sim"],
            "workloads": ["random"],
            "registry": str(tmp_path / "kg.yaml"),
            "findings": str(tmp_path / "f.yaml"),
        }
    )
    run_campaign(runs_dir=tmp_path / "runs", intent=intent, until="0", observe=obs)
    first = PhaseStart(1, len(PHASES), PHASES[0].id, PHASES[0].name)
    assert obs.events == [first]
    assert obs.lines[0] == event_line(first) == f"phase 1 of {len(PHASES)} (id 0): {PHASES[0].name}"
    assert re.match(r"phase 0: green after \d+\.\d s — ", obs.lines[1])
    # a plain callable observer gets the same lines and no events
    lines: list[str] = []
    run_campaign(runs_dir=tmp_path / "runs2", intent=intent, until="0", observe=lines.append)
    assert lines[0] == obs.lines[0]


def _events() -> list[Event]:
    return [
        PhaseStart(2, 13, "1", "deploy [baseline] per engine"),
        EngineStarting("sim", 0.0, ""),
        EngineStarting("sim", 1.0, "[/bold] not markup"),
        EngineReady("sim", 1.5, "Uvicorn running"),
        *[TrialProgress("p1.sim.c4", 1, 2, d, 8, 100.0 * d) for d in range(1, 9)],
        TuneBudget(1, 0, 0.0, 60.0),
    ]


def test_a_piped_renderer_prints_plain_throttled_lines_and_no_escapes() -> None:
    buf = io.StringIO()
    r = ProgressRenderer(Console(file=buf, width=200), live=False)
    with r:
        r("phase 2 of 13 (id 1): deploy baseline per engine")
        for ev in _events():
            r.event(ev)
        r("tune: deploy 1 (0 replayed): sim/x, trial 0, full at c=[4]; 0.0 of 60 GPU-min spent")
    out = buf.getvalue()
    assert not ANSI.search(out)
    assert out.splitlines() == [
        "phase 2 of 13 (id 1): deploy baseline per engine",
        "engine sim: starting, 0 s | log: (empty so far)",
        "engine sim: ready in 1.5 s | log: Uvicorn running",
        "cell p1.sim.c4: trial 1/2, 2/8 requests (25%), ~200 tok/s",
        "cell p1.sim.c4: trial 1/2, 4/8 requests (50%), ~400 tok/s",
        "cell p1.sim.c4: trial 1/2, 6/8 requests (75%), ~600 tok/s",
        "cell p1.sim.c4: trial 1/2, 8/8 requests (100%), ~800 tok/s",
        "tune: deploy 1 (0 replayed): sim/x, trial 0, full at c=[4]; 0.0 of 60 GPU-min spent",
    ]


def test_a_live_renderer_draws_on_a_terminal_and_keeps_the_lines() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    r = ProgressRenderer(console)
    assert r.live
    with r:
        r("phase 2 of 13 (id 1): deploy baseline per engine")
        for ev in _events():
            r.event(ev)
        with r.paused():
            pass
        r("tune: deploy 2 (1 replayed): sim/x, trial 0, full at c=[4]; 1.5 of 60 GPU-min spent")
        assert set(r.tasks) == {"phase", "tune"}  # the engine and the finished trial are gone
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "phase 2 of 13 (id 1): deploy baseline per engine" in plain
    assert "engine sim: ready in 1.5 s | log: Uvicorn running" in plain
    assert "cell p1.sim.c4: trial 1/2, 8/8 requests (100%), ~800 tok/s" in plain
