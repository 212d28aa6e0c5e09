"""One registry resolution order, and the shipped entries enforced whichever registry it lands on."""

import tomllib
from pathlib import Path

import pytest

from perftune import api
from perftune.errors import GateError, RegistryError
from perftune.lake.db import default_lake
from perftune.registry.gate import enforce_known_good
from perftune.registry.store import (
    BANNER,
    ENV_VAR,
    SHIPPED_REGISTRY,
    is_shipped_or_repo_registry,
    load_for_check,
    load_registry,
    load_shipped,
    resolve_registry,
    sim_registry_path,
    user_registry_path,
)

ROOT = Path(__file__).resolve().parents[3]
REPO_REG = ROOT / "configs" / "known-good-configs.yaml"
MODEL = "Qwen/Qwen3-Next-80B-A3B-Instruct"
GDN = '{"gdn_prefill_backend": "triton"}'


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME, no XDG overrides, no env registry, cwd in a folder with no configs/ above it."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", ENV_VAR):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work" / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert not any((d / "configs" / "known-good-configs.yaml").exists() for d in (work, *work.parents))
    return h


def test_resolution_order_flag_env_walk_up_user(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = home / ".config" / "perftune" / "known-good-configs.yaml"
    assert user_registry_path() == user
    assert resolve_registry() == user  # nothing else: the per-user file
    repo = home.parent / "work" / "configs" / "known-good-configs.yaml"
    repo.parent.mkdir()
    repo.write_text(BANNER)
    assert resolve_registry() == repo  # found walking up from the current folder
    monkeypatch.setenv(ENV_VAR, str(home / "env.yaml"))
    assert resolve_registry() == home / "env.yaml"  # the env var beats the walk
    assert resolve_registry(home / "flag.yaml") == home / "flag.yaml"  # the flag beats everything


def test_walk_up_ignores_a_folder_named_like_the_registry(home: Path) -> None:
    (home.parent / "work" / "configs" / "known-good-configs.yaml").mkdir(parents=True)
    assert resolve_registry() == user_registry_path()


def test_xdg_config_home_moves_the_user_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    assert resolve_registry() == home / "xdg" / "perftune" / "known-good-configs.yaml"


def test_validate_record_and_check_resolve_the_same_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = home.parent / "work" / "configs" / "known-good-configs.yaml"
    repo.parent.mkdir()
    repo.write_text(REPO_REG.read_text())
    path, n = api.known_good_validate()
    assert path == repo and n == 1
    path, _ = api.known_good_record("org/m", slug="m", engine="vllm", required_flags=[], grind_frontier="f")
    assert path == repo and "org/m" in load_registry(repo).models


def test_sim_registry_is_per_user_beside_the_lake(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sim_registry_path() == home / ".local" / "share" / "perftune" / "sim-known-good-configs.yaml"
    assert sim_registry_path().parent == default_lake().parent
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    assert sim_registry_path() == home / "data" / "perftune" / "sim-known-good-configs.yaml"
    assert sim_registry_path() != user_registry_path()


def test_shipped_or_repo_registry(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_shipped_or_repo_registry(SHIPPED_REGISTRY)
    assert is_shipped_or_repo_registry(REPO_REG)
    assert is_shipped_or_repo_registry(home / "clone" / "configs" / "known-good-configs.yaml")
    link = home / "link.yaml"
    link.symlink_to(REPO_REG)
    assert is_shipped_or_repo_registry(link)  # a symlink to the repo's file is the repo's file
    assert not is_shipped_or_repo_registry(user_registry_path())
    assert not is_shipped_or_repo_registry(sim_registry_path())
    assert not is_shipped_or_repo_registry(home / "R.yaml")
    monkeypatch.chdir(ROOT)
    assert is_shipped_or_repo_registry(resolve_registry())  # inside the repo the walk finds its file


def test_shipped_copy_matches_the_repository_registry() -> None:
    assert SHIPPED_REGISTRY.read_text() == REPO_REG.read_text(), "copy configs/known-good-configs.yaml"
    assert MODEL in load_shipped().models


def test_shipped_copy_is_package_data() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["perftune"]
    rel = SHIPPED_REGISTRY.relative_to(ROOT / "src" / "perftune")
    assert any(rel.match(p) for p in patterns)


def test_shipped_rule_enforced_with_an_empty_user_registry(home: Path) -> None:
    user = user_registry_path()
    user.parent.mkdir(parents=True)
    user.write_text(BANNER)  # what `optimize` creates on first use
    assert resolve_registry() == user and not load_registry(user).models
    with pytest.raises(GateError, match=r"--additional-config.*shipped with perftune"):
        enforce_known_good(MODEL, "vllm", [MODEL, "-tp", "4"], engine_version="0.22.0")
    with pytest.raises(GateError, match="--additional-config"):  # as the campaign calls it: explicit
        enforce_known_good(MODEL, "vllm", [MODEL, "-tp", "4"], engine_version="0.22.0", registry=user)
    ok = enforce_known_good(MODEL, "vllm", [MODEL, "--additional-config", GDN], engine_version="0.22.0")
    assert ok.verdict == "pass" and ok.registered
    # version-aware as ever: the shipped rule is for vLLM 0.22
    assert enforce_known_good(MODEL, "vllm", [MODEL], engine_version="0.26.0").verdict == "pass"


def test_shipped_rule_enforced_with_no_registry_file_at_all(home: Path) -> None:
    assert not resolve_registry().exists()
    with pytest.raises(GateError, match="--additional-config"):
        enforce_known_good(MODEL, "vllm", [MODEL, "-tp", "4"], engine_version="0.22.0")
    assert enforce_known_good("org/other", "vllm", ["org/other"]).verdict == "pass"


def test_users_entry_for_the_same_model_wins(home: Path) -> None:
    reg = home / "R.yaml"
    api.known_good_record(
        MODEL,
        registry=reg,
        slug="qwen3-next",
        engine="vllm",
        required_flags=["--max-num-seqs|^\\d+$|crash-high-c|fixed upstream; cap instead|vllm 0.22|docs/y.md"],
        grind_frontier="f",
    )
    merged = load_for_check(reg, must_exist=True)
    assert [f.flag for f in merged.models[MODEL].required_flags] == ["--max-num-seqs"]
    # the shipped --additional-config rule no longer applies; the user's own rule does
    assert enforce_known_good(
        MODEL, "vllm", [MODEL, "--max-num-seqs", "64"], engine_version="0.22.0", registry=reg
    ).satisfied
    with pytest.raises(GateError, match="--max-num-seqs"):
        enforce_known_good(
            MODEL, "vllm", [MODEL, "--additional-config", GDN], engine_version="0.22.0", registry=reg
        )


def test_user_entries_and_shipped_entries_both_apply(home: Path) -> None:
    reg = home / "R.yaml"
    api.known_good_record(
        "org/m",
        registry=reg,
        slug="m",
        engine="vllm",
        required_flags=["--enforce-eager||boot-blocker|graphs crash|all|docs/z.md"],
        grind_frontier="f",
    )
    merged = load_for_check(reg, must_exist=True)
    assert set(merged.models) == {MODEL, "org/m"}
    with pytest.raises(GateError, match="--enforce-eager"):
        enforce_known_good("org/m", "vllm", ["org/m"], registry=reg)
    with pytest.raises(GateError, match="--additional-config"):
        enforce_known_good(MODEL, "vllm", [MODEL], engine_version="0.22.0", registry=reg)
    assert load_registry(reg).models.keys() == {"org/m"}  # merging never writes shipped entries back


def test_an_explicit_registry_must_exist(home: Path) -> None:
    with pytest.raises(RegistryError, match="not found"):
        load_for_check(home / "missing.yaml", must_exist=True)
    assert MODEL in load_for_check(home / "missing.yaml", must_exist=False).models
