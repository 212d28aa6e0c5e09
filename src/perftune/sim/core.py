"""The simulated engine core: continuous batching over a paged KV cache, scheduled like vLLM V1 or
like SGLang (SimConfig.scheduler). Pure.

Each step schedules running requests first (a decode token each, or the rest of a chunked prefill),
then admits waiting requests while the token budget (`max_num_batched_tokens`) and `max_num_seqs`
allow. KV lives in blocks of `block_size` tokens; when a running request cannot get a block, the
most recently admitted request is preempted (its KV freed, to be recomputed) as vLLM does. Prefix
caching hashes full prompt blocks as a chain (a block's hash covers everything before it), shares
hit blocks by reference count and evicts unreferenced cached blocks LRU-first.

The core has no clock: `step()` returns the step's duration and the tokens it produced; the caller
(the real-time server or the virtual-time predictor) advances time.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perftune.errors import ConfigError
from perftune.hardware.ceilings import Gpu
from perftune.models.card import WEIGHT_BYTES, ModelCard
from perftune.sim.calibration import Calibration
from perftune.sim.config import SimConfig
from perftune.sim.timing import StepModel


@dataclass(slots=True, eq=False)
class SimRequest:
    rid: int
    prompt_len: int
    max_tokens: int
    prompt_ids: list[int] | None = None  # None: unique content, never a prefix-cache hit
    output: int = 0
    computed: int = 0  # tokens whose KV is in the cache
    blocks: int = 0  # blocks this request references (shared + private)
    held: list[int] = field(default_factory=list)  # cached block hashes it holds a reference on
    registered: int = 0  # prompt blocks already offered to the prefix cache
    hashes: list[int] | None = None
    preemptions: int = 0
    finished: bool = False

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + self.output


@dataclass(slots=True)
class StepResult:
    duration_s: float
    emitted: list[SimRequest]  # requests that produced one token at the end of this step
    finished: list[SimRequest]
    scheduled: int
    tokens: int
    # With async scheduling the engine launches this step before it hands the previous step's tokens
    # out, so they leave this many seconds after this step starts: its host-bound launches (an
    # ungraphed step's excess over the GPU's time). 0 without async scheduling, or for a graphed step.
    held_s: float = 0.0


@dataclass
class Counters:
    """Cumulative engine counters, exported under vLLM's metric names."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    preemptions: int = 0
    finished: int = 0
    steps: int = 0


@dataclass
class StepBreakdown:
    """Where the simulated step time went since the last reset: the simulated engine's own profile
    (phase 2 reads it as a capture labelled SIMULATED). Modelled, never measured."""

    steps: int = 0
    decode_steps: int = 0  # decode-only steps
    mixed_steps: int = 0  # steps with a prefill chunk
    time_s: float = 0.0
    decode_time_s: float = 0.0
    gemm_s: float = 0.0
    attn_s: float = 0.0
    comm_s: float = 0.0
    host_s: float = 0.0
    batch_sum: int = 0
    batch_max: int = 0
    tokens: int = 0
    prefill_tokens: int = 0
    kv_usage_sum: float = 0.0
    kv_usage_max: float = 0.0
    bytes: float = 0.0  # modelled HBM bytes read (weights + KV)
    preemptions: int = 0

    def to_json(self) -> dict[str, Any]:
        n, t = self.steps, self.time_s
        return {
            "simulated": True,
            "steps": n,
            "decode_steps": self.decode_steps,
            "mixed_steps": self.mixed_steps,
            "time_s": t,
            "shares": {
                k: (v / t if t else 0.0)
                for k, v in (
                    ("gemm", self.gemm_s),
                    ("attention", self.attn_s),
                    ("communication", self.comm_s),
                    ("host_overhead", self.host_s),
                )
            },
            "decode_time_share": self.decode_time_s / t if t else 0.0,
            "prefill_time_share": (t - self.decode_time_s) / t if t else 0.0,
            "batch_mean": self.batch_sum / n if n else 0.0,
            "batch_max": self.batch_max,
            "tokens": self.tokens,
            "prefill_tokens": self.prefill_tokens,
            "kv_usage_mean": self.kv_usage_sum / n if n else 0.0,
            "kv_usage_max": self.kv_usage_max,
            "bytes_per_step": self.bytes / n if n else 0.0,
            "modelled_tb_s": self.bytes / t / 1e12 if t else 0.0,
            "preemptions": self.preemptions,
        }


def block_hashes(ids: list[int] | None, block_size: int) -> list[int]:
    """Chained hashes of the full blocks of a prompt: block i's hash covers blocks 0..i."""
    out: list[int] = []
    if ids is not None:
        h = 0
        for i in range(len(ids) // block_size):
            h = hash((h, *ids[i * block_size : (i + 1) * block_size]))
            out.append(h)
    return out


def kv_capacity_blocks(card: ModelCard, g: Gpu, cfg: SimConfig, cal: Calibration) -> int:
    """KV blocks per GPU: memory fraction minus weights and the non-KV reserve, as vLLM sizes it."""
    tp = cfg.tensor_parallel_size
    weights = card.total_params * WEIGHT_BYTES[cfg.weight_dtype] / tp
    free = cal.device_bytes(g) * cfg.gpu_memory_utilization - weights - cal.non_kv_reserve_bytes
    per_block = card.kv_bytes_per_token[cfg.kv_dtype] / tp * cfg.block_size
    if free <= 0 or per_block <= 0:
        raise ConfigError(
            f"no memory left for the KV cache: {weights / 1e9:.1f} GB of weights per GPU at "
            f"gpu_memory_utilization {cfg.gpu_memory_utilization}",
            hint="raise --gpu-memory-utilization, use --tensor-parallel-size, or --quantization fp8 "
            "(or modelopt_fp4)",
        )
    return int(free // per_block)


class EngineCore:
    def __init__(self, card: ModelCard, g: Gpu, cfg: SimConfig, cal: Calibration) -> None:
        self.card, self.cfg, self.cal = card, cfg, cal
        self.timing = StepModel.build(card, g, cfg, cal)
        self.total_blocks = kv_capacity_blocks(card, g, cfg, cal)
        self.max_model_len = cfg.max_model_len or card.max_context
        if self.max_model_len > self.total_blocks * cfg.block_size:
            raise ConfigError(
                f"max_model_len {self.max_model_len} needs more KV than fits "
                f"({self.total_blocks * cfg.block_size} tokens)",
                hint="lower --max-model-len or raise --gpu-memory-utilization (as vLLM would ask)",
            )
        self.used = 0  # referenced blocks
        self.cache: dict[int, int] = {}  # block hash -> reference count
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced (LRU first)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.counters = Counters()
        self.breakdown = StepBreakdown()
        self._preempt_base = 0
        self.rng = np.random.default_rng(cfg.seed)
        self._free_s = 0.0  # GPU time of the last step free for launching the next (`StepModel.free_after`)

    # ------------------------------------------------------------------ KV blocks

    @property
    def kv_tokens(self) -> int:
        return self.total_blocks * self.cfg.block_size

    @property
    def kv_usage(self) -> float:
        return self.used / self.total_blocks

    def _alloc(self, n: int) -> bool:
        if n <= 0:
            return True
        if self.total_blocks - self.used < n:
            return False
        self.used += n
        while self.used + len(self.evictable) > self.total_blocks:
            h, _ = self.evictable.popitem(last=False)
            del self.cache[h]
        return True

    def _release(self, r: SimRequest) -> None:
        for h in r.held:
            ref = self.cache[h] - 1
            self.cache[h] = ref
            if ref == 0:
                self.evictable[h] = None
        self.used -= r.blocks
        r.blocks, r.held, r.computed, r.registered = 0, [], 0, 0

    def _block_hashes(self, r: SimRequest) -> list[int]:
        if r.hashes is None:
            r.hashes = block_hashes(r.prompt_ids, self.cfg.block_size)
        return r.hashes

    def _match_prefix(self, r: SimRequest) -> None:
        """Take references on the longest cached prefix (at least one prompt token is recomputed)."""
        self.counters.prefix_queries += r.prompt_len
        if not self.cfg.enable_prefix_caching:
            return
        limit = (r.prompt_len - 1) // self.cfg.block_size
        for h in self._block_hashes(r)[:limit]:
            ref = self.cache.get(h)
            if ref is None:
                break
            if ref == 0:
                del self.evictable[h]
                self.used += 1
            self.cache[h] = ref + 1
            r.held.append(h)
        r.blocks = r.registered = len(r.held)
        r.computed = r.blocks * self.cfg.block_size
        self.counters.prefix_hits += r.computed

    def _register(self, r: SimRequest) -> None:
        """Offer newly completed full prompt blocks to the prefix cache."""
        full = min(r.computed, r.prompt_len) // self.cfg.block_size
        if r.registered >= full or not self.cfg.enable_prefix_caching:
            return
        hashes = self._block_hashes(r)
        while r.registered < min(full, len(hashes)):
            h = hashes[r.registered]
            if h not in self.cache:  # our private block becomes a cached block we reference
                self.cache[h] = 1
                r.held.append(h)
            r.registered += 1

    def reset_prefix_cache(self) -> bool:
        """Drop every unreferenced cached block (vLLM refuses while requests hold blocks; so do we)."""
        if self.running:
            return False
        for h in self.evictable:
            del self.cache[h]
        self.evictable.clear()
        return True

    # ------------------------------------------------------------------ requests

    def validate(self, r: SimRequest) -> None:
        if r.prompt_len < 1 or r.max_tokens < 1 or r.prompt_len + r.max_tokens > self.max_model_len:
            raise ConfigError(
                f"request needs {r.prompt_len + r.max_tokens} tokens; max_model_len is {self.max_model_len}",
                hint="shorten the prompt or max_tokens",
            )

    def add(self, r: SimRequest) -> None:
        self.validate(r)
        self.counters.prompt_tokens += r.prompt_len
        self.waiting.append(r)

    def abort(self, r: SimRequest) -> None:
        if r.finished:
            return
        r.finished = True
        if r in self.running:
            self.running.remove(r)
            self._release(r)
        elif r in self.waiting:
            self.waiting.remove(r)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def _preempt(self) -> SimRequest:
        victim = self.running.pop()
        self._release(victim)
        victim.preemptions += 1
        self.counters.preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def _grow(self, r: SimRequest, n: int) -> bool:
        """Give r the blocks for n more tokens, if they can be had."""
        more = math.ceil((r.computed + n) / self.cfg.block_size) - r.blocks
        if not self._alloc(more):
            return False
        r.blocks += more
        return True

    def schedule(self) -> list[tuple[SimRequest, int]]:
        if self.cfg.scheduler == "sglang":
            return self._schedule_sglang()
        return self._schedule_vllm()

    def _grow_or_preempt(self, r: SimRequest, n: int) -> tuple[bool, bool]:
        """Give r the blocks for n more tokens, preempting the newest running requests until they can be
        had. Returns (r is scheduled, anything was preempted); r itself may be the one preempted."""
        preempted = False
        victim = None
        while victim is not r and not self._grow(r, n):
            preempted = True
            victim = self._preempt()
        return victim is not r, preempted

    def _admit(self, out: list[tuple[SimRequest, int]], budget: int) -> int:
        """Admit waiting requests FCFS into `out` while the budget, a slot and KV allow (a prompt longer
        than the budget is chunked, or waits without chunked prefill); returns the budget left."""
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            r = self.waiting[0]
            self._match_prefix(r)
            need = r.num_tokens - r.computed
            n = min(need, budget)
            if (n < need and not self.cfg.enable_chunked_prefill) or not self._grow(r, n):
                self._release(r)
                break
            self.waiting.popleft()
            self.running.append(r)
            out.append((r, n))
            budget -= n
        return budget

    def _schedule_sglang(self) -> list[tuple[SimRequest, int]]:
        """SGLang's default (no mixed chunk): prefill first. While a prompt is unfinished or a request
        waits (and a slot and KV are free), the step is a prefill batch alone: the unfinished chunked
        prompt first, then waiting requests FCFS, up to the chunk size in tokens; running decodes wait.
        Otherwise the step decodes every running request, retracting the newest when KV runs out."""
        budget = self.cfg.max_num_batched_tokens
        out: list[tuple[SimRequest, int]] = []
        for r in self.running:  # a chunked prompt in progress continues before anything new
            if budget > 0 and r.computed < r.prompt_len:
                n = min(r.prompt_len - r.computed, budget)
                if not self._grow(r, n):
                    break
                out.append((r, n))
                budget -= n
        self._admit(out, budget)
        if out:
            return out
        i = 0
        while i < len(self.running):
            r = self.running[i]
            if not self._grow_or_preempt(r, 1)[0]:  # SGLang retracts the newest decode and re-queues it
                break
            out.append((r, 1))
            i += 1
        return out

    def _schedule_vllm(self) -> list[tuple[SimRequest, int]]:
        cfg = self.cfg
        budget = cfg.max_num_batched_tokens
        out: list[tuple[SimRequest, int]] = []
        preempted = False
        i = 0
        bs = cfg.block_size
        running = self.running
        while i < len(running) and budget > 0:
            r = running[i]
            need = r.prompt_len + r.output - r.computed
            if need == 1 and r.computed % bs:  # decode inside a partly filled block: no allocation
                out.append((r, 1))
                budget -= 1
                i += 1
                continue
            n = min(need, budget)
            if n < need and not cfg.enable_chunked_prefill:
                i += 1
                continue
            ok, any_preempted = self._grow_or_preempt(r, n)
            preempted = preempted or any_preempted
            if not ok:
                break  # r itself was preempted: nothing after it can run either
            out.append((r, n))
            budget -= n
            i += 1
        if not preempted:  # a step that preempted admits nothing new
            self._admit(out, budget)
        return out

    def step(self) -> StepResult:
        """Schedule, time, and advance one step."""
        sched = self.schedule()
        if not sched:
            return StepResult(0.0, [], [], 0, 0)
        tokens = dec_kv = 0
        pairs = 0.0
        decode_only = True
        for r, n in sched:
            tokens += n
            if n == 1 and r.computed >= r.prompt_len:  # decode: reads its whole context's KV
                dec_kv += r.computed + 1
            else:
                decode_only = False
                pairs += n * (r.computed + (n + 1) / 2)
        parts = self.timing.parts(len(sched), tokens, dec_kv, pairs, decode_only, self._free_s)
        raw = dt = sum(parts)
        if self.cal.jitter_cv > 0:
            dt *= float(np.exp(self.rng.normal(0.0, self.cal.jitter_cv)))
        held = 0.0
        if self.timing.ahead > 0.0:
            gpu_s = parts[0] + parts[1] + parts[2]
            held = self.timing.host_excess_s(gpu_s, decode_only, tokens, self._free_s) * dt / raw
        self._account(parts, dt, sched, tokens, dec_kv, decode_only)
        emitted: list[SimRequest] = []
        finished: list[SimRequest] = []
        for r, n in sched:
            r.computed += n
            if n > 1 or r.computed <= r.prompt_len:  # only prompt blocks are offered to the cache
                self._register(r)
            if r.computed == r.num_tokens:
                r.output += 1
                self.counters.generation_tokens += 1
                emitted.append(r)
                if r.output >= r.max_tokens:
                    r.finished = True
                    finished.append(r)
        for r in finished:
            self.running.remove(r)
            self._release(r)
            self.counters.finished += 1
        self.counters.steps += 1
        # the next step's ops can be launched during this one only if the engine stays busy
        self._free_s = self.timing.free_after(parts, decode_only, tokens) if self.has_work() else 0.0
        return StepResult(dt, emitted, finished, len(sched), tokens, held)

    def _account(
        self,
        parts: tuple[float, float, float, float],
        dt: float,
        sched: list[tuple[SimRequest, int]],
        tokens: int,
        dec_kv: int,
        decode_only: bool,
    ) -> None:
        b, raw = self.breakdown, sum(parts) or 1.0
        b.steps += 1
        b.time_s += dt
        for name, v in zip(("gemm_s", "attn_s", "comm_s", "host_s"), parts, strict=True):
            setattr(b, name, getattr(b, name) + v * dt / raw)  # jitter spread over the parts
        if decode_only:
            b.decode_steps += 1
            b.decode_time_s += dt
        else:
            b.mixed_steps += 1
            pre = sum(n for r, n in sched if n > 1 or r.computed < r.prompt_len)
            b.prefill_tokens += pre
            # a mixed step's time split by its tokens: its decode tokens' share counts as decode
            b.decode_time_s += dt * (tokens - pre) / tokens if tokens else 0.0
        b.batch_sum += len(sched)
        b.batch_max = max(b.batch_max, len(sched))
        b.tokens += tokens
        u = self.kv_usage
        b.kv_usage_sum += u
        b.kv_usage_max = max(b.kv_usage_max, u)
        t = self.timing
        b.bytes += t.weight_bytes_at(tokens) + dec_kv * t.kv_bytes_per_token
        b.preemptions = self.counters.preemptions - self._preempt_base

    def reset_breakdown(self) -> None:
        self.breakdown = StepBreakdown()
        self._preempt_base = self.counters.preemptions


class Frontend:
    """The API server in front of the engine: a fixed latency (in parallel), one CPU, and a serial stage.

    The CPU is shared (processor sharing, as an asyncio server's handlers interleave) by the requests it
    is admitting (`frontend_shared_ms_per_request` of work each) and the tokens it streams
    (`frontend_us_per_token` each, one job per engine step). A request done there then passes a serial
    stage, one request after another (`frontend_ms_per_request` each: handing it to the engine), and
    reaches the engine `api_latency_ms` later. So a burst of arrivals reaches the engine only after
    the burst's shared work, and a large batch's streaming slows admissions, which is where TTFT at high
    concurrency comes from beyond the prefill queue (vLLM 0.26.0, H200, c=128, a closed loop's first 128
    sends at once: no first token before 216 ms on DeepSeek-V2-Lite, 257 ms on FP8 Llama-3.1-8B, where
    one 8192-token prefill step takes about 85 and 120 ms). With neither shared cost (calibrations
    before 2026-12-05) requests are admitted first come first served.

    Processor sharing in virtual time: the virtual clock is the service each job in progress has had; it
    advances at 1/n of real time with n jobs, and a job ends when the clock reaches its start's clock
    plus its work, so each event costs a heap operation."""

    def __init__(self, cal: Calibration) -> None:
        self.latency_s = cal.api_latency_ms * 1e-3
        self.serial_s = cal.frontend_ms_per_request * 1e-3
        self.shared_s = cal.frontend_shared_ms_per_request * 1e-3
        self.per_tok_s = cal.frontend_us_per_token * 1e-6
        self.t = 0.0  # the real time the CPU's state is at
        self.v = 0.0  # the virtual clock
        self.jobs: list[tuple[float, int, int]] = []  # on the CPU: (virtual end, seq, key; -1 streaming)
        self.serial_free = 0.0  # when the serial stage is next free
        self.seq = 0
        self.ready: list[tuple[float, int, int]] = []  # through: (time at the engine, seq, key)

    def _serial(self, t: float, seq: int, key: int) -> None:
        self.serial_free = max(t, self.serial_free) + self.serial_s
        heapq.heappush(self.ready, (self.serial_free + self.latency_s, seq, key))

    def _advance(self, t: float) -> None:
        """Run the CPU to real time `t` (an earlier time is taken as the state's own)."""
        jobs = self.jobs
        while jobs:
            dt = (jobs[0][0] - self.v) * len(jobs)
            if self.t + dt > t:
                if t > self.t:
                    self.v += (t - self.t) / len(jobs)
                break
            self.t += dt
            self.v, seq, key = heapq.heappop(jobs)
            if key >= 0:
                self._serial(self.t, seq, key)
        self.t = max(self.t, t)

    def _job(self, t: float, work_s: float, key: int) -> None:
        self._advance(t)
        self.seq += 1
        if work_s > 0.0:
            heapq.heappush(self.jobs, (self.v + work_s, self.seq, key))
        elif key >= 0:
            self._serial(t, self.seq, key)

    def arrive(self, t: float, key: int) -> None:
        """Request `key` (>= 0) reaches the API server at `t`."""
        self._job(t, self.shared_s, key)

    def stream(self, t: float, tokens: int) -> None:
        """A step ended at `t` with `tokens` tokens for the API server to stream."""
        if tokens and self.per_tok_s > 0.0:
            self._job(t, self.per_tok_s * tokens, -1)

    def next_ready(self) -> float | None:
        """When the next waiting request reaches the engine if nothing else arrives (None: none waits)."""
        best = self.ready[0][0] if self.ready else None
        t, v, n = self.t, self.v, len(self.jobs)
        for end, _, key in sorted(self.jobs):
            t += (end - v) * n
            v, n = end, n - 1
            if key >= 0:
                at = max(t, self.serial_free) + self.serial_s + self.latency_s
                return at if best is None else min(best, at)
        return best

    def admit(self, now: float) -> list[int]:
        """The requests that reached the engine by `now`, in the order they reached it."""
        self._advance(now)
        out = []
        while self.ready and self.ready[0][0] <= now + 1e-12:
            out.append(heapq.heappop(self.ready)[2])
        return out

    def cancel(self, key: int, t: float) -> None:
        """Request `key` leaves at `t` (its client went away): it no longer holds the CPU or a place."""
        self._advance(t)
        for q in (self.jobs, self.ready):
            kept = [e for e in q if e[2] != key]
            if len(kept) != len(q):
                heapq.heapify(kept)
                q[:] = kept
