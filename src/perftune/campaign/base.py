"""What every phase shares: the context it runs in, the gate it returns, and its table entry."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from perftune.campaign.state import CampaignState, Intent

Observer = Callable[[str], None]
Confirm = Callable[[str], bool]


# Progress events. Phases report in two ways: plain lines through `ctx.observe(str)` (what a log keeps,
# and what every observer gets), and these structured events through `ctx.progress(event)`, which only
# an observer that also has an `event` method receives (the CLI's renderers: a live display on a TTY,
# throttled plain lines in a pipe). A plain `Callable[[str], None]` observer sees exactly the lines it
# saw before events existed.


@dataclass(frozen=True)
class PhaseStart:
    n: int  # 1-based position in the PHASES table
    total: int  # rows in the PHASES table
    id: str
    name: str


@dataclass(frozen=True)
class EngineStarting:
    """Called about once a second while a deploy waits for its engine to become ready."""

    engine: str
    elapsed_s: float
    last_log_line: str


@dataclass(frozen=True)
class EngineReady:
    engine: str
    ready_s: float
    last_log_line: str


@dataclass(frozen=True)
class TrialProgress:
    cell_id: str
    trial: int  # 1-based
    trials: int
    done: int  # requests finished in this trial
    total: int
    tok_s: float  # output tokens per second so far in this trial (a live estimate, not the result)


@dataclass(frozen=True)
class TuneBudget:
    deploys: int  # new deploys so far (this one included)
    replayed: int  # deploys answered from the journal
    spent_min: float
    budget_min: float | None


Event = PhaseStart | EngineStarting | EngineReady | TrialProgress | TuneBudget


@runtime_checkable
class EventObserver(Protocol):
    """An observer that takes progress events as well as plain lines."""

    def __call__(self, message: str, /) -> None: ...

    def event(self, ev: Event, /) -> None: ...


def wants_events(observe: Observer) -> bool:
    return isinstance(observe, EventObserver)


def event_line(ev: Event) -> str:
    """One plain line for an event: what a pipe (or --json's stderr) shows. No markup, no ANSI."""
    if isinstance(ev, PhaseStart):
        return f"phase {ev.n} of {ev.total} (id {ev.id}): {ev.name}"
    if isinstance(ev, EngineStarting):
        log = f" | log: {ev.last_log_line}" if ev.last_log_line else " | log: (empty so far)"
        return f"engine {ev.engine}: starting, {ev.elapsed_s:.0f} s{log}"
    if isinstance(ev, EngineReady):
        log = f" | log: {ev.last_log_line}" if ev.last_log_line else ""
        return f"engine {ev.engine}: ready in {ev.ready_s:.1f} s{log}"
    if isinstance(ev, TrialProgress):
        pct = 100 * ev.done / ev.total if ev.total else 100.0
        return (
            f"cell {ev.cell_id}: trial {ev.trial}/{ev.trials}, {ev.done}/{ev.total} requests "
            f"({pct:.0f}%), ~{ev.tok_s:,.0f} tok/s"
        )
    budget = f" of {ev.budget_min:g}" if ev.budget_min is not None else ""
    return f"tune: {ev.deploys} deploy(s) ({ev.replayed} replayed), {ev.spent_min:.1f}{budget} GPU-min spent"


# RecordingEvaluator (perftune.tune, which must not import the campaign) reports its budget as a line:
# "tune: deploy N (M replayed): ARM, trial T, ...; X of Y GPU-min spent". Read back into an event here.
_TUNE_DEPLOY = re.compile(
    r"^tune: deploy (\d+) \((\d+) replayed\): .*; ([\d.]+)(?: of ([\d.]+))? GPU-min spent$", re.S
)


def tune_budget_of(line: str) -> TuneBudget | None:
    m = _TUNE_DEPLOY.match(line)
    if m is None:
        return None
    return TuneBudget(int(m[1]), int(m[2]), float(m[3]), float(m[4]) if m[4] is not None else None)


@dataclass
class Gate:
    status: str  # green | red
    reason: str
    headline: str = ""
    tier: str = ""
    artifacts: list[str] | None = None
    hint: str = ""  # a red gate's fix, shown with its reason
    # the phase's own GPU accounting where wall time would be wrong (phase 3 resumed from its journal:
    # replayed deploys cost nothing now but were paid for when they ran)
    gpu_minutes: float | None = None


@dataclass
class Ctx:
    run_dir: Path
    state: CampaignState
    observe: Observer

    @property
    def intent(self) -> Intent:
        return self.state.intent

    def progress(self, ev: Event) -> None:
        """A structured progress event, for observers that take them (see EventObserver)."""
        if isinstance(self.observe, EventObserver):
            self.observe.event(ev)

    def save(self) -> None:
        self.state.save(self.run_dir)

    def rel(self, p: Path) -> str:
        return str(p.relative_to(self.run_dir))


PhaseFn = Callable[[Ctx], Gate]


@dataclass(frozen=True)
class Phase:
    """One row of the campaign's phase table: registered by reference, not looked up by name."""

    id: str
    name: str
    run: PhaseFn | None  # None: not available in this version
    gate: str = ""  # what its gate checks
    needs: tuple[str, ...] = field(default=())  # earlier phases whose outputs it reads
