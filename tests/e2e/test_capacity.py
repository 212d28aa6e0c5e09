"""`perftune capacity` as a real process against the simulator.

The simulated server runs Llama-3.1-8B on an H100 in real time with at most 4 sequences in flight, so from
concurrency 5 on a request must wait for a whole earlier request (16 tokens at several ms each) before its
first token: a p99 TTFT bound of 70 ms binds between concurrency 4 and 5 by the simulator's own timing,
with tens of ms to spare on either side. Assertions are about the search's behaviour, never about time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftune.bench.capacity import CapacityResult
from perftune.mock.process import ready_json_process

pytestmark = pytest.mark.e2e

MAX_SEQS = 4
SLO = "ttft=70,tpot=50,p=99"


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    cmd = [sys.executable, "-m", "perftune", "sim-server", "--model", "llama-3.1-8b", "--gpu", "h100"]
    cmd += ["--port", "0", "--ready-json", "--served-model-name", "sim", "--max-num-seqs", str(MAX_SEQS)]
    with ready_json_process(cmd, "simulator", startup_timeout_s=60) as url:
        yield url


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perftune", "capacity", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _search(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli(
        "--endpoint", url, "--model", "sim", "--slo", SLO, "--isl", "128", "--osl", "16",
        "--trials", "2", "--out", str(out), *extra,
    )  # fmt: skip


def test_capacity_search_against_the_simulator(sim: str, tmp_path: Path) -> None:
    out = tmp_path / "cap"
    run = _search(sim, out)
    assert run.returncode == 0, run.stderr
    res = CapacityResult.model_validate_json((out / "capacity.json").read_text())
    assert res.complete and res.n_points == len(res.points) >= 3
    assert res.slo.ttft_ms == 70 and res.slo.percentile == 99 and res.mode == "closed"

    # the bracket climbs 1, 2, 4, ... to the first fail, then bisects below it
    loads = [p.load for p in res.points]
    first_fail = next(i for i, p in enumerate(res.points) if not p.passed)
    assert loads[: first_fail + 1] == [float(2**k) for k in range(first_fail + 1)]
    assert all(p.passed for p in res.points[:first_fail])

    # the capacity point passes and the next point (the lowest fail) fails; no load above the
    # simulator's sequence limit can pass (a queued request waits a whole request for its first token)
    lo, hi = res.interval
    assert lo is not None and hi is not None and res.capacity == lo and not res.at_least
    by_load = {p.load: p for p in res.points}
    assert by_load[lo].passed and not by_load[hi].passed and hi - lo <= 1
    assert lo <= MAX_SEQS and not any(p.passed and p.load > MAX_SEQS for p in res.points)
    assert res.output_tok_s == by_load[lo].output_tok_s and res.output_tok_s is not None

    # every point's bench folder exists with its evidence, and 2 trials each
    for p in res.points:
        assert p.folder is not None and (out / p.folder / "summary.json").is_file()
        assert p.trials == 2 and p.context is not None and p.context.stack.simulated

    # the statement, on stdout and in the result; the simulated server says so
    assert res.statement.startswith(
        f"sustains concurrency {int(lo)} at p99 TTFT <= 70 ms and p99 TPOT <= 50 ms"
    )
    assert f"(next point concurrency {int(hi)} fails: p99 TTFT" in res.statement
    assert f"{res.n_points} points, 2 trials each" in res.statement
    assert res.tier == "SIMULATED" and res.statement.endswith("SIMULATED server")
    assert res.context is not None and res.context.workload.concurrency == lo
    assert res.statement in run.stdout and f"bundle: {out / 'capacity.json'}" in run.stdout
    assert res.statement in (out / "capacity.md").read_text()

    # a re-run into the same folder reuses every finished point instead of measuring again
    again = _search(sim, out, "--json")
    assert again.returncode == 0, again.stderr
    resumed = json.loads(again.stdout)
    assert [p["load"] for p in resumed["points"]] == loads
    assert resumed["capacity"] == res.capacity and resumed["folder"] == str(out)


def test_unknown_preset_is_bad_input_with_one_line_and_a_hint(tmp_path: Path) -> None:
    out = tmp_path / "never"
    run = _cli("--endpoint", "http://127.0.0.1:9", "--model", "m", "--slo", "mlperf-fast", "--out", str(out))
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert lines[0] == "error: unknown SLO preset 'mlperf-fast'"
    assert lines[1].startswith("hint: a preset (") and "mlperf-server" in lines[1] and len(lines) == 2
    assert not out.exists()  # nothing was created


def test_list_presets_exits_zero_without_an_endpoint() -> None:
    run = _cli("--list-presets", "--json")
    assert run.returncode == 0, run.stderr
    rows = {r["name"]: r for r in json.loads(run.stdout)}
    assert rows["mlperf-server-8b"]["slo"] == "p99 TTFT <= 2 s and p99 TPOT <= 100 ms"
    assert "mlperf.conf" in rows["mlperf-server-8b"]["source"] and rows["mlperf-server"]["kind"] == "family"


def test_a_point_whose_client_fell_behind_is_benched_again_not_judged(
    sim: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A passing hiccup of the client host is not the server's capacity: at the first load, the first two
    attempts are made to look as if the client fell behind in one of their two trials; the third is kept.
    Every attempt keeps its folder, the point says it was re-measured, a resume reuses them all. A load
    the client falls behind at in every trial is judged at once (this host cannot apply it)."""
    from perftune.bench import capacity
    from perftune.bench.slo import Slo
    from perftune.bench.workloads import WorkloadSpec

    real = capacity.bench_to_dir
    calls: list[str] = []
    lag = "client schedule lag p99 12.00 ms > 5.0 ms"

    def behind(run: object, paths: dict[str, str], trials: list[int]) -> None:
        res = run.result  # type: ignore[attr-defined]
        ts = [
            t.model_copy(
                update={"load": t.load.model_copy(update={"valid": False, "invalid_reasons": [lag]})}
            )
            if k in trials
            else t
            for k, t in enumerate(res.trials)
        ]
        summary = res.summary.model_copy(
            update={"valid": False, "invalid_reasons": [f"trial {trials[0]}: {lag}"]}
        )
        run.result = res.model_copy(update={"trials": ts, "summary": summary})  # type: ignore[attr-defined]
        Path(paths["summary"]).write_text(run.result.model_dump_json())  # type: ignore[attr-defined]

    def double(bcfg: object, *, out_dir: Path) -> object:
        run, paths = real(bcfg, out_dir=out_dir)  # type: ignore[arg-type]
        calls.append(Path(out_dir).name)
        if len(calls) <= 2:
            behind(run, paths, [1])  # one trial of two: a hiccup
        elif Path(out_dir).name == "closed-2":
            behind(run, paths, [0, 1])  # every trial: the client cannot apply this load here
        return run, paths

    monkeypatch.setattr(capacity, "bench_to_dir", double)
    cfg = capacity.CapacityConfig(
        endpoint=sim, model="sim", slo=Slo(name="t", ttft_ms=70, tpot_ms=50, percentile=99),
        workload=WorkloadSpec(kind="random", isl=128, osl=16, num_requests=16),
        trials=2, ladder=[1, 2], max_points=2,
    )  # fmt: skip
    events: list[str] = []
    res = capacity.run_capacity(cfg, tmp_path / "cap", observer=lambda e: events.append(f"{e.kind}{e.index}"))
    assert calls == ["closed-1", "closed-1.retry1", "closed-1.retry2", "closed-2"]
    first, second = res.points
    assert first.folder == "points/closed-1.retry2" and first.passed, first.reasons
    assert any("fell behind its schedule in points/closed-1, points/closed-1.retry1: re-measured" in n
               for n in first.notes)  # fmt: skip
    assert not second.passed and any("the client fell behind its schedule" in r for r in second.reasons)
    assert events == ["start0", "done0", "start1", "done1"]
    for rel in ("closed-1", "closed-1.retry1", "closed-1.retry2", "closed-2"):
        assert (tmp_path / "cap/points" / rel / "summary.json").is_file()

    calls.clear()
    events.clear()
    again = capacity.run_capacity(
        cfg, tmp_path / "cap", observer=lambda e: events.append(f"{e.kind}{e.index}")
    )
    assert calls == [] and events == ["reused0", "reused1"]
    assert [p.folder for p in again.points] == [p.folder for p in res.points]
