"""The simulated engines' step composition against hand-computed schedules: vLLM V1 (one token budget,
running decodes first, then chunked prefills; preemption of the newest when KV runs out) and SGLang
(prefill first: a step is a prefill batch while prompts are unfinished or waiting, else a decode batch)."""

from __future__ import annotations

from perftune.hardware.ceilings import gpu
from perftune.models.resolve import model_card
from perftune.sim.calibration import Calibration
from perftune.sim.config import SimConfig
from perftune.sim.core import EngineCore, SimRequest

CARD = model_card("llama-3.1-8b")
H100 = gpu("h100")
CAL = Calibration(gpu=H100.key, jitter_cv=0.0)


def core(scheduler: str, budget: int = 10, **kw: object) -> EngineCore:
    cfg = SimConfig(scheduler=scheduler, max_num_batched_tokens=budget, block_size=4, **kw)  # type: ignore[arg-type]
    return EngineCore(CARD, H100, cfg, CAL)


def plan(c: EngineCore, steps: int) -> list[list[tuple[int, int]]]:
    """(request id, tokens) per step, stepping the core."""
    out = []
    for _ in range(steps):
        sched = c.schedule()
        out.append([(r.rid, n) for r, n in sched])
        # advance exactly as step() does, without timing
        for r, n in sched:
            r.computed += n
            if r.computed == r.num_tokens:
                r.output += 1
                if r.output >= r.max_tokens:
                    r.finished = True
        for r, _ in sched:
            if r.finished and r in c.running:
                c.running.remove(r)
                c._release(r)
    return out


def three_decoding_and_one_waiting(c: EngineCore) -> None:
    for rid in (1, 2, 3):
        c.add(SimRequest(rid=rid, prompt_len=2, max_tokens=50))
    plan(c, 1)  # all three prefill together (2 tokens each)
    c.add(SimRequest(rid=4, prompt_len=20, max_tokens=5))


def test_vllm_decodes_first_then_chunks_the_new_prompt_into_what_is_left() -> None:
    c = core("vllm")
    three_decoding_and_one_waiting(c)
    assert plan(c, 3) == [
        [(1, 1), (2, 1), (3, 1), (4, 7)],  # budget 10: three decodes, then 7 of the 20-token prompt
        [(1, 1), (2, 1), (3, 1), (4, 7)],  # 14 of 20
        [(1, 1), (2, 1), (3, 1), (4, 6)],  # the last 6: its first token comes out of this step
    ]


def test_sglang_prefills_first_and_the_decodes_wait() -> None:
    c = core("sglang")
    three_decoding_and_one_waiting(c)
    assert plan(c, 4) == [
        [(4, 10)],  # a prefill batch alone: chunk size 10
        [(4, 10)],  # the rest of the prompt, still alone
        [(1, 1), (2, 1), (3, 1), (4, 1)],  # no prompt left: every running request decodes
        [(1, 1), (2, 1), (3, 1), (4, 1)],
    ]


def test_sglang_admits_waiting_requests_fcfs_up_to_the_chunk_size() -> None:
    c = core("sglang", budget=8)
    for rid, n in ((1, 3), (2, 3), (3, 3)):
        c.add(SimRequest(rid=rid, prompt_len=n, max_tokens=3))
    assert plan(c, 3) == [[(1, 3), (2, 3), (3, 2)], [(3, 1)], [(1, 1), (2, 1), (3, 1)]]


def test_when_kv_runs_out_the_newest_running_request_is_preempted() -> None:
    for sched in ("vllm", "sglang"):
        c = core(sched, budget=64)
        c.total_blocks = 5  # 20 tokens of KV in blocks of 4
        c.add(SimRequest(rid=1, prompt_len=4, max_tokens=20))
        c.add(SimRequest(rid=2, prompt_len=4, max_tokens=20))
        assert plan(c, 1) == [[(1, 4), (2, 4)]], sched  # one block each
        # decodes at 4..7 need a second block each (4 used), 8..11 a third: only one is left, so the
        # newest request (2) is preempted and request 1 decodes alone
        steps = plan(c, 5)
        assert steps[:4] == [[(1, 1), (2, 1)]] * 4, sched
        assert steps[4] == [(1, 1)], sched
        assert c.counters.preemptions == 1 and [r.rid for r in c.waiting] == [2], sched
        assert c.used == 3  # request 1's three blocks; request 2's were freed for recompute
