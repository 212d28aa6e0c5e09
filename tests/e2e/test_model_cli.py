"""Model intelligence commands as written in the issue, through the real CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _pt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perftune", *args], capture_output=True, text=True, timeout=300
    )


def test_inspect_advise_json_fields() -> None:
    d = json.loads(_pt("inspect", "deepseek-v3", "--json").stdout)
    assert (
        d["total_params"] > 6.7e11
        and d["active_params"] > 3.6e10
        and d["kv_bytes_per_token"]["bf16"] == 70272
    )
    t = json.loads(
        _pt(
            "advise", "tp", "qwen3-30b-a3b", "--gpu", "h100", "--dtype", "bf16", "--current-tp", "8", "--json"
        ).stdout
    )
    assert t["recommended_tp"] in (1, 2) and t["over_provisioned"] is True and t["confidence"] == "measured"
    assert t["rationale"]
    s = json.loads(
        _pt(
            "advise",
            "sol",
            "llama-3.1-8b",
            "--gpu",
            "h100",
            "--dtype",
            "bf16",
            "--batch",
            "1",
            "--measured-tpot-ms",
            "6.46",
            "--json",
        ).stdout
    )
    assert 4.7 < s["decode_step_floor_ms"] < 4.9 and 73 < s["sol_pct"] < 76 and s["bound"] == "memory"


def test_advise_defaults_to_the_checkpoint_dtype_and_takes_dtype_levers(tmp_path: Path) -> None:
    catalog = Path(__file__).resolve().parents[2] / "src/perftune/models/catalog"
    cfg = json.loads((catalog / "qwen3-32b.json").read_text())
    cfg["quantization_config"] = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    # Qwen3-32B FP8 on an H100, 8 x 4096 tokens: sized at FP8 it fits one GPU (bf16 would need two).
    t = _pt("advise", "tp", str(tmp_path), "--gpu", "h100", "--concurrency", "8", "--context", "4096")
    assert t.returncode == 0, t.stderr
    assert "recommended TP: 1" in t.stdout
    assert "weights fp8: checkpoint quantization_config: fp8 block [128, 128]" in t.stdout
    assert "KV bf16: auto: the model's dtype (bf16)" in t.stdout
    bf = json.loads(
        _pt(
            "advise", "tp", "qwen3-32b", "--gpu", "h100", "--concurrency", "8", "--context", "4096", "--json"
        ).stdout
    )
    assert bf["dtype"] == "bf16" and bf["recommended_tp"] == 2
    s = json.loads(
        _pt(
            "advise",
            "sol",
            str(tmp_path),
            "--lever",
            "kv-cache-dtype=fp8",
            "--batch",
            "8",
            "--context",
            "4096",
            "--json",
        ).stdout
    )
    assert (s["weight_dtype"], s["kv_dtype"], s["kv_source"]) == ("fp8", "fp8", "lever kv-cache-dtype=fp8")
    i = _pt("inspect", str(tmp_path))
    assert "checkpoint dtype" in i.stdout and "fp8 block [128, 128]" in i.stdout
    bad = _pt("advise", "sol", "llama-3.1-8b", "--lever", "kv-cache-dtype=fp4")
    assert bad.returncode == 2 and "unknown kv-cache-dtype lever value 'fp4'" in bad.stderr
    assert "Traceback" not in bad.stderr
    odd = _pt("advise", "tp", "llama-3.1-8b", "--lever", "quantization")
    assert odd.returncode == 2 and "bad --lever 'quantization'" in odd.stderr


def test_bad_input_is_one_line() -> None:
    r = _pt("inspect", "no-such-model")
    assert r.returncode == 2 and "unknown model 'no-such-model'" in r.stderr and "Traceback" not in r.stderr
    g = _pt("advise", "sol", "llama-3.1-8b", "--gpu", "z80")
    assert g.returncode == 2 and "unknown GPU 'z80'" in g.stderr


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen3-30b-a3b", "deepseek-v3"])
def test_synth_loads_with_transformers(name: str, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "m"
    r = _pt("model", "synth", name, "--out", str(out), "--json")
    # it says what it is doing while the tokenizer trains (stderr), and how long it took
    assert "training a byte-level BPE tokenizer" in r.stderr and "done in" in r.stderr
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    catalog = Path(__file__).resolve().parents[2] / "src/perftune/models/catalog" / f"{name}.json"
    assert cfg == json.loads(catalog.read_text())  # the exact config
    conf = transformers.AutoConfig.from_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert len(tok) == conf.vocab_size == cfg["vocab_size"]
    assert tok.bos_token_id == cfg["bos_token_id"] and tok.eos_token_id == cfg["eos_token_id"]
    assert len(tok("def f(x):\n    return x")["input_ids"]) > 3
    again = _pt("model", "synth", name, "--out", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr


def test_synth_reproduces_the_shared_dummy_llama(tmp_path: Path) -> None:
    # The GPU runs served a dummy Llama folder from shared/; its config files and tokenizer facts are
    # committed as a fixture so this test never depends on files outside the repository.
    ref = Path(__file__).resolve().parents[1] / "fixtures" / "llama-3.1-8b-dummy"
    tokenizers = pytest.importorskip("tokenizers")
    out = tmp_path / "llama-dummy"
    assert _pt("model", "synth", "llama-3.1-8b", "--out", str(out)).returncode == 0
    assert json.loads((out / "config.json").read_text()) == json.loads((ref / "config.json").read_text())
    assert json.loads((out / "generation_config.json").read_text()) == json.loads(
        (ref / "generation_config.json").read_text()
    )
    facts = json.loads((ref / "tokenizer_facts.json").read_text())
    ours = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert ours.get_vocab_size() == facts["vocab_size"] == 128256
    for tid, token in facts["id_to_token"].items():
        assert ours.id_to_token(int(tid)) == token
