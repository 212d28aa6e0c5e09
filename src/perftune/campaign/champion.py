"""Phase 8.4: pick the champion across engines and configs. Pure.

Throughput focus: configs are compared at equal SLO capacity: each config's output tok/s per GPU at
its own SLO capacity point (phase 8.3: the highest concurrency whose p99 TTFT and TPOT meet the
capacity SLO) on the primary (random) workload. Without capacity results for every config (phase 8.3
off or not run), the best output tok/s per GPU of any ladder concurrency whose cell meets the cell SLO
(mean TTFT, median TPOT), and the selection says so. Latency focus: the lowest median TPOT at the
target concurrency. Candidates whose 95% intervals overlap the leader's are tied; a tie goes to fewer
GPUs, then to the simpler config (fewer levers changed). The crown is VERDICT only when every gate a
production claim needs is green; otherwise DRAFT with each failing gate named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from perftune.campaign.state import SUITE, CapacityFact, Cell, Intent, Ranked

PRIMARY = "random"


class ChampionSelection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    focus: str
    metric: str
    ranking: list[Ranked]
    champion: Ranked | None
    tier: str
    failing_gates: list[str]
    notes: list[str]


def _overlap(a: list[float] | None, b: list[float] | None) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def _candidate(cells: Sequence[Cell], intent: Intent, cap: CapacityFact | None = None) -> Ranked:
    c0 = cells[0]

    def ranked(
        cell: Cell | None,
        value: float | None = None,
        ci: list[float] | None = None,
        reason: str = "",
        concurrency: int | None = None,
        load: str = "",
    ) -> Ranked:
        return Ranked(
            engine=c0.engine,
            config=c0.config,
            gpus=c0.gpus,
            levers=c0.levers,
            prefix_cache=c0.prefix_cache,
            cell_id=cell.cell_id if cell else None,
            value=value,
            ci95=ci,
            concurrency=concurrency if load else (cell.concurrency if cell else None),
            eligible=cell is not None,
            reason=reason,
            load=load or (f"c={cell.concurrency}" if cell else ""),
        )

    primary = [c for c in cells if c.workload == PRIMARY]
    if not primary:
        return ranked(None, reason="no random-workload cell")
    if intent.slo.focus == "throughput" and cap is not None:
        if cap.capacity is None or cap.output_tok_s is None:
            return ranked(None, reason=f"SLO capacity: {cap.statement}")
        # the suite cell nearest below a closed-loop capacity point (an open loop: the config's best
        # random cell) is the cell of reference; the value is the capacity point's own (its folder)
        below = [c for c in primary if cap.mode != "closed" or c.concurrency <= cap.capacity] or primary
        near = max(below, key=lambda c: c.concurrency if cap.mode == "closed" else c.output_tok_s)
        ci = [x / c0.gpus for x in cap.output_tok_s_ci95] if cap.output_tok_s_ci95 else None
        return ranked(
            near,
            cap.output_tok_s / c0.gpus,
            ci,
            reason=cap.statement,
            concurrency=int(cap.capacity) if cap.mode == "closed" else None,
            load=f"c={int(cap.capacity)}" if cap.mode == "closed" else f"{cap.capacity:g} req/s",
        )
    if intent.slo.focus == "throughput":
        ok = [
            c
            for c in primary
            if (c.ttft_mean_ms or 0) <= intent.slo.ttft_ms and (c.tpot_median_ms or 0) <= intent.slo.tpot_ms
        ]
        if not ok:
            return ranked(
                None,
                reason=f"no concurrency meets the SLO (TTFT <= {intent.slo.ttft_ms} ms, "
                f"median TPOT <= {intent.slo.tpot_ms} ms)",
            )
        best = max(ok, key=lambda c: c.output_tok_s / c.gpus)
        ci = [x / best.gpus for x in best.output_tok_s_ci95] if best.output_tok_s_ci95 else None
        return ranked(best, best.output_tok_s / best.gpus, ci)
    at = [c for c in primary if c.concurrency <= intent.slo.target_concurrency]
    cell = max(at, key=lambda c: c.concurrency) if at else None
    if cell is None or cell.tpot_median_ms is None:
        return ranked(None, reason=f"no cell at concurrency <= {intent.slo.target_concurrency}")
    return ranked(cell, cell.tpot_median_ms, cell.tpot_ci95)


def select_champion(
    cells: Sequence[Cell],
    intent: Intent,
    gates: dict[str, bool],
    capacity: Mapping[str, CapacityFact] | None = None,
) -> ChampionSelection:
    """`gates`: production gates by name -> passed (full suite, accuracy, byte-grounded SoL, ...).
    `capacity`: phase 8.3's SLO capacity by 'engine/config'; used (throughput focus) only when every
    config has one, so all candidates are compared the same way."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.engine, c.config), []).append(c)
    higher_better = intent.slo.focus == "throughput"
    caps = capacity or {}
    by_capacity = higher_better and bool(groups) and all(f"{e}/{n}" in caps for e, n in groups)
    notes: list[str] = []
    if higher_better and caps and not by_capacity:
        notes.append("SLO capacity missing for some config(s): every config compared on the ladder instead")
    cands = [
        _candidate(
            sorted(g, key=lambda c: c.concurrency), intent, caps.get(f"{e}/{n}") if by_capacity else None
        )
        for (e, n), g in groups.items()
    ]
    eligible = [r for r in cands if r.eligible and r.value is not None]
    eligible.sort(key=lambda r: -(r.value or 0) if higher_better else (r.value or 0))
    champion = None
    if eligible:
        leader = eligible[0]
        tied = [r for r in eligible if r is leader or _overlap(r.ci95, leader.ci95)]
        for r in tied:
            r.tied_with_leader = len(tied) > 1
        champion = min(tied, key=lambda r: (r.gpus, len(r.levers), eligible.index(r)))
        if len(tied) > 1:
            notes.append(
                f"{len(tied)} candidates tied with the leader (95% intervals overlap); "
                "crowned by fewer GPUs, then the simpler config"
            )
    failing = [name for name, ok in gates.items() if not ok]
    states = {r.engine: r.prefix_cache for r in eligible}
    if intent.slo.focus == "throughput" and len(set(states.values())) > 1:
        failing.append(
            "prefix caching differs across engines: " + ", ".join(f"{e}={s}" for e, s in states.items())
        )
    if champion is None:
        failing.append("no eligible candidate")
    ranking = eligible + [r for r in cands if r not in eligible]
    return ChampionSelection(
        focus=intent.slo.focus,
        metric=(
            "output tok/s per GPU at SLO capacity ("
            + next(iter(caps.values())).slo
            + "; random workload, "
            + ("closed loop" if next(iter(caps.values())).mode == "closed" else "open loop, Poisson")
            + ")"
            if by_capacity
            else "output tok/s per GPU under the SLO (random workload)"
        )
        if higher_better
        else f"median TPOT ms at concurrency {intent.slo.target_concurrency} (random workload)",
        ranking=ranking,
        champion=champion,
        tier="VERDICT" if not failing else "DRAFT",
        failing_gates=failing,
        notes=notes,
    )


def production_gates(
    cells: Sequence[Cell], phase_status: dict[str, str], accuracy: Mapping[str, bool] | None = None
) -> dict[str, bool]:
    """The gates a VERDICT champion needs, each True when passed. A failing gate's name says why it
    fails (CHAMPION.md lists the names under "Failing gates"), a passing one names only the gate."""

    def gate(label: str, ok: bool, why: str) -> tuple[str, bool]:
        return (label if ok else f"{label}: {why}"), ok

    def phase(pid: str) -> tuple[bool, str]:
        st = phase_status.get(pid, "pending")
        why = {"not-available": "not available in this version", "skipped": "skipped"}.get(st, st)
        return st == "green", f"phase {pid} is {why}"

    ran = {c.workload for c in cells}
    acc_ok, acc_why = phase("5")
    if acc_ok:
        # the evidence, not the phase's colour: every weight variant a cell served passed phase 5
        served = sorted({c.weights for c in cells})
        unproven = [w for w in served if not (accuracy or {}).get(w)]
        if accuracy is None:
            acc_ok, acc_why = False, "phase 5 left no accuracy evidence (phase5/accuracy.json)"
        elif unproven:
            acc_ok, acc_why = False, "no passing accuracy evidence for weights " + ", ".join(unproven)
    missing = [w for w in SUITE if w not in ran]
    sim = sum(1 for c in cells if c.simulated)
    few = sum(1 for c in cells if c.trials < 3)
    # Byte-grounded: every suite cell's %SoL rests on DRAM counters read in each of its trials (L3
    # GPM, or L4 ncu), not only on the roofline's analytical bytes.
    analytical = [c for c in cells if not c.sol_rigor.startswith(("L3", "L4"))]
    return dict(
        [
            gate(f"full workload suite ({', '.join(SUITE)})", not missing, "missing " + ", ".join(missing)),
            gate("accuracy (phase 5)", acc_ok, acc_why),
            gate(
                "byte-grounded %SoL (DRAM-bandwidth counters)",
                not analytical and bool(cells),
                f"{len(analytical)} of {len(cells)} cell(s) analytical only (no GPM DRAM counters in every "
                "trial: no NVML GPM here, a remote server, or a simulated engine)",
            ),
            gate(">= 3 trials in every cell", few == 0 and bool(cells), f"{few} cell(s) with fewer"),
            gate("measured on real engines", sim == 0, f"{sim} of {len(cells)} cell(s) SIMULATED"),
        ]
    )
