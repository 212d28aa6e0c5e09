"""Token accounting's cost to the server: per-chunk usage vs the final usage, on a mock that charges it.

vLLM's API server serializes a usage object on every chunk when a client asks for
`continuous_usage_stats`: on one H200 at c=512 that cost 1.16 s more API-server CPU per 512-request
run and 5% of output tok/s (benchmarks/results/2026-12-02-h200-vllm-0.26.0-client-compare). This
benchmark shows the same effect without a GPU: a mock server (child process, 1 token per chunk) that
spends `--usage-cost-us` of CPU on its one event loop for every chunk carrying usage, benched by
perftune with `--token-accounting final` (F) and `per-chunk` (P), interleaved, one trial per run. The
reference is the same pair against a mock that charges nothing, measured in the same run: its ratio
should be 1.00, so the costed ratio is the accounting's effect and not the client's.

    python benchmarks/token_accounting.py [--cost-us 100] [--concurrency 64] [--rounds 3]

Last line: `per-chunk/final output tok/s: costed=X reference=Y (cost Z us/chunk, c=N)`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from perftune.bench.client import BenchClient
from perftune.bench.runner import BenchConfig, run_bench
from perftune.bench.workloads import WorkloadSpec
from perftune.mock.process import mock_process


async def _server_cpu(url: str) -> float:
    async with BenchClient(url, max_connections=1) as c:
        stats: dict[str, Any] = await c.get_json("/mock/stats")
        return float(stats["cpu_s"])


def _one(url: str, mode: str, concurrency: int, n: int, osl: int) -> tuple[float, float, float]:
    """(output tok/s, median TPOT ms, server CPU s) of one single-trial run."""
    cfg = BenchConfig(
        endpoint=url,
        model="mock",
        concurrency=concurrency,
        trials=1,
        warmup_requests=0,
        token_accounting=mode,  # type: ignore[arg-type]
        gpu_telemetry=False,
        engine_poll_s=0,
        workload=WorkloadSpec(kind="random", isl=128, osl=osl, num_requests=n),
    )
    cpu0 = asyncio.run(_server_cpu(url))
    run = asyncio.run(run_bench(cfg))
    cpu1 = asyncio.run(_server_cpu(url))
    t = run.result.trials[0]
    return t.output_tok_s, t.tpot_ms.p50, cpu1 - cpu0


def measure(cost_us: float, args: argparse.Namespace) -> dict[str, list[tuple[float, float, float]]]:
    out: dict[str, list[tuple[float, float, float]]] = {"final": [], "per-chunk": []}
    with mock_process(ttft_ms=20.0, itl_ms=args.itl_ms, usage_cost_us=cost_us) as url:
        _one(url, "final", args.concurrency, args.concurrency, args.osl)  # warm the mock and the pool
        for r in range(args.rounds):
            order = ["final", "per-chunk"] if r % 2 == 0 else ["per-chunk", "final"]
            for mode in order:
                out[mode].append(_one(url, mode, args.concurrency, args.requests, args.osl))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cost-us", type=float, default=100.0, help="server CPU per chunk carrying usage")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--osl", type=int, default=128)
    ap.add_argument("--itl-ms", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(
        f"mock: ttft 20 ms, itl {args.itl_ms:g} ms, 1 tok/chunk, 128 in / {args.osl} out; "
        f"c={args.concurrency}, {args.requests} requests per run, {args.rounds} interleaved rounds per arm",
        flush=True,
    )
    ratios = {}
    for label, cost in (("reference", 0.0), ("costed", args.cost_us)):
        res = measure(cost, args)
        row = {}
        for mode, runs in res.items():
            tok = [r[0] for r in runs]
            row[mode] = statistics.fmean(tok)
            print(
                f"{label:9s} cost {cost:5.1f} us  {mode:9s}  output {statistics.fmean(tok):8,.1f} ± "
                f"{statistics.stdev(tok) if len(tok) > 1 else 0:6,.1f} tok/s  median TPOT "
                f"{statistics.fmean(r[1] for r in runs):6.2f} ms  server CPU "
                f"{statistics.fmean(r[2] for r in runs):5.2f} s/run",
                flush=True,
            )
        ratios[label] = row["per-chunk"] / row["final"]
    print(
        f"per-chunk/final output tok/s: costed={ratios['costed']:.3f} reference={ratios['reference']:.3f} "
        f"(cost {args.cost_us:g} us/chunk, c={args.concurrency})"
    )


if __name__ == "__main__":
    main()
