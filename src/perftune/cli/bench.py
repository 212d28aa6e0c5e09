"""`perftune bench run|calibrate`: parse, call the api, render."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from perftune import api
from perftune.bench.accounting import TokenAccounting
from perftune.bench.calibrate import DEFAULT_LADDER, CalibrationPoint, MockTruth
from perftune.bench.defaults import closed_loop_defaults
from perftune.bench.load import Arrival
from perftune.bench.metrics import parse_slo
from perftune.bench.output import RecordsFormat, headline_rows, sol_line
from perftune.bench.runner import BenchConfig, BenchRun, Transport
from perftune.bench.runner import Progress as BenchProgress
from perftune.bench.workloads import WorkloadKind, WorkloadSpec
from perftune.cli.common import err_console, handle_errors, out_console, print_json
from perftune.context import Claim

app = typer.Typer(
    help="Measure an OpenAI-compatible server with perftune's exact client.", no_args_is_help=True
)

# Exit code of a bench whose client fell behind (summary valid=false): the evidence is written, but the
# numbers are not a server result. 1 and 2 are run-time and input errors.
EXIT_INVALID = 5


@app.command("run")
@handle_errors
def run(
    endpoint: str = typer.Option(..., help="server base URL, e.g. http://127.0.0.1:8000"),
    model: str = typer.Option(..., help="served model name"),
    workload: WorkloadKind = typer.Option("random", help="random | prefix | chat | code | long"),
    workload_file: Path | None = typer.Option(
        None, help="replay a frozen workload.json (overrides --workload)"
    ),
    isl: int | None = typer.Option(None, help="input tokens (random/prefix/long)"),
    osl: int | None = typer.Option(None, help="output tokens (fixed with ignore_eos + min_tokens)"),
    num_requests: int | None = typer.Option(
        None, help="requests per trial (default 256; closed loop at c >= 64: at least 2 per slot)"
    ),
    seed: int = typer.Option(0, help="prompt and arrival seed"),
    prefix_groups: int = typer.Option(8, help="prefix workload: shared-prefix groups"),
    prefix_len: int | None = typer.Option(
        None, help="prefix workload: shared prefix tokens (default 3/4 isl)"
    ),
    dataset: str | None = typer.Option(
        None, help="chat workload: JSONL or ShareGPT file (default WritingBench)"
    ),
    vocab_size: int | None = typer.Option(None, help="synthetic token ids stay below this (default 32000)"),
    concurrency: int | None = typer.Option(None, help="closed loop: fixed number of in-flight requests"),
    rate: float | None = typer.Option(None, help="open loop: requests per second"),
    arrival: Arrival = typer.Option("poisson", help="open loop arrivals: constant | poisson | gamma"),
    burstiness: float = typer.Option(1.0, help="gamma arrivals: shape (1 = Poisson, < 1 burstier)"),
    max_concurrency: int | None = typer.Option(None, help="open loop: cap on in-flight requests"),
    trials: int | None = typer.Option(
        None,
        help="counted trials, after an uncounted warmup (default 3; closed loop at c >= 64: enough to "
        "call a 3% difference at 95% given the run-to-run variance measured at that load)",
    ),
    warmup: int | None = typer.Option(
        None, help="minimum warmup requests (default min(16, num-requests); 0: no warmup)"
    ),
    warmup_until_stable: bool = typer.Option(
        True,
        "--warmup-until-stable/--warmup-fixed",
        help="keep warming up at the trial's concurrency until two rounds agree within 10% "
        "(bounded by --warmup-max-rounds), or run exactly --warmup requests",
    ),
    warmup_max_rounds: int = typer.Option(3, help="most warmup rounds spent waiting for stability"),
    server_log: Path | None = typer.Option(
        None, help="engine log file: compilation logged during a trial flags that trial"
    ),
    gpu: str | None = typer.Option(None, help="GPU of the server (e.g. h100), for the decode %SoL"),
    model_card: str | None = typer.Option(
        None, help="model catalog name or folder, for the decode %SoL (with --gpu)"
    ),
    tp: int = typer.Option(1, help="tensor parallel size of the server (for the %SoL only)"),
    timeout_s: float = typer.Option(600.0, help="per-request timeout, seconds"),
    slo: str | None = typer.Option(None, help="goodput SLO, e.g. ttft_ms=200,tpot_ms=40"),
    out: Path | None = typer.Option(None, help="run folder (default runs/bench-<time>-<id>)"),
    records_format: RecordsFormat = typer.Option("jsonl", help="per-request records: jsonl | parquet"),
    tokenizer: str | None = typer.Option(
        None, help="tokenizer.json or model folder, for the retokenize fallback"
    ),
    hardware: str = typer.Option(
        "unknown", help="hardware label for the measurement context, e.g. 1xH100-SXM"
    ),
    engine: str | None = typer.Option(None, help="engine label (default: detected from /v1/models)"),
    baseline: str | None = typer.Option(None, help="named baseline this run is compared to"),
    claim: Claim | None = typer.Option(
        None,
        help="what the headline claims: throughput (judged on output tok/s, isolated with >= 2 requests "
        "per slot) or latency (judged on median TPOT); the tier needs the claim's metric isolated",
    ),
    api_key: str | None = typer.Option(None, envvar="OPENAI_API_KEY", help="bearer token"),
    reset_cache: str = typer.Option(
        "auto", help="prefix-cache reset before each trial: auto (vLLM/SGLang by engine) | none | POST path"
    ),
    transport: Transport = typer.Option(
        "auto", help="auto (lean pool for http, aiohttp for https) | aiohttp"
    ),
    token_accounting: TokenAccounting = typer.Option(
        "auto",
        help="auto: final usage only, one token per chunk checked on the warmup (per-chunk usage where "
        "chunks carry several tokens) | final | per-chunk (usage on every chunk: costs the server CPU)",
    ),
    gpu_telemetry: bool = typer.Option(
        True,
        "--gpu-telemetry/--no-gpu-telemetry",
        help="sample this host's GPUs (NVML: clocks, power, throttling) during every trial when the "
        "server runs here",
    ),
    engine_poll_s: float = typer.Option(
        1.0, help="poll the engine's /metrics queue gauges this often during a trial, seconds (0: off)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object on stdout"),
) -> None:
    """Benchmark a server: warmup + N trials, exact tokens, mean/std/CI95 per headline metric.

    Exit codes: 0 ok, 1 run-time failure, 2 bad input, 5 invalid run (the client fell behind; the
    evidence is still written).
    """
    chosen = closed_loop_defaults(concurrency) if concurrency and concurrency >= 64 else None
    picked = []
    if trials is None:
        trials = chosen.trials if chosen is not None else 3
        picked.append(f"{trials} trials")
    if num_requests is None:
        num_requests = max(256, chosen.min_requests) if chosen is not None else 256
        picked.append(f"{num_requests} requests per trial")
    if chosen is not None and picked and not as_json:
        err_console.print(f"defaults: {' and '.join(picked)} ({chosen.why})", highlight=False)
    spec = None
    if workload_file is None:
        extra = {"token_high": vocab_size} if vocab_size else {}
        spec = WorkloadSpec(
            kind=workload,
            num_requests=num_requests,
            isl=isl,
            osl=osl,
            seed=seed,
            prefix_groups=prefix_groups,
            prefix_len=prefix_len,
            dataset=dataset,
            **extra,
        )
    cfg = BenchConfig(
        endpoint=endpoint,
        model=model,
        workload=spec,
        workload_file=str(workload_file) if workload_file else None,
        concurrency=concurrency,
        rate=rate,
        arrival=arrival,
        burstiness=burstiness,
        max_concurrency=max_concurrency,
        trials=trials,
        warmup_requests=warmup,
        warmup_until_stable=warmup_until_stable,
        warmup_max_rounds=warmup_max_rounds,
        token_accounting=token_accounting,
        gpu_telemetry=gpu_telemetry,
        engine_poll_s=engine_poll_s,
        server_log=str(server_log) if server_log else None,
        gpu=gpu,
        model_card=model_card,
        tp=tp,
        request_timeout_s=timeout_s,
        slo=parse_slo(slo),
        api_key=api_key,
        hardware=f"{tp}x{gpu}" if gpu and hardware == "unknown" else hardware,
        engine=engine,
        baseline=baseline,
        claim=claim,
        transport=transport,
        reset_cache=reset_cache,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tps]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    ) as bar:
        tasks: dict[tuple[str, int], object] = {}
        t_start: dict[tuple[str, int], float] = {}

        def observe(p: BenchProgress) -> None:
            key = (p.phase, p.trial)
            if key not in tasks:
                label = f"warmup {p.trial + 1}" if p.phase == "warmup" else f"trial {p.trial + 1}/{trials}"
                tasks[key] = bar.add_task(label, total=p.total, tps="")
                t_start[key] = time.monotonic()
            dt = max(time.monotonic() - t_start[key], 1e-6)
            bar.update(tasks[key], completed=p.done, tps=f"~{p.output_tokens / dt:,.0f} tok/s")  # type: ignore[arg-type]

        result, paths = api.bench(
            cfg,
            out_dir=out,
            records_format=records_format,
            tokenizer=tokenizer,
            observer=observe,
            refuse_incomplete=True,
        )
    s = result.result.summary
    if "fallback" in paths:
        err_console.print(f"[bold yellow]warning:[/] {paths['fallback']}", highlight=False, soft_wrap=True)
    if as_json:
        print_json({**result.result.model_dump(mode="json"), "artifacts": paths})
    else:
        _render(result, paths)
    if not s.valid:
        err_console.print(
            f"[bold red]INVALID (client fell behind):[/] {'; '.join(s.invalid_reasons)}",
            highlight=False,
            soft_wrap=True,
        )
        err_console.print(f"evidence kept: {Path(paths['summary']).parent}", highlight=False, soft_wrap=True)
        raise SystemExit(EXIT_INVALID)


def _render(result: BenchRun, paths: dict[str, str]) -> None:
    ctx = result.result.context
    s = result.result.summary
    table = Table(
        title=f"{ctx.model} @ {ctx.stack.engine} {ctx.stack.engine_version or ''} | {ctx.workload.kind} "
        f"isl={ctx.workload.isl} osl={ctx.workload.osl} | "
        + (
            f"c={ctx.workload.concurrency}"
            if ctx.workload.concurrency
            else f"rate={ctx.workload.rate} {ctx.workload.arrival}"
        )
        + f" | {ctx.trials} trials | {ctx.tier}"
        + (" | SIMULATED" if ctx.stack.simulated else "")
    )
    for col in ("metric", "mean ± std", "95% CI", "CV", "per trial"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in headline_rows(result):
        table.add_row(*row)
    out_console.print(table)
    sol = sol_line(result)
    if sol:
        out_console.print(sol, highlight=False)
    w = s.warmup
    if w is not None and w.rounds:
        state = {
            True: "stable: the last two rounds agree within 10%",
            False: f"NOT stable (stopped on {w.stop})",
            None: "fixed count",
        }[w.stabilized]
        out_console.print(
            f"warmup: {w.requests} requests in {w.rounds} round(s) of {w.round_size}, {state}",
            highlight=False,
        )
    if s.accounting is not None:
        out_console.print(f"tokens: {s.accounting.used} usage ({s.accounting.reason})", highlight=False)
    for note in s.drift_notes:
        out_console.print(f"drift: {note}", highlight=False)
    for flag in s.flags:
        out_console.print(f"[bold yellow]flag:[/] {flag}", highlight=False)
    out_console.print(
        f"tier: {ctx.tier} ({'; '.join(ctx.tier_reasons) or 'all conditions met'})", highlight=False
    )
    out_console.print(f"evidence: {Path(paths['summary']).parent}", highlight=False)


@app.command("calibrate")
@handle_errors
def calibrate(
    ttft_ms: float = typer.Option(100.0, help="mock TTFT"),
    itl_ms: float = typer.Option(20.0, help="mock per-token interval"),
    isl: int = typer.Option(256, help="input tokens"),
    osl: int = typer.Option(128, help="output tokens"),
    ladder: str = typer.Option(
        ",".join(map(str, DEFAULT_LADDER)), help="concurrency ladder, comma separated"
    ),
    as_json: bool = typer.Option(False, "--json", help="print points and ceiling as JSON"),
) -> None:
    """Print this host's faithful client ceiling: highest output tok/s with TTFT and throughput within 10%."""
    truth = MockTruth(ttft_ms=ttft_ms, itl_ms=itl_ms, isl=isl, osl=osl)
    levels = [int(x) for x in ladder.split(",") if x.strip()]
    if not as_json:
        err_console.print(
            f"calibrating the client ceiling: a mock server (ttft {ttft_ms:g} ms, itl {itl_ms:g} ms, "
            f"{isl} in / {osl} out), concurrency ladder {', '.join(map(str, levels))}; a level takes "
            f"several request lifetimes ({truth.request_ms() / 1e3:.1f} s each) and prints one line "
            "when it is measured",
            highlight=False,
            soft_wrap=True,
        )

    def show(p: CalibrationPoint) -> None:
        if not as_json:
            err_console.print(
                f"c={p.concurrency:5d}  ttft {p.ttft_ms:8.2f} ms ({p.ttft_err:+.1%})  "
                f"out {p.output_tok_s:9.0f} tok/s ({p.tput_err:+.1%})  "
                f"{'faithful' if p.faithful else 'NOT faithful'}",
                highlight=False,
            )

    points, best = api.calibrate(truth, levels, on_point=show)
    if as_json:
        print_json(
            {
                "truth": truth.model_dump(),
                "points": [p.model_dump() for p in points],
                "ceiling": best.model_dump() if best else None,
            }
        )
        return
    if best is None:
        out_console.print("ceiling: none (no faithful point; this host cannot measure even the lowest level)")
    else:
        out_console.print(
            f"ceiling: {best.output_tok_s:,.0f} output tok/s at concurrency {best.concurrency} "
            f"(mock ttft {ttft_ms} ms, itl {itl_ms} ms, {isl} in / {osl} out; tolerance 10%)"
        )
