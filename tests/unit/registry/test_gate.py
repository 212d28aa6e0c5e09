from pathlib import Path

import pytest

from perftune.errors import GateError, RegistryError
from perftune.registry.gate import enforce_known_good

ROOT = Path(__file__).resolve().parents[3]
REG = ROOT / "configs" / "known-good-configs.yaml"
MODEL = "Qwen/Qwen3-Next-80B-A3B-Instruct"


def test_gate_refuses_a_deploy_that_drops_a_required_flag() -> None:
    with pytest.raises(GateError, match="--additional-config"):
        enforce_known_good(MODEL, "vllm", [MODEL, "-tp", "4"], engine_version="0.22.0", registry=REG)
    ok = enforce_known_good(
        MODEL,
        "vllm",
        [MODEL, "--additional-config", '{"gdn_prefill_backend": "triton"}'],
        engine_version="0.22.0",
        registry=REG,
    )
    assert ok.verdict == "pass"


def test_gate_with_no_registry_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERFTUNE_KNOWN_GOOD_REGISTRY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert enforce_known_good("m", "vllm", ["m"]).verdict == "pass"
    with pytest.raises(GateError):
        enforce_known_good("m", "vllm", ["m"], require_registered=True)
    with pytest.raises(RegistryError, match="not found"):
        enforce_known_good("m", "vllm", ["m"], registry=tmp_path / "missing.yaml")
