from collections.abc import Iterator
from pathlib import Path

import pytest

from perftune.campaign.state import Intent
from perftune.mock.process import mock_process

# At c=256 the load moves in synchronized waves; on a 2-core host the mock's and the client's own Python work
# add ~1-3 ms absolute to TTFT, so the 2% bound of the acceptance test needs a TTFT well above 150 ms.
TTFT_MS, ITL_MS = 250.0, 15.0


@pytest.fixture(scope="module", params=[1, 4], ids=["1tok", "4tok"])
def mock(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    with mock_process(TTFT_MS, ITL_MS, tokens_per_chunk=request.param) as url:
        yield url, request.param


@pytest.fixture(scope="module")
def mock1() -> Iterator[str]:
    with mock_process(TTFT_MS, ITL_MS, tokens_per_chunk=1, max_model_len=4096) as url:
        yield url


def small_campaign(tmp: Path, **kw: object) -> Intent:
    """A simulator campaign small enough for CI: 256/32 prompts, ladder 4/8, 3 trials, files in tmp."""
    base: dict[str, object] = {
        "model": "llama-3.1-8b",
        "engines": ["sim"],
        "workloads": ["random", "prefix"],
        "ladder": [4, 8],
        "isl": 256,
        "osl": 32,
        "trials": 3,
        "baseline_concurrency": 4,
        "capacity": False,  # phase 8.3 has its own tests (test_campaign.py); it adds a search per config
        "registry": str(tmp / "kg.yaml"),
        "findings": str(tmp / "findings.yaml"),
    }
    return Intent.model_validate({**base, **kw})
