"""Speculative decoding as levers: every method x engine translated (or refused before launch with the
methods the engine runs), and acceptance read from an engine's counters."""

from __future__ import annotations

import json

import pytest

from perftune.errors import ConfigError
from perftune.serving.levers import describe, translate
from perftune.serving.specdec import METHODS, SUPPORT, iid_profile, tokens_per_step
from perftune.telemetry.prom import parse_totals, spec_figures

VERSIONS = {"vllm": "0.26.0", "sglang": "0.5.16", "llamacpp": "0.3.36"}
DRAFT = {"draft-model": "/m/draft", "eagle": "/m/eagle", "eagle3": "/m/eagle3"}


def levers(method: str, k: int = 3) -> dict[str, object]:
    out: dict[str, object] = {"spec-method": method, "spec-k": k}
    if method in DRAFT:
        out["spec-draft-model"] = DRAFT[method]
    return out


EXPECTED = {
    ("vllm", "ngram"): {"method": "ngram", "num_speculative_tokens": 3},
    ("vllm", "draft-model"): {"method": "draft_model", "num_speculative_tokens": 3, "model": "/m/draft"},
    ("vllm", "eagle"): {"method": "eagle", "num_speculative_tokens": 3, "model": "/m/eagle"},
    ("vllm", "eagle3"): {"method": "eagle3", "num_speculative_tokens": 3, "model": "/m/eagle3"},
    ("vllm", "mtp"): {"method": "mtp", "num_speculative_tokens": 3},
    ("sglang", "ngram"): ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", "4"],
    ("sglang", "draft-model"): ["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path",
                                "/m/draft", "--speculative-num-steps", "3", "--speculative-eagle-topk", "1",
                                "--speculative-num-draft-tokens", "4"],
    ("sglang", "eagle"): ["--speculative-algorithm", "EAGLE", "--speculative-draft-model-path", "/m/eagle",
                          "--speculative-num-steps", "3", "--speculative-eagle-topk", "1",
                          "--speculative-num-draft-tokens", "4"],
    ("sglang", "eagle3"): ["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path",
                           "/m/eagle3", "--speculative-num-steps", "3", "--speculative-eagle-topk", "1",
                           "--speculative-num-draft-tokens", "4"],
    ("sglang", "mtp"): ["--speculative-algorithm", "NEXTN", "--speculative-num-steps", "3",
                        "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"],
    ("llamacpp", "ngram"): ["--draft_model", "prompt-lookup-decoding", "--draft_model_num_pred_tokens", "3"],
}  # fmt: skip


@pytest.mark.parametrize("engine", ["vllm", "sglang", "llamacpp"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_every_engine(engine: str, method: str) -> None:
    want = EXPECTED.get((engine, method))
    if want is None:  # the engine cannot run it: refused before launch, naming what it can run
        with pytest.raises(ConfigError) as e:
            translate(levers(method), engine, VERSIONS[engine])
        assert f"spec-method={method} is not supported by {engine}" in e.value.message
        assert e.value.hint == f"{engine} {VERSIONS[engine]} runs: {', '.join(SUPPORT[engine])}"
        return
    argv = translate(levers(method), engine, VERSIONS[engine])
    if engine == "vllm":
        assert argv[0] == "--speculative-config" and len(argv) == 2 and json.loads(argv[1]) == want
    else:
        assert argv == want


def test_vllm_knobs_merge_into_one_json_and_other_levers_keep_their_flags() -> None:
    argv = translate(
        {"batch-cap": 64, "spec-method": "ngram", "spec-k": "5", "spec-ngram-min": 2, "spec-ngram-max": 4},
        "vllm",
        "0.26.0",
    )
    assert argv[:2] == ["--max-num-seqs", "64"]
    assert json.loads(argv[argv.index("--speculative-config") + 1]) == {
        "method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2, "prompt_lookup_max": 4,
    }  # fmt: skip


NGRAM = {"spec-method": "ngram"}
BAD = [
    ({"spec-k": 3}, "vllm", None, "spec-k set without spec-method"),
    ({"spec-method": "eagle3"}, "vllm", None, "spec-method=eagle3 needs a draft"),
    ({**NGRAM, "spec-draft-model": "/x"}, "vllm", None, "spec-method=ngram has no spec-draft-model"),
    (
        {**NGRAM, "spec-ngram-min": 5, "spec-ngram-max": 2},
        "vllm",
        None,
        "spec-ngram-min 5 > spec-ngram-max 2",
    ),
    ({**NGRAM, "spec-ngram-max": 4}, "sglang", "0.5.16", "lever spec-ngram-max is not supported by sglang"),
    ({**NGRAM, "spec-ngram-max": 4}, "llamacpp", "0.3.36", "no prompt-lookup window"),
    (
        {"spec-method": "eagle", "spec-draft-model": "/x", "spec-eagle-topk": 4},
        "vllm",
        "0.26.0",
        "spec-eagle-topk is not supported by vllm",
    ),
    (
        {"spec-method": "mtp"},
        "vllm",
        "0.9.0",
        "spec-method=mtp is not supported by vllm 0.9.0 (needs vllm >=0.10)",
    ),
    ({**NGRAM, "spec-k": 0}, "vllm", None, "spec-k=0 is out of range"),
    ({"spec-method": "medusa"}, "vllm", None, "not one of ngram, draft-model, eagle, eagle3, mtp"),
]


@pytest.mark.parametrize(("lv", "engine", "version", "message"), BAD)
def test_bad_spec_levers_fail_before_launch(
    lv: dict[str, object], engine: str, version: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=None) as e:
        translate(lv, engine, version)
    assert message in e.value.message and e.value.hint


def test_sglang_tree_draft_verifies_k_times_topk() -> None:
    argv = translate(
        {"spec-method": "eagle3", "spec-k": 3, "spec-draft-model": "/h", "spec-eagle-topk": 4},
        "sglang",
        "0.5.16",
    )
    assert argv[argv.index("--speculative-eagle-topk") + 1] == "4"
    assert argv[argv.index("--speculative-num-draft-tokens") + 1] == "12"


def test_the_catalog_lists_the_spec_levers_per_engine() -> None:
    rows = {r["lever"]: r for r in describe()}
    assert rows["spec-method"]["llamacpp"].startswith("--draft_model prompt-lookup-decoding")
    assert rows["spec-k"]["vllm"].startswith("--speculative-config")
    assert rows["spec-eagle-topk"]["vllm"] == "not supported"


# ---------------------------------------------------------------- acceptance from counters

# vLLM 0.26.0's spec-decode counters (vllm/v1/spec_decode/metrics.py), in the exposition format: a
# constructed pair of scrapes around a window of 100 drafts of K=3 (GPU-recorded ones are the
# contract suite's job once recorded).
VLLM_BEFORE = """# TYPE vllm:spec_decode_num_drafts counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 10.0
# TYPE vllm:spec_decode_num_draft_tokens counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 30.0
# TYPE vllm:spec_decode_num_accepted_tokens counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 12.0
# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 6.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 4.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 2.0
"""
VLLM_AFTER = (
    VLLM_BEFORE.replace("} 10.0", "} 110.0")
    .replace("} 30.0", "} 330.0")
    .replace("} 12.0", "} 162.0")
    .replace('"0"} 6.0', '"0"} 76.0')
    .replace('"1"} 4.0', '"1"} 54.0')
    .replace('"2"} 2.0', '"2"} 32.0')
)


def test_vllm_acceptance_is_the_counters_delta_over_the_trial() -> None:
    f = spec_figures(parse_totals(VLLM_BEFORE), parse_totals(VLLM_AFTER))
    assert f is not None and f.source == "vllm counters"
    assert (f.drafts, f.draft_tokens, f.accepted) == (100.0, 300.0, 150.0)
    assert f.accept_rate == pytest.approx(0.5) and f.accept_length == pytest.approx(2.5)
    assert f.per_pos == pytest.approx([0.7, 0.5, 0.3])
    assert tokens_per_step(f.per_pos) == pytest.approx(f.accept_length)  # the same figure two ways


def test_a_trial_without_a_draft_says_so() -> None:
    f = spec_figures(parse_totals(VLLM_BEFORE), parse_totals(VLLM_BEFORE))
    assert f is not None and f.drafts == 0 and f.accept_length is None


def test_sglang_reports_its_gauge() -> None:
    text = '# TYPE sglang:spec_accept_length gauge\nsglang:spec_accept_length{tp_rank="0"} 2.75\n'
    text += '# TYPE sglang:spec_accept_rate gauge\nsglang:spec_accept_rate{tp_rank="0"} 0.58\n'
    f = spec_figures({}, parse_totals(text))
    assert f is not None and f.accept_length == 2.75 and f.accept_rate == 0.58 and "gauge" in f.source


def _sglang_scrape(verify: float, generated: float, requests: float, draft_tokens: float = 4.0) -> str:
    """SGLang 0.5.16's per-request spec counters and its draft-token gauge, in the exposition format."""
    lab = '{model_name="m",tp_rank="0"}'
    return (
        f"# TYPE sglang:spec_verify_calls counter\nsglang:spec_verify_calls_total{lab} {verify}\n"
        f"# TYPE sglang:generation_tokens counter\nsglang:generation_tokens_total{lab} {generated}\n"
        f"# TYPE sglang:num_requests counter\nsglang:num_requests_total{lab} {requests}\n"
        f"# TYPE sglang:spec_num_draft_tokens gauge\nsglang:spec_num_draft_tokens{lab} {draft_tokens}\n"
        f"# TYPE sglang:spec_accept_length gauge\nsglang:spec_accept_length{lab} 9.0\n"
    )


def test_sglang_counters_give_the_trial_its_own_acceptance() -> None:
    """8 requests of 128 tokens: 8 first tokens from prefill, 1016 decode tokens in 400 verify steps of
    K=3 (4 draft tokens a step, the bonus slot included): 2.54 tokens a step, 616 of 1200 drafts taken.
    The window gauge (9.0) is not what the trial measured and is not read."""
    f = spec_figures(
        parse_totals(_sglang_scrape(100, 500, 4)), parse_totals(_sglang_scrape(500, 500 + 1024, 12))
    )
    assert f is not None and f.source == "sglang counters"
    assert (f.drafts, f.accepted, f.draft_tokens) == (400.0, 616.0, 1200.0)
    assert f.accept_length == pytest.approx(1016 / 400)
    assert f.accept_rate == pytest.approx(616 / 1200)
    assert f.per_pos == []  # SGLang exports no per-position acceptance


def test_sglang_counters_without_a_verify_step_or_that_do_not_add_up() -> None:
    same = parse_totals(_sglang_scrape(100, 500, 4))
    f = spec_figures(same, same)
    assert f is not None and f.drafts == 0 and f.accept_length is None and "no verify step" in f.source
    # more verify steps than decode tokens: a request counted on one side only; the gauge is read
    g = spec_figures(same, parse_totals(_sglang_scrape(300, 510, 5)))
    assert g is not None and "gauge" in g.source and g.accept_length == 9.0


def test_iid_profile_bounds() -> None:
    assert iid_profile(1.0, 3) == [1.0, 1.0, 1.0] and iid_profile(0.0, 2) == [0.0, 0.0]
    with pytest.raises(ValueError):
        iid_profile(1.5, 2)
