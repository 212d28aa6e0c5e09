"""The short fault-injection run (the long one is `python benchmarks/fault_injection.py --kills 30`):
`optimize` killed (SIGKILL/SIGTERM) at seeded random moments and resumed loses nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fault_injection.py"


def test_kills_at_random_moments_lose_nothing() -> None:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--kills", "3", "--per-campaign", "3", "--span-s", "12", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    total = json.loads(r.stdout.strip().splitlines()[-1])
    assert total["kills"] == 3 and total["complete"] == total["campaigns"] >= 1
    assert (total["lost"], total["duplicated"], total["orphans"], total["half_written"]) == (0, 0, 0, 0)
    assert total["rerun"] == 0 and total["cells"] == 5 * total["campaigns"]
