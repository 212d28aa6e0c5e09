"""SLO presets and user SLOs: MLPerf's limits by model size class, the custom form, bad input."""

from pathlib import Path

import pytest

from perftune.bench.slo import (
    Slo,
    fmt_ms,
    load_presets,
    parse_params,
    preset_rows,
    resolve_slo,
    size_class,
    slo_for_model,
)
from perftune.errors import ConfigError


@pytest.mark.parametrize(
    ("total", "moe", "ttft", "tpot", "cls"),
    [
        (8.03e9, False, 2000, 100, "8b"),
        (20e9, False, 2000, 100, "8b"),
        (70.6e9, False, 2000, 200, "70b"),
        (46.7e9, True, 2000, 200, "70b"),  # Mixtral-8x7B: MLPerf gives it the 70B server limits
        (117e9, True, 2000, 200, "70b"),  # gpt-oss-120b
        (405e9, False, 6000, 175, "405b"),
        (671e9, True, 2000, 80, "r1"),  # DeepSeek-R1/V3
        (235e9, True, 2000, 80, "r1"),  # a large MoE reads per token like R1, not like dense 405B
    ],
)
def test_server_family_resolves_by_size_class(
    total: float, moe: bool, ttft: float, tpot: float, cls: str
) -> None:
    s = resolve_slo("mlperf-server", total_params=total, moe=moe)
    assert (s.ttft_ms, s.tpot_ms, s.percentile, s.size_class) == (ttft, tpot, 99, cls)
    assert s.name == f"mlperf-server-{cls}"
    assert "mlcommons/inference loadgen/mlperf.conf" in s.source


@pytest.mark.parametrize(
    ("total", "moe", "ttft", "tpot"),
    [(8e9, False, 500, 30), (70e9, False, 450, 40), (405e9, False, 4500, 80), (671e9, True, 1500, 15)],
)
def test_interactive_family_resolves_by_size_class(total: float, moe: bool, ttft: float, tpot: float) -> None:
    s = resolve_slo("mlperf-interactive", total_params=total, moe=moe)
    assert (s.ttft_ms, s.tpot_ms, s.percentile) == (ttft, tpot, 99)


def test_explicit_class_presets_need_no_model_size() -> None:
    assert resolve_slo("mlperf-server-8b").tpot_ms == 100
    assert resolve_slo("MLPerf-Interactive-70B").ttft_ms == 450
    assert (resolve_slo("mlperf-server-405b").ttft_ms, resolve_slo("mlperf-server-405b").tpot_ms) == (
        6000,
        175,
    )
    assert resolve_slo("mlperf-server-r1").tpot_ms == 80


def test_size_class_boundaries() -> None:
    assert size_class(20e9) == "8b" and size_class(20.1e9) == "70b"
    assert size_class(150e9) == "70b" and size_class(151e9) == "405b"
    assert size_class(151e9, moe=True) == "r1" and size_class(30e9, moe=True) == "70b"


def test_family_without_model_size_is_a_config_error_with_hint() -> None:
    with pytest.raises(ConfigError) as e:
        resolve_slo("mlperf-server")
    assert "size" in e.value.message and "--model-size" in e.value.hint
    assert "mlperf-server-8b" in e.value.hint


def test_custom_slo_string() -> None:
    s = resolve_slo("ttft=2000,tpot=100,p=99")
    assert (s.ttft_ms, s.tpot_ms, s.percentile, s.size_class, s.source) == (2000, 100, 99, None, "user")
    assert resolve_slo("ttft=300, tpot=25").percentile == 99  # p defaults to 99
    assert resolve_slo("ttft_ms=300,tpot_ms=25,p=p90").percentile == 90
    assert resolve_slo("tpot=25,ttft=300,p=50").name == "ttft=300,tpot=25,p=50"


@pytest.mark.parametrize(
    "text",
    [
        "ttft=2000",  # no tpot
        "ttft=2000,tpot=abc",
        "ttft=2000,tpot=-1",
        "ttft=2000,tpot=100,p=97",  # the bench has p50/p90/p95/p99 only
        "ttft=2000,tpot=100,e2e=5",
        "no-such-preset",
        "",
    ],
)
def test_bad_slo_strings_are_config_errors_with_a_hint(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve_slo(text, total_params=8e9)
    assert e.value.hint and "\n" not in e.value.message


def test_unknown_preset_hint_lists_the_presets() -> None:
    with pytest.raises(ConfigError) as e:
        resolve_slo("mlperf-sever")
    assert "unknown SLO preset 'mlperf-sever'" in e.value.message
    assert "mlperf-server" in e.value.hint and "mlperf-interactive-70b" in e.value.hint
    assert "ttft=" in e.value.hint


def test_statement_text() -> None:
    assert resolve_slo("mlperf-server-8b").statement() == "p99 TTFT <= 2 s and p99 TPOT <= 100 ms"
    assert resolve_slo("mlperf-interactive-405b").statement() == "p99 TTFT <= 4.5 s and p99 TPOT <= 80 ms"
    assert resolve_slo("ttft=250,tpot=12.5,p=95").statement() == "p95 TTFT <= 250 ms and p95 TPOT <= 12.5 ms"
    assert (fmt_ms(2310.0), fmt_ms(100.0), fmt_ms(0.85)) == ("2.31 s", "100 ms", "0.85 ms")
    s = Slo(name="x", ttft_ms=1500, tpot_ms=15, percentile=90)
    assert s.statement() == "p90 TTFT <= 1.5 s and p90 TPOT <= 15 ms"
    assert s.bench_slo() == {"ttft_ms": 1500, "tpot_ms": 15}


def test_user_preset_file_adds_presets_and_families(tmp_path: Path) -> None:
    f = tmp_path / "slo.yaml"
    f.write_text(
        "families:\n  chat: my chat tiers\n"
        "presets:\n"
        "  chat-8b: {family: chat, size_class: 8b, ttft_ms: 300, tpot_ms: 20, percentile: 95}\n"
        "  batch: {ttft_ms: 10000, tpot_ms: 150, description: offline jobs, source: team wiki}\n"
        "  mlperf-server-8b: {ttft_ms: 1, tpot_ms: 1}\n"  # a user preset wins a name clash
    )
    assert resolve_slo("batch", presets_file=f).source == "team wiki"
    s = resolve_slo("chat", total_params=8e9, presets_file=f)
    assert (s.name, s.percentile, s.ttft_ms) == ("chat-8b", 95, 300)
    assert resolve_slo("mlperf-server-8b", presets_file=f).ttft_ms == 1
    assert resolve_slo("mlperf-server-70b", presets_file=f).ttft_ms == 2000  # shipped ones stay
    with pytest.raises(ConfigError) as e:
        resolve_slo("chat", total_params=70e9, presets_file=f)  # no 70b member
    assert "70b" in e.value.message and e.value.hint
    assert {"chat", "batch"} <= {r["name"] for r in preset_rows(f)}


@pytest.mark.parametrize(
    "text",
    [
        "presets: {x: {ttft_ms: 1}}\n",  # no tpot_ms
        "presets: {x: {ttft_ms: 1, tpot_ms: 2, percentile: 97}}\n",
        "presets: {x: {ttft_ms: 1, tpot_ms: 2, family: f}}\n",  # a family member needs its class
        "presets: [1, 2]\n",
        "- just a list\n",
        "presets: {x: {ttft_ms: 1, tpot_ms: 2, colour: red}}\n",
        "presets: {x: [unclosed\n",
    ],
)
def test_bad_preset_files_are_config_errors(tmp_path: Path, text: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_presets(f)
    assert str(f) in e.value.message and e.value.hint


def test_missing_preset_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_presets(tmp_path / "nope.yaml")


def test_shipped_presets_are_the_mlperf_server_limits() -> None:
    p = load_presets().presets
    got = {n: (x.ttft_ms, x.tpot_ms, x.percentile) for n, x in p.items()}
    assert got == {
        "mlperf-server-8b": (2000, 100, 99),
        "mlperf-interactive-8b": (500, 30, 99),
        "mlperf-server-70b": (2000, 200, 99),
        "mlperf-interactive-70b": (450, 40, 99),
        "mlperf-server-405b": (6000, 175, 99),
        "mlperf-interactive-405b": (4500, 80, 99),
        "mlperf-server-r1": (2000, 80, 99),
        "mlperf-interactive-r1": (1500, 15, 99),
    }
    assert all(x.source and x.description for x in p.values())


def test_parse_params() -> None:
    assert parse_params("8b") == 8e9 and parse_params("70B") == 70e9 and parse_params("1.5t") == 1.5e12
    assert parse_params("8030261248") == 8030261248 and parse_params("671") == 671e9
    with pytest.raises(ConfigError):
        parse_params("big")


def test_slo_for_model_reads_the_size_from_a_catalog_card_or_the_served_name() -> None:
    assert slo_for_model("mlperf-server", model_card="llama-3.1-70b").tpot_ms == 200
    assert slo_for_model("mlperf-server", model_card="deepseek-v3").name == "mlperf-server-r1"  # MoE card
    assert slo_for_model("mlperf-server", served_model="llama-3.1-8b").tpot_ms == 100
    assert slo_for_model("mlperf-server", model_size="405b").tpot_ms == 175
    assert slo_for_model("mlperf-server", model_size="671b", moe=True).name == "mlperf-server-r1"
    # a served name that is not a catalog name is never looked up: the family needs a size
    with pytest.raises(ConfigError, match="depends on the model's size"):
        slo_for_model("mlperf-server", served_model="my-finetune")
    # a fixed preset or a custom SLO needs no model at all
    assert slo_for_model("ttft=1,tpot=1", served_model="my-finetune").ttft_ms == 1
