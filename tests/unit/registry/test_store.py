"""Registry files: comment preservation, append-only, concurrency, malformed input, resolution."""

import difflib
import multiprocessing as mp
from pathlib import Path

import pytest

from perftune import api
from perftune.errors import ConfigError, RegistryError
from perftune.registry.store import ENV_VAR, load_registry, parse_required_flag, resolve_registry

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "configs" / "known-good-configs.yaml"
FLAG = (
    "--additional-config|gdn_prefill_backend.*triton|crash-high-c|FlashInfer GDN prefill wedges at c>=8|"
    "vllm 0.22|docs/x.md"
)


def test_every_shipped_registry_validates() -> None:
    files = list(ROOT.glob("configs/**/*known-good*.yaml"))
    assert files
    for f in files:
        assert load_registry(f).models


def _record(reg: Path, model: str, **kw: object) -> None:
    api.known_good_record(
        model,
        registry=reg,
        slug=model.split("/")[-1],
        engine="vllm",
        required_flags=[FLAG],
        grind_frontier="value-findings.yaml -> x next_lever",
        **kw,
    )  # type: ignore[arg-type]


def test_record_appends_only_the_new_entry_byte_for_byte(tmp_path: Path) -> None:
    reg = tmp_path / "R.yaml"
    original = SHIPPED.read_text()
    reg.write_text(original)
    _record(reg, "org/new-model", arch_note="dense: 'quotes' # and a hash")
    after = reg.read_text()
    assert after.startswith(original)  # banner, comments and the existing entry untouched
    diff = [
        ln
        for ln in difflib.unified_diff(original.splitlines(), after.splitlines(), lineterm="", n=0)
        if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))
    ]
    assert all(ln.startswith("+") for ln in diff) and any("org/new-model" in ln for ln in diff)
    m = load_registry(reg).models["org/new-model"]
    assert (
        m.arch_note == "dense: 'quotes' # and a hash"
        and m.required_flags[0].match == "gdn_prefill_backend.*triton"
    )


def test_record_refuses_existing_model_and_keeps_file(tmp_path: Path) -> None:
    reg = tmp_path / "R.yaml"
    reg.write_text(SHIPPED.read_text())
    before = reg.read_bytes()
    with pytest.raises(RegistryError, match="already registered"):
        _record(reg, "Qwen/Qwen3-Next-80B-A3B-Instruct")
    assert reg.read_bytes() == before


def test_record_creates_a_new_registry_with_banner(tmp_path: Path) -> None:
    reg = tmp_path / "sub" / "new.yaml"
    _record(reg, "a/b")
    text = reg.read_text()
    assert text.startswith("# ====") and "schema: known_good_config_v1" in text
    assert list(load_registry(reg).models) == ["a/b"]


def _worker(args: tuple[str, int]) -> None:
    _record(Path(args[0]), f"org/model-{args[1]}")


def test_twenty_concurrent_records_keep_twenty_entries(tmp_path: Path) -> None:
    reg = tmp_path / "R.yaml"
    reg.write_text(SHIPPED.read_text())
    with mp.get_context("fork").Pool(8) as pool:
        pool.map(_worker, [(str(reg), i) for i in range(20)])
    models = load_registry(reg).models
    assert len(models) == 21 and all(f"org/model-{i}" in models for i in range(20))


def test_malformed_registry_names_the_line_and_is_untouched(tmp_path: Path) -> None:
    reg = tmp_path / "R.yaml"
    bad = SHIPPED.read_text().replace("    slug: qwen3-next\n", "    slug: [unclosed\n")
    reg.write_text(bad)
    with pytest.raises(RegistryError, match=r"R\.yaml:\d+: malformed YAML"):
        load_registry(reg)
    with pytest.raises(RegistryError):
        _record(reg, "x/y")
    assert reg.read_text() == bad
    wrong = SHIPPED.read_text().replace("severity: crash-high-c", "severity: scary")
    reg.write_text(wrong)
    line = next(i for i, ln in enumerate(wrong.splitlines(), 1) if "severity: scary" in ln)
    with pytest.raises(RegistryError, match=rf"R\.yaml:{line}: models\..*severity"):
        load_registry(reg)


def test_required_flag_spec_parsing() -> None:
    d = parse_required_flag("--x|a|b|boot-blocker|why|vllm 0.22|e.md")
    assert d["match"] == "a|b" and d["severity"] == "boot-blocker"
    with pytest.raises(ConfigError, match="6 fields"):
        parse_required_flag("--x|a|perf")
    with pytest.raises(ConfigError, match="severity"):
        api.known_good_record(
            "m",
            registry="/nonexistent/R.yaml",
            slug="m",
            engine="vllm",
            required_flags=["--x|a|nope|why|all|e"],
            grind_frontier="f",
        )


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    deep = tmp_path / "repo" / "a" / "b"
    deep.mkdir(parents=True)
    assert resolve_registry(cwd=deep) == tmp_path / "xdg" / "perftune" / "known-good-configs.yaml"
    (tmp_path / "repo" / "configs").mkdir()
    (tmp_path / "repo" / "configs" / "known-good-configs.yaml").write_text("x")
    assert resolve_registry(cwd=deep) == tmp_path / "repo" / "configs" / "known-good-configs.yaml"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env.yaml"))
    assert resolve_registry(cwd=deep) == tmp_path / "env.yaml"
    assert resolve_registry("explicit.yaml", cwd=deep) == Path("explicit.yaml")
