"""`perftune sim-server`, `perftune sim predict`, `perftune sim calibrate`: the simulated engine."""

from __future__ import annotations

from pathlib import Path

import typer

from perftune.cli.common import handle_errors, out_console, print_json, serve_forever

CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
FAULTS = "Test engine (fault injection)"
app = typer.Typer(help="The simulated engine: predict in virtual time, calibrate against real runs.")


@handle_errors
def sim_server(
    ctx: typer.Context,
    model: str = typer.Option(..., help="model folder (its tokenizer counts tokens) or catalog name"),
    gpu: str = typer.Option("h100", help="GPU to simulate (ceilings.yaml key or alias)"),
    port: int = typer.Option(8812, help="port (0: any free port)"),
    host: str = typer.Option("127.0.0.1", help="bind address"),
    calibration: Path | None = typer.Option(None, help="calibration YAML (default: the built-in one)"),
    ready_json: bool = typer.Option(False, help="print one JSON line with the bound port when ready"),
    fault: str | None = typer.Option(
        None,
        metavar="KIND",
        help="TEST ENGINE: make requests fail: wedge (the stream opens, never a token), http500 (a 500 "
        "with an OpenAI error body), drop (the connection closes mid-stream), stall (the first byte "
        "waits --fault-stall-s)",
        rich_help_panel=FAULTS,
    ),
    fault_after: int | None = typer.Option(
        None,
        help="TEST ENGINE: the fault applies to generate requests after the Nth (default 0: all)",
        rich_help_panel=FAULTS,
    ),
    fault_stall_s: float | None = typer.Option(
        None, help="TEST ENGINE: stall: seconds before the first byte (default 5)", rich_help_panel=FAULTS
    ),
    fault_drop_tokens: int | None = typer.Option(
        None,
        help="TEST ENGINE: drop: tokens streamed before the connection closes (default 2)",
        rich_help_panel=FAULTS,
    ),
    fault_when: list[str] | None = typer.Option(
        None,
        metavar="FIELD=VALUE",
        help="TEST ENGINE: only when the served config has FIELD=VALUE, e.g. kv_cache_dtype=fp8 (a lever "
        "that avoids the fault); repeatable",
        rich_help_panel=FAULTS,
    ),
) -> None:
    """Serve a simulated vLLM in real time. Extra arguments are vLLM flags, e.g. --max-num-seqs 64."""
    from perftune.api import sim_setup
    from perftune.sim.config import parse_fault
    from perftune.sim.server import SimServer, serve

    flags = list(ctx.args)
    injected = parse_fault(fault, fault_after, fault_stall_s, fault_drop_tokens, fault_when)
    card, g, cfg, cal, model_dir = sim_setup(model, gpu, flags, calibration)
    if cfg.served_name is None:
        cfg = cfg.model_copy(update={"served_name": model})  # vLLM serves the model argument by default
    if injected is not None:
        cfg = cfg.model_copy(update={"fault": injected})
    srv = SimServer(card, g, cfg, cal, model_dir)

    serve_forever(
        lambda h, p, ready: serve(srv, h, p, ready),
        host,
        port,
        ready_json=ready_json,
        banner=lambda bound: (
            f"SIMULATED vLLM on http://{host}:{bound}: {srv.served} on {g.key} "
            f"({srv.version}); KV {srv.core.kv_tokens:,} tokens; {srv.tok.source}"
            + (f"; TEST FAULT {srv.fault.kind} after {srv.fault.after} requests" if srv.fault else "")
        ),
    )


@app.command("predict", context_settings=CONTEXT)
@handle_errors
def predict(
    ctx: typer.Context,
    model: str = typer.Option(..., help="catalog name or model folder"),
    gpu: str = typer.Option("h100", help="GPU to simulate"),
    workload: str = typer.Option("random", help="random | prefix | chat | code | long"),
    isl: int | None = typer.Option(None, help="input tokens (random, prefix, long)"),
    osl: int | None = typer.Option(None, help="output tokens"),
    num_requests: int | None = typer.Option(
        None, help="requests per trial (default: 4 x concurrency, >= 32)"
    ),
    concurrency: int | None = typer.Option(None, help="closed-loop concurrency"),
    rate: float | None = typer.Option(None, help="open-loop Poisson rate, req/s"),
    trials: int = typer.Option(3, help="trials (step-time jitter is seeded)"),
    seed: int = typer.Option(0, help="workload seed"),
    calibration: Path | None = typer.Option(None, help="calibration YAML (default: the built-in one)"),
    scheduler: str = typer.Option(
        "vllm", help="whose step composition: vllm (V1 token budget, decodes first) or sglang (prefill first)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the full result as JSON"),
) -> None:
    """Predict the bench metrics of a configuration in virtual time (ms). Extra args are vLLM flags."""
    from perftune.api import sim_predict
    from perftune.bench.workloads import WorkloadSpec

    n = num_requests or max(32, 4 * (concurrency or 8))
    spec = WorkloadSpec(kind=workload, isl=isl, osl=osl, num_requests=n, seed=seed)
    res = sim_predict(
        model,
        gpu,
        spec,
        concurrency=concurrency,
        rate=rate,
        trials=trials,
        flags=ctx.args,
        calibration=calibration,
        scheduler=scheduler,
    )
    if as_json:
        print_json(res.model_dump(mode="json"))
        return
    out_console.print(
        f"[bold]SIMULATED[/] {res.context.model} on {res.context.hardware}, "
        f"{res.context.stack.engine_version}",
        highlight=False,
    )
    from perftune.api import sim_intervals

    bars = {
        b.metric: b
        for b in sim_intervals(
            model, gpu, res, spec.kind, concurrency, flags=ctx.args, calibration=calibration
        )
    }
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "output_tok_s", "req_s"):
        a = res.metric(key)
        bar = f"  {bars[key].describe()}" if key in bars else ""
        out_console.print(
            f"  {key:14s} {a.mean:10.2f} ± {a.std or 0:.2f}  (n={a.n} trials){bar}", highlight=False
        )


@app.command("spec", context_settings=CONTEXT)
@handle_errors
def spec(
    ctx: typer.Context,
    model: str = typer.Option(..., help="catalog name or model folder"),
    gpu: str = typer.Option("h100", help="GPU to simulate"),
    k: int = typer.Option(4, min=1, max=16, help="drafted tokens per step (K)"),
    acceptance: float | None = typer.Option(None, help="per-token acceptance probability (i.i.d. profile)"),
    per_pos: str | None = typer.Option(None, help="measured per-position acceptance, e.g. 0.7,0.5,0.3"),
    coverage: float = typer.Option(
        1.0,
        help="share of decode steps that carry a draft (prompt lookup drafts only where the context "
        "matches: 0.2-0.3 on chat and code, measured)",
    ),
    context: int = typer.Option(1024, min=1, help="context tokens per sequence"),
    concurrency: str = typer.Option("1,2,4,8,16,32,64,128,256", help="concurrencies to predict"),
    calibration: Path | None = typer.Option(None, help="calibration YAML (default: the built-in one)"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """Predict what n-gram speculative decoding does to decode TPOT and throughput per concurrency, and
    the crossover past which it loses. SIMULATED: acceptance is given, never predicted from content."""
    from perftune.api import sim_spec
    from perftune.cli.campaign import int_list
    from perftune.errors import ConfigError

    try:
        pp = [float(x) for x in per_pos.split(",")] if per_pos else None
    except ValueError:
        raise ConfigError(
            f"bad --per-pos '{per_pos}'", hint="comma-separated shares, e.g. 0.7,0.5,0.3"
        ) from None
    res = sim_spec(
        model,
        gpu,
        k=k,
        acceptance=acceptance,
        per_pos=pp,
        coverage=coverage,
        context=context,
        concurrencies=int_list(concurrency, "--concurrency") or [1],
        flags=ctx.args,
        calibration=calibration,
    )
    if as_json:
        print_json(res)
        return
    out_console.print(
        f"[bold]SIMULATED[/] {res['model']} on {res['gpu']}, K={res['k']}, per-position acceptance "
        f"{', '.join(f'{x:.2f}' for x in res['per_pos'])}, coverage {res['coverage']:.2f}, context "
        f"{res['context']}; draft: {res['draft']}",
        highlight=False,
    )
    out_console.print("     c  tokens/step  TPOT ms base -> spec  speedup  tok/s ratio", highlight=False)
    for r in res["rows"]:
        out_console.print(
            f"  {r['concurrency']:4d}  {r['tokens_per_step']:11.2f}  {r['base_tpot_ms']:8.2f} -> "
            f"{r['spec_tpot_ms']:6.2f}  {r['tpot_speedup']:7.2f}  {r['tok_s_ratio']:11.2f}",
            highlight=False,
        )
    x = res["crossover"]
    out_console.print(
        f"crossover: speculation stops lowering TPOT at c={x}" if x else "crossover: none in this range",
        highlight=False,
    )


@app.command("calibrate")
@handle_errors
def calibrate(
    measurements: list[Path] = typer.Argument(
        None, help="perftune bench summary.json / points.jsonl / points.yaml"
    ),
    bundles: list[Path] = typer.Option(
        None,
        "--from",
        help="campaign or tune folders: every real closed-loop random-workload cell in them calibrates",
    ),
    out: Path = typer.Option(..., help="calibration YAML to write"),
    model: str = typer.Option("llama-3.1-8b", help="the model the measurements were taken on"),
    gpu: str | None = typer.Option(None, help="GPU, when the measurements' hardware label is ambiguous"),
    device_memory_mib: float | None = typer.Option(None, help="device memory the engine saw (nvidia-smi)"),
    kv_tokens: int | None = typer.Option(
        None, help="KV-cache tokens the engine reported at its default fraction"
    ),
    maxiter: int = typer.Option(200, help="optimizer iterations"),
    as_json: bool = typer.Option(False, "--json", help="print the calibration as JSON"),
) -> None:
    """Fit the simulator's efficiency factors to real measurements; the calibration keeps its residuals
    per regime (concurrency band/dtype/workload), which give every later prediction its interval."""
    from perftune.api import sim_calibrate

    skipped: dict[str, int] = {}
    cal = sim_calibrate(
        measurements or [],
        out,
        bundles=bundles or [],
        skipped=skipped,
        model=model,
        gpu_name=gpu,
        device_memory_mib=device_memory_mib,
        kv_tokens=kv_tokens,
        maxiter=maxiter,
    )
    if as_json:
        print_json(cal.model_dump(mode="json"))
        return
    out_console.print(
        f"wrote {out}: fit error on the training points (MAPE %) {cal.train_mape_pct}; "
        f"{len(cal.sources)} source file(s)",
        highlight=False,
    )
    for why, n in sorted(skipped.items()):
        out_console.print(f"  skipped {n}: {why}", highlight=False)
    out_console.print("  residuals per regime, log(predicted/measured) mean +/- sd (n):", highlight=False)
    for reg, ms in sorted(cal.residuals.items()):
        cells = ", ".join(f"{k} {r.mean:+.3f} +/- {r.sd:.3f}" for k, r in ms.items())
        n = max(r.n for r in ms.values())
        out_console.print(f"    {reg:24s} (n={n}) {cells}", highlight=False)
