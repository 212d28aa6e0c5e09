"""The known-good commands as written in the issue, through the real CLI, with exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
MODEL = "Qwen/Qwen3-Next-80B-A3B-Instruct"


def _pt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perftune", *args], capture_output=True, text=True, timeout=60
    )


def test_record_check_validate_exit_codes(tmp_path: Path) -> None:
    reg = str(tmp_path / "R.yaml")
    r = _pt(
        "known-good",
        "record",
        "--registry",
        reg,
        "--model",
        MODEL,
        "--slug",
        "qwen3-next",
        "--engine",
        "vllm",
        "--required-flag",
        "--additional-config|gdn_prefill_backend.*triton|crash-high-c|FlashInfer GDN prefill "
        "wedges at c>=8|vllm 0.22|docs/x.md",
        "--grind-frontier",
        "value-findings.yaml -> qwen3-next next_lever",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["recorded"] == MODEL
    bad = _pt(
        "known-good",
        "check",
        "--registry",
        reg,
        "--model",
        MODEL,
        "--serve-args",
        f"vllm serve {MODEL} -tp 4",
        "--json",
    )
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["verdict"] == "fail" and doc["missing_required"][0]["flag"] == "--additional-config"
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(
        "kind: Pod\nspec:\n  containers:\n    - image: vllm/vllm-openai:v0.22.0\n"
        f"      command: [vllm, serve, {MODEL}]\n"
        "      args: ['--additional-config', '{\"gdn_prefill_backend\": \"triton\"}']\n"
    )
    ok = _pt(
        "known-good", "check", "--registry", reg, "--model", MODEL, "--deploy-file", str(deploy), "--json"
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["verdict"] == "pass"
    assert _pt("known-good", "validate", "--registry", reg).returncode == 0
    again = _pt(
        "known-good",
        "record",
        "--registry",
        reg,
        "--model",
        MODEL,
        "--slug",
        "q",
        "--engine",
        "vllm",
        "--grind-frontier",
        "x",
    )
    assert again.returncode == 3 and "already registered" in again.stderr and "hint:" in again.stderr
    Path(reg).write_text("schema: known_good_config_v1\nmodels:\n  m: {slug: [\n")
    broken = _pt("known-good", "validate", "--registry", reg)
    assert broken.returncode == 3 and "R.yaml:" in broken.stderr and "Traceback" not in broken.stderr
    missing = _pt(
        "known-good", "check", "--registry", reg, "--serve-args", "vllm serve m", "--deploy-file", "x"
    )
    assert missing.returncode == 2
