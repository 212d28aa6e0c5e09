"""Grading: letter extraction, the MMLU prompt, code extraction, sanity matching."""

from __future__ import annotations

import pytest

from perftune.evals.data import CodeItem, KnownAnswer, McqItem
from perftune.evals.score import check_sanity, extract_code, mmlu_letter, mmlu_prompt

ITEM = CodeItem(
    id="T/0",
    prompt='def add(a: int, b: int) -> int:\n    """Add."""\n',
    test="def check(f):\n    assert f(1, 2) == 3\n",
    entry_point="add",
)


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("b", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("The answer is B", "B"),
        ("**B**", "B"),
        ("Answer: C", "C"),
        ("  D) Paris\n", "D"),
        ("A", "A"),
        ("A is correct.", "A"),
        ("A good answer is D", "D"),
        ("I think (C), because", "C"),
        ("The correct option is A.", "A"),
    ],
)
def test_mmlu_letter_variants(reply: str, letter: str) -> None:
    assert mmlu_letter(reply) == letter


@pytest.mark.parametrize("reply", ["", "I don't know", "Eh", "BCD", "Paris", "e"])
def test_mmlu_letter_none(reply: str) -> None:
    assert mmlu_letter(reply) is None


def test_mmlu_prompt_lists_lettered_options() -> None:
    item = McqItem("x", "geo", "Capital of France?", ("Rome", "Paris", "Oslo", "Bern"), "B")
    prompt = mmlu_prompt(item)
    assert prompt.startswith("Capital of France?")
    assert "A. Rome\nB. Paris\nC. Oslo\nD. Bern" in prompt
    assert prompt.endswith("Answer with the letter only.")


def test_extract_code_prefers_fenced_python_block() -> None:
    reply = "Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert extract_code(reply, ITEM) == "def add(a, b):\n    return a + b\n"


def test_extract_code_unfenced_full_function_kept_as_is() -> None:
    reply = "def add(a, b):\n    return a + b\n"
    assert extract_code(reply, ITEM) == reply


def test_extract_code_completion_is_appended_to_prompt_and_truncated() -> None:
    reply = "    return a + b\n\n\ndef test():\n    pass\nif __name__ == '__main__':\n    test()\n"
    code = extract_code(reply, ITEM)
    assert code == ITEM.prompt + "    return a + b\n\n"


def test_extract_code_fence_without_entry_point_gets_prompt() -> None:
    reply = "```python\n    return a + b\n```"
    assert extract_code(reply, ITEM) == ITEM.prompt + "    return a + b\n"


def test_check_sanity_word_match() -> None:
    paris = KnownAnswer("Capital of France?", ("paris",))
    five = KnownAnswer("2 + 3?", ("5", "five"))
    assert check_sanity("Paris.", paris)
    assert check_sanity("The capital is PARIS!", paris)
    assert not check_sanity("Parisian", paris)
    assert not check_sanity("London", paris)
    assert check_sanity("5", five)
    assert check_sanity("Five.", five)
    assert not check_sanity("15", five)
    assert not check_sanity("", five)
