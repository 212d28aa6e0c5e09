"""`perftune capacity`: the highest load a server sustains inside an SLO. Parse, call the api, render."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from perftune import api
from perftune.bench.capacity import CapacityConfig, CapacityEvent, CapacityResult, Mode, fmt_load
from perftune.bench.output import fmt_num
from perftune.bench.workloads import WorkloadKind, WorkloadSpec
from perftune.cli.common import err_console, handle_errors, out_console, print_json
from perftune.errors import ConfigError


def _ladder(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(
            f"--ladder '{text}' is not a comma list of numbers", hint="e.g. --ladder 1,4,16,64"
        ) from e
    if not out:
        raise ConfigError("--ladder is empty", hint="e.g. --ladder 1,4,16,64")
    return out


@handle_errors
def capacity(
    endpoint: str | None = typer.Option(None, help="server base URL, e.g. http://127.0.0.1:8000"),
    model: str | None = typer.Option(None, help="served model name"),
    slo: str = typer.Option(
        "mlperf-server",
        help="a preset (mlperf-server, mlperf-interactive: by model size; mlperf-server-8b, ...) or "
        "ttft=MS,tpot=MS[,p=50|90|95|99]",
    ),
    slo_file: Path | None = typer.Option(None, help="YAML file of your own SLO presets (see --list-presets)"),
    model_size: str | None = typer.Option(
        None, help="total parameters for the size class of a preset family, e.g. 8b, 70b, 671b"
    ),
    moe: bool = typer.Option(False, "--moe", help="with --model-size: the model is a mixture of experts"),
    model_card: str | None = typer.Option(
        None,
        help="catalog name or model folder: the size class of a preset family (and the %SoL with --gpu); "
        "default: --model when it is a catalog name",
    ),
    mode: Mode = typer.Option("closed", help="closed: search concurrency | open: search Poisson req/s"),
    ladder: str | None = typer.Option(
        None, help="bracketing loads, comma list (closed default 1,2,4,...,1024; open: doubling)"
    ),
    max_load: float | None = typer.Option(None, help="cap on the default ladder"),
    start_rate: float = typer.Option(1.0, help="open loop: first rung of the default ladder, req/s"),
    trials: int = typer.Option(3, help="counted trials per point"),
    max_points: int = typer.Option(10, help="most points measured"),
    resolution: float = typer.Option(
        0.10, help="stop bisecting at closed: hi-lo <= max(1, r*lo); open: hi/lo <= 1+r"
    ),
    workload: WorkloadKind = typer.Option("random", help="random | prefix | chat | code | long"),
    isl: int | None = typer.Option(None, help="input tokens (random/prefix/long)"),
    osl: int | None = typer.Option(None, help="output tokens (fixed with ignore_eos + min_tokens)"),
    seed: int = typer.Option(0, help="prompt and arrival seed"),
    vocab_size: int | None = typer.Option(None, help="synthetic token ids stay below this (default 32000)"),
    requests_per_slot: int = typer.Option(2, help="closed loop: requests per trial = this x concurrency"),
    min_requests: int = typer.Option(16, help="fewest requests per trial"),
    duration_s: float = typer.Option(30.0, help="open loop: requests per trial = rate x this"),
    max_concurrency: int | None = typer.Option(None, help="open loop: cap on in-flight requests"),
    warmup: int | None = typer.Option(None, help="minimum warmup requests per point (default min(16, n))"),
    hardware: str = typer.Option("unknown", help="hardware label for the context, e.g. 1xH100-SXM"),
    gpu: str | None = typer.Option(None, help="GPU of the server, for the decode %SoL (with --model-card)"),
    tp: int = typer.Option(1, help="tensor parallel size of the server (for the %SoL only)"),
    server_log: Path | None = typer.Option(None, help="engine log: compilation during a trial flags it"),
    engine: str | None = typer.Option(None, help="engine label (default: detected from /v1/models)"),
    api_key: str | None = typer.Option(None, envvar="OPENAI_API_KEY", help="bearer token"),
    timeout_s: float = typer.Option(600.0, help="per-request timeout, seconds"),
    out: Path | None = typer.Option(None, help="capacity folder (default runs/capacity-<time>-<id>)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object on stdout"),
    list_presets: bool = typer.Option(False, "--list-presets", help="print the SLO presets and exit"),
) -> None:
    """Find the highest load a server sustains inside an SLO (percentile TTFT and TPOT, <= 1% failed).

    Climbs a ladder to the first failing point, then bisects; every point is a full bench with
    --trials trials in <out>/points/. Exit codes: 0 ok (also when no load is sustained), 1 run-time
    failure, 2 bad input.
    """
    if list_presets:
        _render_presets(api.slo_presets(slo_file), as_json)
        return
    if endpoint is None or model is None:
        raise ConfigError(
            "give --endpoint and --model", hint="e.g. --endpoint http://127.0.0.1:8000 --model my-model"
        )
    resolved = api.capacity_slo(
        slo,
        model_size=model_size,
        model_card=model_card,
        served_model=model,
        moe=moe,
        presets_file=slo_file,
    )
    extra = {"token_high": vocab_size} if vocab_size else {}
    cfg = CapacityConfig(
        slo=resolved,
        mode=mode,
        ladder=_ladder(ladder),
        max_load=max_load,
        start_rate=start_rate,
        max_points=max_points,
        resolution=resolution,
        endpoint=endpoint,
        model=model,
        workload=WorkloadSpec(kind=workload, isl=isl, osl=osl, seed=seed, **extra),
        trials=trials,
        requests_per_slot=requests_per_slot,
        min_requests=min_requests,
        duration_s=duration_s,
        max_concurrency=max_concurrency,
        warmup_requests=warmup,
        hardware=f"{tp}x{gpu}" if gpu and hardware == "unknown" else hardware,
        server_log=str(server_log) if server_log else None,
        gpu=gpu,
        model_card=model_card,
        tp=tp,
        engine=engine,
        api_key=api_key,
        request_timeout_s=timeout_s,
    )
    err_console.print(
        f"capacity search: {resolved.name}: {resolved.statement()}; {mode} loop, {trials} trials per point, "
        f"at most {max_points} points",
        highlight=False,
        soft_wrap=True,
    )

    def observe(e: CapacityEvent) -> None:
        what = fmt_load(mode, e.load)
        if e.kind == "start":
            err_console.print(
                f"point {e.index + 1}: {what}, {trials} x {e.requests} requests ...", highlight=False
            )
        elif e.point is not None:
            verdict = "pass" if e.point.passed else "FAIL: " + ", ".join(e.point.reasons)
            reused = " (reused)" if e.kind == "reused" else ""
            err_console.print(f"point {e.index + 1}: {what}{reused}: {verdict}", highlight=False)

    result, folder = api.capacity(cfg, out, observer=None if as_json else observe)
    if as_json:
        print_json({**result.model_dump(mode="json"), "folder": str(folder)})
        return
    _render(result, folder)


def _render(res: CapacityResult, folder: Path) -> None:
    out_console.print(res.statement, highlight=False, soft_wrap=True)
    p = f"p{res.slo.percentile}"
    table = Table(title=f"{res.slo.name}: {res.slo.statement()} | {res.mode} loop | {res.tier}")
    cols = ("#", "concurrency" if res.mode == "closed" else "req/s", "result", f"{p} TTFT ms", f"{p} TPOT ms")
    for col in (*cols, "output tok/s", "req/s done", "failed", "folder"):
        table.add_column(col, justify="left" if col in ("result", "folder") else "right")
    for i, pt in enumerate(res.points, 1):
        verdict = ("[green]pass[/]" if pt.passed else "[red]FAIL[/]") + (" (marginal)" if pt.marginal else "")
        table.add_row(
            str(i),
            str(int(pt.load)) if res.mode == "closed" else f"{pt.load:g}",
            verdict,
            _pm(pt.ttft_ms.mean, pt.ttft_ms.std),
            _pm(pt.tpot_ms.mean, pt.tpot_ms.std),
            fmt_num(pt.output_tok_s),
            fmt_num(pt.req_s),
            f"{pt.failed_share:.1%}",
            pt.folder or "-",
        )
    out_console.print(table)
    for note in res.notes:
        out_console.print(f"[bold yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    out_console.print(
        f"tier: {res.tier} ({'; '.join(res.tier_reasons) or 'all conditions met'})",
        highlight=False,
        soft_wrap=True,
    )
    out_console.print(f"bundle: {folder / 'capacity.json'}", highlight=False, soft_wrap=True)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return fmt_num(mean) + (f" ± {fmt_num(std)}" if std is not None else "")


def _render_presets(rows: list[dict[str, str]], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    table = Table(title="SLO presets (perftune capacity --slo NAME)")
    for col in ("name", "kind", "SLO", "description", "source"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["slo"], r["description"], r["source"])
    out_console.print(table)
