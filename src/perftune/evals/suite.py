"""Eval orchestration: ask the server, grade the replies, score tasks and compare two variants.

I/O is the HTTP calls (``client``) and the HumanEval sandbox (``score.run_sandboxed``, at most
two at a time in a thread pool); the grading and comparison are the pure functions they call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from perftune.evals.client import Mode, ask_all
from perftune.evals.data import SANITY, CodeItem, McqItem
from perftune.evals.score import (
    HUMANEVAL_STOP,
    check_sanity,
    extract_code,
    humaneval_prompt,
    mmlu_letter,
    mmlu_prompt,
    run_sandboxed,
)
from perftune.evals.stats import decide, decision_reason, paired_delta, wilson

SANDBOX_WORKERS = 2


class TaskScore(BaseModel):
    """One task's accuracy on one server, with per-item outcomes for paired comparison."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="task name: 'mmlu' or 'humaneval'")
    n: int = Field(description="items scored")
    correct: int = Field(description="items answered correctly")
    score_pct: float = Field(description="correct / n, percent")
    ci95: tuple[float, float] = Field(description="Wilson 95% interval of score_pct, percent")
    items: dict[str, bool] = Field(description="item id -> answered correctly")


class SanityReply(BaseModel):
    """One known-answer prompt, the server's reply and whether it was accepted."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="the prompt sent")
    reply: str = Field(description="the server's reply")
    ok: bool = Field(description="the reply contains an accepted answer")


class SanityResult(BaseModel):
    """Known-answer smoke test: a broken server (bad template, garbage weights) fails most of these."""

    model_config = ConfigDict(extra="forbid")

    passed: int = Field(description="prompts answered correctly")
    total: int = Field(description="prompts asked")
    replies: list[SanityReply] = Field(description="every prompt with its reply")


def task_score(task: str, items: dict[str, bool]) -> TaskScore:
    """A TaskScore from per-item outcomes."""
    n = len(items)
    correct = sum(items.values())
    return TaskScore(
        task=task,
        n=n,
        correct=correct,
        score_pct=100.0 * correct / n if n else 0.0,
        ci95=wilson(correct, n),
        items=items,
    )


async def run_sanity(
    base_url: str, model: str, mode: Mode, *, max_tokens: int = 32, timeout_s: float = 120
) -> SanityResult:
    """Ask every ``SANITY`` prompt and count the replies that contain an accepted answer."""
    replies = await ask_all(
        base_url, model, [k.prompt for k in SANITY], mode, max_tokens, timeout_s=timeout_s
    )
    rows = [
        SanityReply(prompt=k.prompt, reply=r, ok=check_sanity(r, k))
        for k, r in zip(SANITY, replies, strict=True)
    ]
    return SanityResult(passed=sum(r.ok for r in rows), total=len(rows), replies=rows)


async def run_mmlu(
    base_url: str,
    model: str,
    items: Sequence[McqItem],
    mode: Mode,
    *,
    max_tokens: int = 16,
    concurrency: int = 4,
    timeout_s: float = 120,
) -> TaskScore:
    """MMLU accuracy: a reply is right when its first standalone letter is the answer."""
    replies = await ask_all(
        base_url,
        model,
        [mmlu_prompt(it) for it in items],
        mode,
        max_tokens,
        concurrency=concurrency,
        timeout_s=timeout_s,
    )
    outcomes = {it.id: mmlu_letter(r) == it.answer for it, r in zip(items, replies, strict=True)}
    return task_score("mmlu", outcomes)


async def run_humaneval(
    base_url: str,
    model: str,
    items: Sequence[CodeItem],
    mode: Mode,
    max_tokens: int = 384,
    *,
    concurrency: int = 4,
    timeout_s: float = 120,
    sandbox_timeout_s: float = 10.0,
) -> TaskScore:
    """HumanEval pass@1 (greedy): each reply's code runs against the item's tests in the sandbox."""
    replies = await ask_all(
        base_url,
        model,
        [humaneval_prompt(it, mode) for it in items],
        mode,
        max_tokens,
        concurrency=concurrency,
        timeout_s=timeout_s,
        # Completions run on past the function; chat replies end on their own.
        stop=HUMANEVAL_STOP if mode == "completions" else None,
    )
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=SANDBOX_WORKERS, thread_name_prefix="perftune-sandbox") as pool:
        futures = [
            loop.run_in_executor(pool, _run_one, extract_code(r, it), it, sandbox_timeout_s)
            for it, r in zip(items, replies, strict=True)
        ]
        passed = await asyncio.gather(*futures)
    return task_score("humaneval", {it.id: ok for it, ok in zip(items, passed, strict=True)})


def _run_one(code: str, item: CodeItem, timeout_s: float) -> bool:
    ok, _reason = run_sandboxed(code, timeout_s, item=item)
    return ok


def compare(base: TaskScore, cand: TaskScore, tolerance_pts: float) -> dict[str, Any]:
    """Pair base and candidate on the item ids both scored; the delta, its interval, McNemar, the decision.

    Raises ValueError when the tasks differ or no item id is in both.
    """
    if base.task != cand.task:
        raise ValueError(f"cannot compare different tasks: {base.task!r} vs {cand.task!r}")
    common = sorted(base.items.keys() & cand.items.keys())
    if not common:
        raise ValueError(f"{base.task}: base and candidate share no item ids")
    d = paired_delta([base.items[i] for i in common], [cand.items[i] for i in common])
    decision = decide(d, tolerance_pts)
    base_pct = 100.0 * sum(base.items[i] for i in common) / len(common)
    cand_pct = 100.0 * sum(cand.items[i] for i in common) / len(common)
    return {
        "task": base.task,
        "n": d.n,
        "unpaired": len(base.items) + len(cand.items) - 2 * len(common),
        "base_pct": base_pct,
        "cand_pct": cand_pct,
        "delta_pts": d.delta_pts,
        "ci95": d.ci95,
        "b01": d.b01,
        "b10": d.b10,
        "mcnemar_p": d.mcnemar_p,
        "tolerance_pts": tolerance_pts,
        "decision": decision,
        "reason": decision_reason(d, tolerance_pts, decision),
    }
