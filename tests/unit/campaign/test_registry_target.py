"""Where the ratchet records a champion: a simulated one never into a real registry."""

from pathlib import Path
from typing import Any

from perftune.campaign.phases import record_registry


def test_simulated_champion_goes_beside_an_explicit_registry(tmp_path: Path) -> None:
    reg = tmp_path / "kg.yaml"
    assert record_registry(reg, explicit=True, simulated=True) == tmp_path / "sim-kg.yaml"
    assert record_registry(reg, explicit=True, simulated=False) == reg


def test_simulated_champion_without_explicit_registry_goes_to_the_sim_file(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    user = tmp_path / "config" / "perftune" / "known-good-configs.yaml"
    got = record_registry(user, explicit=False, simulated=True)
    assert got == tmp_path / "data" / "perftune" / "sim-known-good-configs.yaml"
    # a repository's reviewed registry is never appended to by a campaign that found it by walking up
    repo = tmp_path / "repo" / "configs" / "known-good-configs.yaml"
    assert record_registry(repo, explicit=False, simulated=False) == user
    assert record_registry(repo, explicit=False, simulated=True) != repo


def test_the_ratchet_names_profiling_once_every_catalog_lever_is_tried() -> None:
    from perftune.campaign.phases import NEXT_LEVERS, next_levers

    assert [o.lever for o in next_levers(set())] == [n for n, _, _ in NEXT_LEVERS]
    assert next_levers({"prefill-chunk"})[0].lever == "batch-cap"
    last = next_levers({n for n, _, _ in NEXT_LEVERS})  # raised IndexError before
    assert [o.lever for o in last] == ["profile"] and "evidence" in last[0].rationale
