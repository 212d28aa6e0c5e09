"""The layer rule is checked by import-linter (scripts/check runs `lint-imports`): it passes on the
tree, and a deliberate violation in a copy of the package fails it, naming the broken contract."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lint(pythonpath: Path) -> subprocess.CompletedProcess[str]:
    lint = shutil.which("lint-imports") or pytest.skip("import-linter is not installed (dev extra)")
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [lint, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_the_tree_keeps_every_contract() -> None:
    r = _lint(ROOT / "src")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "4 kept, 0 broken" in r.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "broken"),
    [
        ("campaign/cells.py", "import perftune.api", "the campaign never imports the facade"),
        ("tune/search.py", "import perftune.campaign.cells", "the tuner is a pure search"),
        ("engines/adapters.py", "import perftune.sim.adapter", "the two plug-in axes"),
    ],
)
def test_a_deliberate_violation_fails_it(tmp_path: Path, module: str, bad_import: str, broken: str) -> None:
    copy = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "perftune", copy / "perftune", ignore=shutil.ignore_patterns("__pycache__")
    )
    f = copy / "perftune" / module
    f.write_text(f.read_text() + f"\n{bad_import}  # deliberate violation\n")
    r = _lint(copy)
    assert r.returncode != 0
    assert f"{broken}" in r.stdout and "BROKEN" in r.stdout
