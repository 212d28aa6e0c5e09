"""The tuner's live evaluator: one real (or simulated) deploy per arm and trial, measured through the
campaign's service layer. The search itself (perftune.tune) only sees the Evaluator protocol."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from perftune.bench.runner import BenchConfig
from perftune.bench.session import bench_to_dir
from perftune.campaign.base import Ctx
from perftune.campaign.cells import (
    baseline_name,
    hardware_label,
    live_server,
    serving_context,
    trial_observer,
    workload_spec,
)
from perftune.errors import BenchError, PerftuneError
from perftune.targets.local import group_alive
from perftune.tune.arms import Arm
from perftune.tune.evaluate import classify, log_tail, trial_folder
from perftune.tune.search import Failure, Measure, Outcome


class LiveEvaluator:
    """A real (or simulated) engine per arm through `perftune deploy`; on that one deploy, one bench
    trial per workload and concurrency (cache reset before each, so a prefix workload's hits are its
    own); failures are classified with their log excerpt."""

    def __init__(
        self,
        ctx: Ctx,
        phase_dir: Path,
        wedge_s: float = 60.0,
        gpus: int = 1,
        workloads: Sequence[str] = ("random",),
        weights: Mapping[str, str] | None = None,
    ) -> None:
        self.ctx, self.dir, self.wedge_s, self.gpus = ctx, phase_dir, wedge_s, gpus
        self.workloads = tuple(workloads)
        self.weights = dict(weights or {})  # arm name -> weight variant (phase 5's A/B); default base

    def run(self, arm: Arm, concurrencies: Sequence[int], trial: int, *, screening: bool) -> Outcome:
        t0 = time.monotonic()
        ctx = self.ctx
        i = ctx.intent
        out: list[Measure] = []
        try:
            weights = self.weights.get(arm.name, "base")
            with live_server(ctx, arm.engine, self.dir, arm.levers, weights=weights) as rec:
                if not ctx.state.facts.engine_versions.get(arm.engine) and rec.engine_version:
                    ctx.state.facts.engine_versions[arm.engine] = rec.engine_version  # phase 1 not run
                for kind, c in ((w, c) for w in self.workloads for c in concurrencies):
                    wl = workload_spec(ctx, kind, c)
                    if screening:
                        wl = wl.model_copy(update={"num_requests": c})
                    cfg = BenchConfig(
                        endpoint=rec.endpoint,
                        model=rec.served_name,
                        workload=wl,
                        concurrency=c,
                        trials=1,
                        warmup_requests=min(2, c),
                        request_timeout_s=self.wedge_s,
                        hardware=hardware_label(ctx, arm.engine, arm.levers),
                        server_log=rec.log_path,
                        claim=i.slo.focus,
                        baseline=baseline_name(self.ctx, arm.engine),
                        text_vocab=rec.plan.text_prompts_only,
                        # the deployed levers: %SoL dtypes, and the token accounting (a speculative
                        # lever makes a chunk carry several tokens)
                        sol_levers=dict(arm.levers),
                        # the cell's own context names its config: levers, dtypes, weights, TP
                        serving=serving_context(ctx, arm.levers, weights),
                    )
                    rel = f"trials/{trial_folder(arm, 'screen' if screening else 'full', trial, kind, c)}"
                    try:
                        run, _ = bench_to_dir(
                            cfg,
                            out_dir=self.dir / rel,
                            observer=trial_observer(ctx, Path(rel).name, 1, wl.osl),
                        )
                    except BenchError as e:  # the engine booted and passed its smoke gate: a bench failure
                        tail = log_tail(rec.log_path)
                        klass = classify("bench", tail, group_alive(rec.pgid), 0, http_errors=1)
                        why = e.message[:500] + "\n" + tail[-1000:]  # the error first, then the log
                        return Outcome(out, self._gpu_s(t0), Failure(arm.key, klass, why, rec.log_path))
                    t = run.result.trials[0]
                    if t.counts.ok < t.counts.sent:
                        c_ = t.counts
                        tail = log_tail(rec.log_path)
                        klass = classify(
                            "bench",
                            tail,
                            group_alive(rec.pgid),
                            c_.timeouts,
                            dropped=c_.dropped,
                            http_errors=c_.errors - c_.dropped - c_.connection_errors,
                        )
                        return Outcome(
                            out, self._gpu_s(t0), Failure(arm.key, klass, tail[-1500:], rec.log_path)
                        )
                    out.append(
                        Measure(
                            arm.key,
                            c,
                            trial,
                            t.output_tok_s,
                            t.ttft_ms.mean or 0.0,
                            t.tpot_ms.p50 or 0.0,
                            kind,
                            rel,
                        )
                    )
        except PerftuneError as e:
            tail = log_tail(e.log_path) if e.log_path else e.message
            return Outcome(
                out,
                self._gpu_s(t0),
                Failure(
                    arm.key,
                    classify("deploy", tail + e.message, False, 0),
                    e.message[:500] + "\n" + tail[-1000:],
                    e.log_path,
                ),
            )
        return Outcome(out, self._gpu_s(t0))

    def _gpu_s(self, t0: float) -> float:
        return (time.monotonic() - t0) * self.gpus
