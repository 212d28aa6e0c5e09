"""The smoke gate judges generated tokens (usage), not text: dummy weights decode to nothing."""

from typing import Any

from perftune.deploy import judge_smoke


def _c(text: str, n: int | None) -> dict[str, Any]:
    return {"choices": [{"text": text}], **({"usage": {"completion_tokens": n}} if n is not None else {})}


def _ch(text: str, n: int | None) -> dict[str, Any]:
    d: dict[str, Any] = {"choices": [{"message": {"role": "assistant", "content": text}}]}
    if n is not None:
        d["usage"] = {"completion_tokens": n}
    return d


def test_empty_text_with_generated_tokens_passes_and_says_why() -> None:
    # seen on vLLM with `model synth qwen3-30b-a3b`: 8 tokens generated, all special, decoded to ""
    r = judge_smoke(_c("", 8), _ch("", 8))
    assert r.passed and "decoded to empty text" in r.reason and "dummy weights" in r.reason


def test_zero_generated_tokens_is_red_with_the_real_cause() -> None:
    r = judge_smoke(_c("", 0), _ch("hi", 2))
    assert not r.passed and r.reason == "the completion generated no tokens"
    assert "EOS" in r.hint and "read the server log" in r.hint


def test_chat_only_ignores_the_raw_completion() -> None:
    assert judge_smoke(_c("", 0), _ch("Hello!", 3), chat_only=True).passed


def test_without_usage_text_decides() -> None:
    assert judge_smoke(_c(" Paris", None), _ch("Hello", None)).passed
    r = judge_smoke(_c("  ", None), _ch("Hello", None))
    assert not r.passed and "completion" in r.reason
