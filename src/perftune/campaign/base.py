"""What every phase shares: the context it runs in, the gate it returns, and its table entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from perftune.campaign.state import CampaignState, Intent

Observer = Callable[[str], None]
Confirm = Callable[[str], bool]


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
