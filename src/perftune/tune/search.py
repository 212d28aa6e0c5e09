"""The tuner: prune, screen, successive halving, full interleaved treatment, compose, crown. Pure
except for the evaluator it drives (a live engine, or the simulator in virtual time).

Order is interleaved: every pass visits each surviving arm once (A B C A B C), so drift of the node
(thermals, clocks, a noisy neighbour) spreads over all arms instead of biasing the ones measured last.
An arm is crowned only with >= 3 trials at every concurrency of the ladder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from scipy import stats

from perftune.bench.stats import across_trials
from perftune.errors import ConfigError
from perftune.tune.arms import Arm, compose

FailureClass = Literal["boot", "oom", "crash", "wedge", "dropped", "http-error"]

# A full-treatment deploy runs the whole ladder with 2 requests per slot, a screening deploy one short
# run at the top concurrency: planning prices the former at this multiple of the latter (the deploy
# itself dominates both; on vLLM 0.26.0 / H100 a restart is 70-100 s, a c=64 run of 128 requests ~6 s).
FULL_OVER_SCREEN = 1.25


@dataclass
class Measure:
    """One trial of one arm at one concurrency."""

    arm: str
    concurrency: int
    trial: int
    output_tok_s: float
    ttft_ms: float
    tpot_ms: float  # median TPOT of the trial
    workload: str = "random"
    path: str = ""  # the trial's bench folder, relative to the tuner's folder (live evaluators)


@dataclass
class Failure:
    arm: str
    klass: FailureClass
    excerpt: str
    log_path: str | None = None


@dataclass
class Outcome:
    measures: list[Measure]
    gpu_s: float
    failure: Failure | None = None


class Evaluator(Protocol):
    def run(self, arm: Arm, concurrencies: Sequence[int], trial: int, *, screening: bool) -> Outcome: ...


@dataclass
class TuneConfig:
    ladder: list[int]
    slo_ttft_ms: float
    slo_tpot_ms: float
    trials: int = 3
    top_k: int = 3
    budget_gpu_s: float = math.inf
    # every deploy is measured on each of these; an arm's score is the geometric mean over them
    workloads: list[str] = field(default_factory=lambda: ["random"])


@dataclass
class WorkloadVerdict:
    """The best challenger against the baseline on one workload (each at its best concurrency under the
    SLO)."""

    score: float | None
    concurrency: int | None
    baseline_score: float | None
    baseline_concurrency: int | None
    ratio: float | None
    ratio_ci95: tuple[float, float] | None


@dataclass
class EngineResult:
    engine: str
    crowned: Arm | None
    score: float | None
    ci95: tuple[float, float] | None
    baseline_score: float | None
    ratio: float | None
    ratio_ci95: tuple[float, float] | None
    top3: list[tuple[str, float, int]]  # (arm, score, trials)
    pareto: list[tuple[str, str, int, float, float]]  # (workload, arm, c, tok/s, median TPOT), per workload
    # the best non-baseline arm and, per workload, it against the baseline (ratio/ratio_ci95 above are
    # this challenger's too, whether or not it was crowned)
    by_workload: dict[str, WorkloadVerdict] = field(default_factory=dict)
    challenger: str | None = None
    verdict: str = ""


@dataclass
class TuneResult:
    engines: list[EngineResult]
    failures: list[Failure]
    pruned: list[tuple[str, str]]
    order: list[tuple[str, int, str]] = field(default_factory=list)  # (arm, trial, stage) as executed
    gpu_s: float = 0.0
    gpu_s_by_stage: dict[str, float] = field(default_factory=dict)
    measures: list[Measure] = field(default_factory=list)
    full_measures: list[Measure] = field(default_factory=list)  # full treatment and composition only
    arm_levers: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm key -> its levers
    budget_exhausted: bool = False
    outcomes: list[tuple[str, str, float]] = field(default_factory=list)  # (engine, stage, gpu_s)
    notes: list[str] = field(default_factory=list)  # what the budget planner changed, and why


def interleave(arms: Sequence[Arm], trials: Sequence[int]) -> list[tuple[Arm, int]]:
    """ABAB: trial t of every arm before trial t+1 of any."""
    return [(a, t) for t in trials for a in arms]


@dataclass
class WorkloadScore:
    score: float | None
    concurrency: int | None
    by_trial: dict[int, float]  # tok/s of each trial at that concurrency


def workload_score(measures: Sequence[Measure], cfg: TuneConfig, workload: str) -> WorkloadScore:
    """Throughput under the SLO on one workload: the best concurrency whose mean TTFT and median TPOT
    meet the SLO, its mean tok/s and each trial's value (for intervals)."""
    best: WorkloadScore | None = None
    mine = [m for m in measures if m.workload == workload]
    for c in sorted({m.concurrency for m in mine}):
        ms = [m for m in mine if m.concurrency == c]
        if (
            np.mean([m.ttft_ms for m in ms]) > cfg.slo_ttft_ms
            or np.median([m.tpot_ms for m in ms]) > cfg.slo_tpot_ms
        ):
            continue
        mean = float(np.mean([m.output_tok_s for m in ms]))
        if best is None or mean > (best.score or 0.0):
            best = WorkloadScore(mean, c, {m.trial: m.output_tok_s for m in ms})
    return best or WorkloadScore(None, None, {})


def score(measures: Sequence[Measure], cfg: TuneConfig) -> tuple[float | None, list[float]]:
    """An arm's score: the geometric mean over cfg.workloads of its throughput under the SLO (so a
    ranking by it is a ranking by the mean log-ratio to any common baseline), and the per-trial values
    (trial t's geometric mean across workloads, for trials measured on every workload). None when any
    workload has no concurrency that meets the SLO."""
    per = [workload_score(measures, cfg, w) for w in cfg.workloads]
    if any(p.score is None for p in per):
        return None, []
    trials = sorted(set.intersection(*(set(p.by_trial) for p in per)))
    vals = [float(np.exp(np.mean([math.log(p.by_trial[t]) for p in per]))) for t in trials]
    if len(cfg.workloads) == 1:
        return per[0].score, vals
    return float(np.exp(np.mean([math.log(p.score or 1.0) for p in per]))), vals


def raw_throughput(measures: Sequence[Measure], cfg: TuneConfig) -> float:
    """Geometric mean over workloads of the best tok/s seen, SLO ignored (to rank SLO-breaking arms)."""
    best = [max((m.output_tok_s for m in measures if m.workload == w), default=0.0) for w in cfg.workloads]
    return float(np.exp(np.mean([math.log(max(b, 1e-9)) for b in best])))


def ci95(vals: Sequence[float]) -> tuple[float, float] | None:
    """The 95% t-interval of the mean: the bench's own across-trials statistic, not a second copy."""
    return across_trials(list(vals)).ci95


def ratio_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, tuple[float, float]] | None:
    """mean(a)/mean(b) with a 95% interval from the log-ratio's delta-method variance (Welch df)."""
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = float(np.mean(a)), float(np.mean(b))
    va = float(np.var(a, ddof=1)) / len(a) / ma**2
    vb = float(np.var(b, ddof=1)) / len(b) / mb**2
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va**2 / (len(a) - 1) if va else 0) + (vb**2 / (len(b) - 1) if vb else 0) or 1e-12)
    t = float(stats.t.ppf(0.975, max(1.0, df)))
    r = ma / mb
    return r, (r * math.exp(-t * se), r * math.exp(t * se))


def run_tuner(
    arms: Sequence[Arm],
    evaluator: Evaluator,
    cfg: TuneConfig,
    feasible: Callable[[Arm], str | None] = lambda _a: None,
) -> TuneResult:
    """Per engine: prune, screen, plan inside the budget, halve, full treatment, compose, crown."""
    measured = list(getattr(evaluator, "workloads", ["random"]))
    if missing := [w for w in cfg.workloads if w not in measured]:
        raise ConfigError(
            f"the tuner scores workload(s) {missing} but its evaluator measures only {measured}",
            hint="give the evaluator the same workloads as the tune config",
        )
    run = _Run(evaluator, cfg, feasible, list(dict.fromkeys(a.engine for a in arms)))
    for engine in run.engines:
        mine = [a for a in arms if a.engine == engine]
        base = mine[0]
        live = run.prune(mine, base)
        screen = run.screen(live)  # 1
        finalists, per_full = run.plan_and_halve(engine, live, base, screen)  # 2
        for a, t in interleave(finalists, range(cfg.trials)):  # 3
            run.spend("full", a, t, cfg.ladder, False)
        run.compose_round(engine, base, finalists, per_full)  # 4
        run.res.engines.append(run.crown(engine, base, finalists))  # 5
    return run.res


@dataclass
class _Run:
    """One tuner run's shared state: the result being built and every measure booked so far."""

    evaluator: Evaluator
    cfg: TuneConfig
    feasible: Callable[[Arm], str | None]
    engines: list[str]
    res: TuneResult = field(default_factory=lambda: TuneResult(engines=[], failures=[], pruned=[]))
    by_arm: dict[str, list[Measure]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def spend(self, stage: str, arm: Arm, trial: int, concs: Sequence[int], screening: bool) -> list[Measure]:
        """One evaluator call, booked to its stage; returns its measures (none on failure or budget)."""
        res = self.res
        if res.gpu_s >= self.cfg.budget_gpu_s:
            res.budget_exhausted = True
            return []
        out = self.evaluator.run(arm, concs, trial, screening=screening)
        res.order.append((arm.key, trial, stage))
        res.arm_levers[arm.key] = dict(arm.levers)
        res.outcomes.append((arm.engine, stage, out.gpu_s))
        res.gpu_s += out.gpu_s
        res.gpu_s_by_stage[stage] = res.gpu_s_by_stage.get(stage, 0.0) + out.gpu_s
        if out.failure is not None:
            res.failures.append(out.failure)
            self.failed.add(arm.key)
            return []
        if not screening:
            self.by_arm.setdefault(arm.key, []).extend(out.measures)
            res.full_measures.extend(out.measures)
        res.measures.extend(out.measures)
        return out.measures

    def share_left(self, engine: str) -> float:
        """This engine's share of the budget still unspent (split evenly over it and those after it)."""
        return (self.cfg.budget_gpu_s - self.res.gpu_s) / (len(self.engines) - self.engines.index(engine))

    def prune(self, mine: list[Arm], base: Arm) -> list[Arm]:
        """Arms the memory model predicts infeasible are pruned; the baseline always runs."""
        live = []
        for a in mine:
            why = self.feasible(a)
            if why and a is not base:
                self.res.pruned.append((a.key, why))
            else:
                live.append(a)
        return live

    def screen(self, live: list[Arm]) -> dict[str, float]:
        """1. screening: one short trial each at the top concurrency."""
        screen: dict[str, float] = {}
        for a, t in interleave(live, [0]):
            if got := self.spend("screen", a, t, [max(self.cfg.ladder)], True):
                # SLO-breaking arms are demoted, not dropped
                screen[a.key] = score(got, self.cfg)[0] or raw_throughput(got, self.cfg) * 0.5
        return screen

    def plan_and_halve(
        self, engine: str, live: list[Arm], base: Arm, screen: dict[str, float]
    ) -> tuple[list[Arm], float]:
        """2. plan the rest inside the budget, priced with this engine's own screening deploys: the
        full treatment of k challengers plus the baseline must fit (k shrinks, never below 1), the
        halving rung runs only if it can drop someone and still leaves the full treatment affordable."""
        cfg, res = self.cfg, self.res
        ranked = sorted((a for a in live if a.key in screen), key=lambda a: -screen[a.key])
        screens = [o for o in res.outcomes if o[0] == engine and o[1] == "screen"]
        per_screen = float(np.mean([o[2] for o in screens])) if screens else 0.0
        per_full = per_screen * FULL_OVER_SCREEN
        left = self.share_left(engine)
        k = cfg.top_k
        while k > 1 and (k + 1) * cfg.trials * per_full > left:
            k -= 1
        if k < cfg.top_k:
            res.notes.append(
                f"{engine}: full treatment for the top {k} (not {cfg.top_k}): {cfg.top_k + 1} arms x "
                f"{cfg.trials} trials at ~{per_full:.0f} s each would pass the {left / 60:.1f} GPU-min left"
            )
        keep = ranked[: max(k, math.ceil(len(ranked) / 2))]
        rung: dict[str, float] = {a.key: screen[a.key] for a in keep}
        if len(keep) > k:
            if (k + 1) * cfg.trials * per_full + len(keep) * per_screen <= left:
                rung = {}
                for a, t in interleave(keep, [1]):
                    if got := self.spend("halving", a, t, [max(cfg.ladder)], True):
                        rung[a.key] = (screen[a.key] + (score(got, cfg)[0] or 0.0)) / 2
            else:
                res.notes.append(
                    f"{engine}: halving rung skipped (its {len(keep)} deploys would leave too little "
                    "budget for the full treatment): finalists taken from the screening pass"
                )
        finalists = sorted((a for a in keep if a.key in rung), key=lambda a: -rung[a.key])[:k]
        if base not in finalists and base.key not in self.failed:
            finalists = [base, *finalists]
        return finalists, per_full

    def compose_round(self, engine: str, base: Arm, finalists: list[Arm], per_full: float) -> None:
        """4. round 2: compose the levers that beat the baseline, confirm against it (if affordable)."""
        cfg, res = self.cfg, self.res
        bscore, bvals = score(self.by_arm.get(base.key, []), cfg)
        winners = [
            a
            for a in finalists
            if a is not base
            and (sc := score(self.by_arm.get(a.key, []), cfg))[0] is not None
            and bscore is not None
            and (ci := ci95(sc[1])) is not None
            and (bci := ci95(bvals)) is not None
            and ci[0] > bci[1]
        ]
        if len(winners) < 2:
            return
        comp = compose(engine, winners, base.levers)
        fulls = [o[2] for o in res.outcomes if o[0] == engine and o[1] == "full"]
        need = 2 * cfg.trials * (float(np.mean(fulls)) if fulls else per_full)
        left = self.share_left(engine)
        if (why := self.feasible(comp)) is not None:
            res.notes.append(f"{engine}: {comp.name} not tried: {why}")
        elif need > left:
            res.notes.append(
                f"{engine}: {comp.name} not confirmed: its {2 * cfg.trials} deploys (~{need / 60:.1f} "
                f"GPU-min) would pass the {left / 60:.1f} GPU-min left"
            )
        else:
            for a, t in interleave([comp, base], range(cfg.trials, 2 * cfg.trials)):
                self.spend("compose", a, t, cfg.ladder, False)
            finalists.append(comp)

    def crown(self, engine: str, base: Arm, finalists: list[Arm]) -> EngineResult:
        """5. crown: the best arm with >= cfg.trials trials at every concurrency. It is crowned only if
        it beats the baseline with a 95% interval of the ratio above 1: a win inside the noise keeps
        the baseline (and says which challenger came closest)."""
        cfg, by_arm = self.cfg, self.by_arm
        scored = []
        for a in finalists:
            ms = by_arm.get(a.key, [])
            n = min(
                sum(1 for m in ms if m.concurrency == c and m.workload == w)
                for c in cfg.ladder
                for w in cfg.workloads
            )
            s, vals = score(ms, cfg)
            if n >= cfg.trials and s is not None and a.key not in self.failed:
                scored.append((a, s, vals, n))
        scored.sort(key=lambda x: -x[1])
        bscore, bvals = score(by_arm.get(base.key, []), cfg)
        top = scored[0] if scored else None
        base_entry = next((x for x in scored if x[0] is base), None)
        rc = ratio_ci(top[2], bvals) if top and bvals and top[0] is not base else None
        if top is None:
            crowned, verdict = None, "no arm completed the full treatment under the SLO"
        elif top[0] is base:
            crowned, verdict = top, "the baseline scored best"
        elif base_entry is None:
            crowned, verdict = top, "the baseline has no score under the SLO"
        elif rc is not None and rc[1][0] > 1.0:
            crowned, verdict = top, "beats the baseline: the ratio's 95% interval is above 1"
        else:
            crowned = base_entry
            verdict = f"baseline kept: the best challenger, {top[0].name}, is within the noise"
        verdicts: dict[str, WorkloadVerdict] = {}
        if top and top[0] is not base:
            for w in cfg.workloads:
                cw = workload_score(by_arm[top[0].key], cfg, w)
                bw = workload_score(by_arm.get(base.key, []), cfg, w)
                wr = ratio_ci(list(cw.by_trial.values()), list(bw.by_trial.values())) if bw.by_trial else None
                verdicts[w] = WorkloadVerdict(
                    cw.score,
                    cw.concurrency,
                    bw.score,
                    bw.concurrency,
                    wr[0] if wr else None,
                    wr[1] if wr else None,
                )
        return EngineResult(
            engine=engine,
            crowned=crowned[0] if crowned else None,
            score=crowned[1] if crowned else None,
            ci95=ci95(crowned[2]) if crowned else None,
            baseline_score=bscore,
            ratio=rc[0] if rc else None,
            ratio_ci95=rc[1] if rc else None,
            top3=[(a.name, s, n) for a, s, _v, n in scored[:3]],
            pareto=self.pareto([a for a, _s, _v, _n in scored]),
            by_workload=verdicts,
            challenger=top[0].name if top and top[0] is not base else None,
            verdict=verdict,
        )

    def pareto(self, scored: list[Arm]) -> list[tuple[str, str, int, float, float]]:
        """Per workload, the arms' (tok/s, median TPOT) points not dominated by another."""
        out = []
        for w in self.cfg.workloads:
            points = []
            for a in scored:
                for c in self.cfg.ladder:
                    ms = [m for m in self.by_arm[a.key] if m.concurrency == c and m.workload == w]
                    if ms:
                        points.append(
                            (
                                a.name,
                                c,
                                float(np.mean([m.output_tok_s for m in ms])),
                                float(np.median([m.tpot_ms for m in ms])),
                            )
                        )
            out += [(w, *p) for p in _pareto_front(points)]
        return out


def _pareto_front(points: list[tuple[str, int, float, float]]) -> list[tuple[str, int, float, float]]:
    """Points not dominated in (higher tok/s, lower median TPOT)."""
    front = [
        p
        for p in points
        if not any(q[2] >= p[2] and q[3] <= p[3] and q != p and (q[2] > p[2] or q[3] < p[3]) for q in points)
    ]
    return sorted(front, key=lambda p: p[3])
