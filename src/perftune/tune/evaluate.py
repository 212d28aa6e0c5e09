"""Evaluators the tuner drives: the simulator in virtual time (planning, pruning, the efficiency
benchmark) and a live engine deployed per arm (phase 3). Plus the pure failure classifier."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perftune.errors import PerftuneError
from perftune.hardware.ceilings import Gpu
from perftune.models.card import ModelCard
from perftune.serving.levers import translate
from perftune.sim.calibration import Calibration
from perftune.sim.config import SimConfig, parse_vllm_flags
from perftune.sim.core import EngineCore, kv_capacity_blocks
from perftune.tune.arms import Arm
from perftune.tune.search import Failure, FailureClass, Measure, Outcome

OOM_MARKERS = (
    "out of memory",
    "outofmemoryerror",
    "cuda error: out of memory",
    "no available memory for the cache",
)


def classify(
    stage: str, log_tail: str, server_alive: bool, timeouts: int, *, dropped: int = 0, http_errors: int = 0
) -> FailureClass:
    """boot: never became ready; oom: the log says memory; crash: died under load; wedge: alive but
    requests made no progress for the wedge timeout; dropped: alive, but streams broke off mid-response;
    http-error: alive, answering requests with an error status."""
    low = log_tail.lower()
    if any(m in low for m in OOM_MARKERS):
        return "oom"
    if stage == "deploy":
        return "boot"
    if not server_alive:
        return "crash"
    if timeouts:
        return "wedge"
    if dropped:
        return "dropped"
    return "http-error" if http_errors else "crash"


def sim_config(arm: Arm, base: SimConfig | None = None) -> SimConfig:
    return parse_vllm_flags(translate(arm.levers, "vllm"), base or SimConfig())


def feasibility(card: ModelCard, g: Gpu, cal: Calibration, concurrency: int, context: int) -> Any:
    """A pruning predicate from the memory model: OOM at load, or KV too small for the target."""

    def check(arm: Arm) -> str | None:
        if arm.engine not in ("sim", "vllm"):
            return None
        try:
            cfg = sim_config(arm)
            blocks = kv_capacity_blocks(card, g, cfg, cal)
        except PerftuneError as e:
            return f"predicted infeasible: {e.message}"
        need = concurrency * context
        if blocks * cfg.block_size < need:
            return f"predicted KV too small: {blocks * cfg.block_size} tokens < {concurrency} x {context}"
        return None

    return check


class PredictEvaluator:
    """The simulator as the node: each call is one deploy (boot_s, a modelled cost) plus one trial per
    concurrency, measured in virtual time. Every number is simulated. Random workload only."""

    workloads = ("random",)

    def __init__(
        self,
        card: ModelCard,
        g: Gpu,
        cal: Calibration,
        isl: int,
        osl: int,
        boot_s: float = 60.0,
        requests_per_slot: int = 2,
    ) -> None:
        self.card, self.g, self.cal = card, g, cal
        self.isl, self.osl, self.boot_s, self.per_slot = isl, osl, boot_s, requests_per_slot

    def run(self, arm: Arm, concurrencies: Sequence[int], trial: int, *, screening: bool) -> Outcome:
        from perftune.sim.predict import replay_random

        seed = int(hashlib.sha1(f"{arm.key}/{trial}".encode()).hexdigest()[:8], 16)
        try:
            cfg = sim_config(arm).model_copy(update={"seed": seed})
            core = EngineCore(self.card, self.g, cfg, self.cal)
        except PerftuneError as e:
            return Outcome(
                [], self.boot_s, Failure(arm.key, "oom" if "memory" in e.message else "boot", e.message)
            )
        out, spent, t0 = [], self.boot_s, 0.0
        for c in concurrencies:
            n = c if screening else max(16, self.per_slot * c)
            f = replay_random(core, isl=self.isl, osl=self.osl, n=n, salt=trial + 1, concurrency=c, t0=t0)
            spent += f.end_s - t0
            t0 = f.end_s + 1.0
            out.append(Measure(arm.key, c, trial, f.output_tok_s, f.ttft_ms, float(np.median(f.tpots_ms))))
        return Outcome(out, spent)


def safe_name(arm_name: str) -> str:
    """An arm's name as it appears in folder names and cell ids ('composed:a+b' has a colon)."""
    return arm_name.replace("/", "_").replace(":", "_")


def trial_folder(arm: Arm, stage: str, trial: int, workload: str, c: int) -> str:
    """One deploy's bench folder name: the stage keeps a screening trial from being overwritten by the
    same arm's full-treatment trial of the same number."""
    return f"{arm.engine}.{safe_name(arm.name)}.{stage}.t{trial}.{workload}.c{c}"


def log_tail(path: str | None, n: int = 30) -> str:
    if not path or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])


class TuneStopped(PerftuneError):
    """The tuner reached its wall-clock limit between deploys; everything measured is journaled."""


class RecordingEvaluator:
    """Journal every outcome (one JSON line per deploy, flushed and fsynced) and replay it on a re-run.

    The tuner is deterministic given its outcomes, so a phase 3 killed at any moment (or split across
    several short GPU sessions) resumes by replaying the journal: finished deploys are never re-run,
    and their GPU-seconds still count against the budget. A torn last line is ignored. With stop_at (a
    time.monotonic() deadline) no new deploy starts after it: TuneStopped is raised between deploys,
    so a time-boxed session never kills a deploy half-way and loses it.
    """

    def __init__(
        self,
        inner: Any,
        journal: Path,
        stop_at: float | None = None,
        observe: Callable[[str], None] | None = None,
        budget_gpu_s: float | None = None,
    ) -> None:

        self.inner, self.journal, self.stop_at = inner, journal, stop_at
        self.observe = observe or (lambda _m: None)
        self.budget_gpu_s = budget_gpu_s
        self.spent_gpu_s = 0.0
        self.ran = 0
        self.cache: dict[str, Outcome] = {}
        self.replayed = 0
        if journal.exists():
            for line in journal.read_text().splitlines():
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                fail = Failure(**d["failure"]) if d.get("failure") else None
                self.cache[d["key"]] = Outcome([Measure(**m) for m in d["measures"]], d["gpu_s"], fail)

    @property
    def workloads(self) -> tuple[str, ...]:
        return tuple(getattr(self.inner, "workloads", ("random",)))

    @staticmethod
    def key(
        arm: Arm, concurrencies: Sequence[int], trial: int, screening: bool, workloads: Sequence[str]
    ) -> str:
        """What makes two deploys the same measurement (a changed workload list re-measures)."""

        return json.dumps(
            [arm.engine, arm.name, sorted(arm.levers.items()), list(concurrencies), trial, screening]
            + ([list(workloads)] if list(workloads) != ["random"] else [])
        )

    def run(self, arm: Arm, concurrencies: Sequence[int], trial: int, *, screening: bool) -> Outcome:

        k = self.key(arm, concurrencies, trial, screening, self.workloads)
        if k in self.cache:
            self.replayed += 1
            self.spent_gpu_s += self.cache[k].gpu_s  # paid for when it ran: the budget line counts it
            return self.cache[k]
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            raise TuneStopped(
                f"tuning stopped at its time limit before deploying {arm.key} (trial {trial}), after "
                f"{self.ran} new and {self.replayed} replayed deploys",
                hint="run the same perftune tune command again: the journal resumes where this stopped",
            )
        self.ran += 1
        budget = f" of {self.budget_gpu_s / 60:g}" if self.budget_gpu_s else ""
        self.observe(
            f"tune: deploy {self.ran} ({self.replayed} replayed): {arm.key}, trial {trial}, "
            f"{'screen' if screening else 'full'} at c={list(concurrencies)}; "
            f"{self.spent_gpu_s / 60:.1f}{budget} GPU-min spent"
        )
        out: Outcome = self.inner.run(arm, concurrencies, trial, screening=screening)
        self.spent_gpu_s += out.gpu_s
        if out.failure is not None:
            self.observe(f"tune: {arm.key} failed: {out.failure.klass}")
        else:
            self.observe(
                "tune: "
                + ", ".join(
                    f"{m.workload} c={m.concurrency} {m.output_tok_s:,.0f} tok/s, "
                    f"median TPOT {m.tpot_ms:.2f} ms"
                    for m in out.measures
                )
            )
        rec = {
            "key": k,
            "gpu_s": out.gpu_s,
            "measures": [m.__dict__ for m in out.measures],
            "failure": out.failure.__dict__ if out.failure else None,
        }
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with self.journal.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.cache[k] = out
        return out
