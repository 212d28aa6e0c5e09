from collections.abc import Iterator

import pytest

from perftune.mock.process import mock_process

TTFT_MS, ITL_MS = 150.0, 15.0


@pytest.fixture(scope="module", params=[1, 4], ids=["1tok", "4tok"])
def mock(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    with mock_process(TTFT_MS, ITL_MS, tokens_per_chunk=request.param) as url:
        yield url, request.param


@pytest.fixture(scope="module")
def mock1() -> Iterator[str]:
    with mock_process(TTFT_MS, ITL_MS, tokens_per_chunk=1, max_model_len=4096) as url:
        yield url
