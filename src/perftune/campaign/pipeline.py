"""The campaign state machine: gated phases, pause on red, crash-safe resume, always publish.

Each phase returns a gate (green/red, reason, headline, artifacts). The pipeline never advances past
a red gate; between phases it asks `confirm` (the CLI asks on a TTY; --yes continues on green).
State is saved after every phase transition and every finished cell, atomically, so a campaign killed
with SIGKILL resumes where it was: finished cells are never re-run, and servers it had up are reaped.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from perftune.bench.slo import resolve_slo
from perftune.campaign.base import Confirm, Ctx, Gate, Observer, PhaseFn, PhaseStart, event_line
from perftune.campaign.phases import PHASE_IDS, PHASES
from perftune.campaign.publish import publish
from perftune.campaign.quantize import preflight
from perftune.campaign.report import summary_md
from perftune.campaign.specdec import preflight as spec_preflight
from perftune.campaign.state import CampaignState, Intent, PhaseRecord, new_run_id
from perftune.context import now_iso
from perftune.errors import ConfigError, Interrupted, PerftuneError, config_error_from
from perftune.models.resolve import model_card
from perftune.report.render import write_html_report
from perftune.targets.local import group_alive, stop_group
from perftune.util.atomic import write_text


def _check_phase(p: str | None, what: str) -> None:
    if p is not None and p not in PHASE_IDS:
        raise ConfigError(f"unknown phase '{p}' for {what}", hint="one of " + ", ".join(PHASE_IDS))


def with_all_phases(state: CampaignState) -> CampaignState:
    """A bundle written by an older perftune lacks the phases added since (8.3, say): they are added
    as pending, in the table's order, so a resume runs them instead of failing on a missing key."""
    if list(state.phases) != [p.id for p in PHASES]:
        old = state.phases
        state.phases = {p.id: old.get(p.id) or PhaseRecord(id=p.id, name=p.name) for p in PHASES}
    return state


def new_campaign(intent: Intent, runs_dir: Path) -> tuple[Path, CampaignState]:
    run_id = new_run_id(intent)
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    state = CampaignState(
        run_id=run_id,
        created_at=now_iso(),
        intent=intent,
        phases={p.id: PhaseRecord(id=p.id, name=p.name) for p in PHASES},
    )
    state.save(run_dir)
    return run_dir, state


def reap_orphans(state: CampaignState) -> list[int]:
    """Stop servers a killed run left up (their process groups survive the campaign process)."""

    reaped = []
    for d in state.live:
        if group_alive(d.pgid):
            stop_group(d.pgid, 10.0)
            reaped.append(d.pgid)
    state.live = []
    return reaped


def resume_command(state: CampaignState, runs_dir: Path, lake: Path | None) -> str:
    cmd = f"perftune optimize --resume {state.run_id} --runs-dir {runs_dir}"
    return cmd + (f" --lake {lake}" if lake is not None else "") + " --yes"


def _open_existing(run_id: str, runs_dir: Path) -> tuple[Path, CampaignState, IO[str]]:
    """An existing campaign's folder, its state (every phase listed) and its run lock, held."""
    run_dir = runs_dir / run_id
    if not (run_dir / "campaign.json").exists():
        raise ConfigError(
            f"no campaign {run_id} in {runs_dir}", hint="perftune campaigns list, or --runs-dir"
        )
    return run_dir, with_all_phases(CampaignState.load(run_dir)), run_lock(run_dir)


def run_profile(
    run_id: str,
    *,
    runs_dir: Path,
    update: dict[str, Any],
    observe: Observer | None = None,
    lake: Path | None = None,
    reparse: bool = False,
) -> tuple[Path, CampaignState]:
    """Phases 2 and 2.5 on an existing campaign (`perftune profile`): the options are validated like
    a fresh intent before any deploy; both phases run again (new captures, a new ledger). With
    `reparse`, no deploy: the captures' figures again from their raw artifacts, then the ledger."""
    if not reparse:
        return run_phases(
            run_id,
            runs_dir=runs_dir,
            update=update,
            phases=("2", "2.5"),
            what="profile",
            observe=observe,
            lake=lake,
        )
    run_dir, state, lock = _open_existing(run_id, runs_dir)
    try:
        if not (run_dir / "phase2" / "captures.json").exists():
            raise ConfigError(
                f"campaign {run_id} has no phase-2 captures", hint="run perftune profile RUN_ID first"
            )
        from perftune.campaign.profiling import capture_gate
        from perftune.campaign.profiling import reparse as reparse_captures

        caps = reparse_captures(Ctx(run_dir, state, observe or (lambda _m: None)))
        g = capture_gate(caps)  # phase 2's gate judged again on the figures it now has
        rec = state.phases["2"]
        rec.status = "green" if g.status == "green" else "red"
        rec.reason, rec.hint = g.reason + " (re-parsed from its artifacts)", g.hint
        state.phases["2.5"].status = "pending"
        state.save(run_dir)
    except BaseException:
        lock.close()
        raise
    return run_campaign(
        runs_dir=runs_dir,
        resume=run_id,
        start_phase="2.5",
        until="2.5",
        observe=observe,
        lake=lake,
        held_lock=lock,
    )


def run_phases(
    run_id: str,
    *,
    runs_dir: Path,
    update: dict[str, Any],
    phases: tuple[str, ...],
    what: str,
    observe: Observer | None = None,
    lake: Path | None = None,
    before: Callable[[Ctx], None] | None = None,
) -> tuple[Path, CampaignState]:
    """Some phases of an existing campaign again (`perftune profile` runs 2 and 2.5, `quantize` 4,
    `validate` 5): the options validated like a fresh intent and `before` (a refusal check) run before
    anything is written; then those phases run, in order, under the run's lock."""
    from pydantic import ValidationError

    run_dir, state, lock = _open_existing(run_id, runs_dir)
    try:
        if state.phases["0"].status != "green":
            raise ConfigError(f"campaign {run_id} has no green phase 0", hint="run perftune optimize first")
        try:
            state.intent = Intent.model_validate({**state.intent.model_dump(), **update})
        except ValidationError as e:
            raise config_error_from(e, f"bad {what} option ", hint=f"see perftune {what} --help") from None
        if before is not None:
            before(Ctx(run_dir, state, observe or (lambda _m: None)))
        for pid in phases:
            state.phases[pid].status = "pending"
        state.save(run_dir)
    except BaseException:
        lock.close()
        raise
    return run_campaign(
        runs_dir=runs_dir,
        resume=run_id,
        start_phase=phases[0],
        until=phases[-1],
        observe=observe,
        lake=lake,
        held_lock=lock,
    )


def run_tune(
    run_id: str,
    *,
    runs_dir: Path,
    update: dict[str, Any],
    observe: Observer | None = None,
    lake: Path | None = None,
) -> tuple[Path, CampaignState]:
    """Phase 3 alone on an existing campaign (`perftune tune`): the tune options are validated like a
    fresh intent, then the phase runs from its journal. `tune` stays opt-in for `optimize`: a later
    --resume does not re-run it, and a red tune does not block the campaign."""
    from pydantic import ValidationError

    run_dir = runs_dir / run_id
    state = with_all_phases(CampaignState.load(run_dir))
    lock = run_lock(run_dir)
    try:
        if state.phases["1"].status != "green":
            raise ConfigError(
                f"campaign {run_id} has no green phase 1", hint="run perftune optimize up to phase 1 first"
            )
        was = state.intent.tuning.enabled
        try:  # validated like a fresh intent: a bad workload or k stops here, before any deploy
            state.intent = Intent.model_validate({**state.intent.model_dump(), **update, "tune": True})
        except ValidationError as e:
            raise config_error_from(e, "bad tune option ", hint="see perftune tune --help") from None
        state.phases["3"].status = "pending"
        state.save(run_dir)
    except BaseException:
        lock.close()
        raise
    try:
        return run_campaign(
            runs_dir=runs_dir,
            resume=run_id,
            start_phase="3",
            until="3",
            observe=observe,
            lake=lake,
            held_lock=lock,
        )
    finally:
        st = CampaignState.load(run_dir)
        st.intent.tuning.enabled = was
        st.save(run_dir)


def _validate_new(intent: Intent) -> None:
    """Bad input fails before a run folder or a lake row exists (a typo in the model name, say)."""

    card = model_card(intent.model.path or intent.model.ref)
    if intent.slo.focus == "throughput" and intent.slo.capacity:  # phase 8.3's SLO, before any GPU time
        resolve_slo(intent.slo.capacity_slo, total_params=card.total_params, moe=card.moe is not None)


def run_campaign(
    *,
    runs_dir: Path,
    intent: Intent | None = None,
    resume: str | None = None,
    until: str | None = None,
    start_phase: str | None = None,
    skip: list[str] | None = None,
    confirm: Confirm | None = None,
    observe: Observer | None = None,
    lake: Path | None = None,
    held_lock: IO[str] | None = None,
) -> tuple[Path, CampaignState]:
    skip = skip or []
    for p in [until, start_phase, *skip]:
        _check_phase(p, "--until/--start-phase/--skip")
    if (intent is None) == (resume is None):
        raise ConfigError(
            "give a model or --resume RUN_ID", hint="perftune optimize MODEL, or --resume RUN_ID"
        )
    if resume is not None:
        run_dir = runs_dir / resume
        state = with_all_phases(CampaignState.load(run_dir))
        # a second process resuming the same run refuses, naming the first
        lock = held_lock or run_lock(run_dir)
        reaped = reap_orphans(state)
        state.save(run_dir)
        if reaped and observe is not None:
            observe(f"reaped {len(reaped)} server group(s) a stopped run left up: {reaped}")
    else:
        assert intent is not None
        _validate_new(intent)
        if "4" not in skip and (until is None or PHASE_IDS.index(until) >= PHASE_IDS.index("4")):
            preflight(intent)
        if "7" not in skip and (until is None or PHASE_IDS.index(until) >= PHASE_IDS.index("7")):
            spec_preflight(intent)
        run_dir, state = new_campaign(intent, runs_dir)
        lock = run_lock(run_dir)
    ctx = Ctx(run_dir, state, observe or (lambda _m: None))
    ids = list(PHASE_IDS)
    if start_phase is not None:
        first = ids.index(start_phase)
    else:
        done = ("green", "skipped", "not-available")
        first = next((k for k, pid in enumerate(ids) if state.phases[pid].status not in done), len(ids))
    current: PhaseRecord | None = None
    try:
        for k in range(first, len(ids)):
            pid, fn = PHASES[k].id, PHASES[k].run
            rec = current = state.phases[pid]
            if pid in skip:
                rec.status, rec.reason = "skipped", "skipped by --skip"
            elif fn is None:
                rec.status, rec.reason = "not-available", "not available in this version"
            elif pid == "3" and not ctx.intent.tuning.enabled:
                # Tuning is opt-in; a `perftune tune` that stopped red (budget, time box) does not
                # block the campaign: phase 8 goes on with the baseline, and the tune can resume.
                before = f" (the last `perftune tune` stopped: {rec.reason})" if rec.status == "red" else ""
                rec.status = "skipped"
                rec.reason = (
                    f"tuning is opt-in: optimize --tune, or perftune tune --run {state.run_id}{before}"
                )
            else:
                _run_phase(ctx, rec, fn, PhaseStart(k + 1, len(PHASES), pid, rec.name))
            ctx.save()
            write_text(run_dir / "summary.md", summary_md(state))
            if rec.status == "queued":  # a submitted job runs on: the campaign waits for it, resumably
                ctx.observe(
                    f"phase {pid}: QUEUED — {rec.reason}; the campaign is paused"
                    + f"\nresume with: {resume_command(state, runs_dir, lake)}"
                )
                break
            if rec.status == "red":
                ctx.observe(
                    f"phase {pid}: RED — {rec.reason}; the campaign is paused"
                    + (f"\nhint: {rec.hint}" if rec.hint else "")
                    + f"\nresume with: {resume_command(state, runs_dir, lake)}"
                )
                break
            if pid == until:
                break
            nxt = ids[k + 1] if k + 1 < len(ids) else None
            if nxt is not None and fn is not None and confirm is not None and not confirm(nxt):
                ctx.observe(
                    f"paused before phase {nxt}; resume with: {resume_command(state, runs_dir, lake)}"
                )
                break
        current = None
    except KeyboardInterrupt:
        # SIGINT, and SIGTERM (the CLI turns it into the same exception): the phase's own `finally`
        # blocks have torn its servers down by now; save, publish (below), and say how to go on.
        if current is not None and current.status == "running":
            current.status, current.reason = "pending", "interrupted; resume to run it again"
        ctx.save()
        raise Interrupted(
            f"campaign {state.run_id} stopped"
            + (f" in phase {current.id}" if current is not None else "")
            + "; servers torn down, finished cells kept",
            hint=f"resume with: {resume_command(state, runs_dir, lake)}",
        ) from None
    finally:
        try:
            write_text(run_dir / "summary.md", summary_md(state))
            if (run_dir / "report.html").exists():  # rendered by 8.4; refreshed with what ran after it
                try:
                    write_html_report(run_dir, campaign=state.model_dump(mode="json"))
                except PerftuneError as e:
                    ctx.observe(f"report.html not refreshed: {e.message}")
            if lake is not None:
                counts = publish(run_dir, lake)
                ctx.observe(f"published to {lake}: {counts}")
        finally:
            lock.close()
    return run_dir, state


GPU_PHASES = ("1", "3", "4", "5", "8", "8.3")  # phases whose wall time is GPU time on a real engine


def run_lock(run_dir: Path) -> IO[str]:
    """An exclusive, non-blocking lock on the run folder for as long as this process drives it: two
    processes resuming one run would deploy twice and race on campaign.json. The kernel drops the lock
    when its holder dies, so a SIGKILLed run never leaves a stale lock behind."""

    f = open(run_dir / ".lock", "a+")  # noqa: SIM115 - held open until the campaign ends
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise ConfigError(
            f"campaign {run_dir.name} is already being driven by another process (PID {holder})",
            hint="wait for it to finish or stop it (SIGINT/SIGTERM), then resume",
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _run_phase(ctx: Ctx, rec: PhaseRecord, fn: PhaseFn, start: PhaseStart) -> None:
    rec.status, rec.started_at, rec.reason = "running", now_iso(), ""
    ctx.save()
    ctx.progress(start)
    ctx.observe(event_line(start))  # every observer gets the line; an EventObserver the event too
    t0 = time.monotonic()
    try:
        gate = fn(ctx)
    except PerftuneError as e:
        gate = Gate("red", f"{e.message}" + (f" (log: {e.log_path})" if e.log_path else ""), hint=e.hint)
    except Exception as e:  # a bug in a phase: red with the error, the bundle stays resumable
        import traceback

        where = ctx.run_dir / f"phase{rec.id}" / "internal-error.txt"
        write_text(where, traceback.format_exc())
        gate = Gate(
            "red",
            f"internal error in phase {rec.id}: {type(e).__name__}: {e}",
            hint=f"a perftune bug: the traceback is in {ctx.rel(where)}; please report it",
            artifacts=[ctx.rel(where)],
        )
    real = [e for e in ctx.intent.serving.engines if e not in ("sim", "mock")]
    wall = (time.monotonic() - t0) / 60 * ctx.intent.hardware.gpus if rec.id in GPU_PHASES else 0.0
    rec.gpu_minutes = (wall if gate.gpu_minutes is None else gate.gpu_minutes) if real else 0.0
    rec.status, rec.reason, rec.headline, rec.tier = gate.status, gate.reason, gate.headline, gate.tier  # type: ignore[assignment]
    rec.artifacts = gate.artifacts or []
    rec.hint = gate.hint
    rec.finished_at = now_iso()
    ctx.observe(f"phase {rec.id}: {gate.status} after {time.monotonic() - t0:.1f} s — {gate.reason}")
