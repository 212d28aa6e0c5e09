"""A bundle written before phase 8.3 existed loads, and resuming it would run the new phase."""

from pathlib import Path

from perftune.campaign.phases import PHASE_IDS
from perftune.campaign.pipeline import with_all_phases
from perftune.campaign.state import CampaignState

OLD = next(Path(__file__).parents[3].glob("benchmarks/results/2026-11-23-h100-vllm-0.26.0-tune/campaign/*/"))


def test_an_older_bundle_gets_the_new_phases_as_pending_in_table_order() -> None:
    raw = CampaignState.load(OLD)
    assert "8.3" not in raw.phases  # written before phase 8.3 existed
    before = {k: v.status for k, v in raw.phases.items()}
    st = with_all_phases(raw)
    assert list(st.phases) == PHASE_IDS and st.phases["8.3"].status == "pending"
    assert all(st.phases[k].status == v for k, v in before.items())  # nothing it had is changed
