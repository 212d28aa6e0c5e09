"""`perftune optimize`, `perftune lake ...`, `perftune frontier`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from perftune.cli.common import (
    ProgressRenderer,
    err_console,
    handle_errors,
    out_console,
    print_json,
    sigterm_as_interrupt,
)
from perftune.errors import ConfigError

lake_app = typer.Typer(help="The perf lake (DuckDB): query, show, export.")


@handle_errors
def optimize(
    model: str | None = typer.Argument(None, help="catalog name, model folder or hub id"),
    engines: str = typer.Option("sim", help="comma-separated: vllm, sglang, llamacpp, sim, mock"),
    gpu: str = typer.Option("h100", help="GPU model"),
    gpus: int = typer.Option(1, help="GPUs on the node"),
    model_path: str | None = typer.Option(None, help="model folder real engines load (default: MODEL)"),
    focus: str = typer.Option("throughput", help="throughput | latency"),
    slo_ttft_ms: float = typer.Option(2000.0, help="throughput focus: mean TTFT bound"),
    slo_tpot_ms: float = typer.Option(50.0, help="throughput focus: median TPOT bound"),
    target_concurrency: int = typer.Option(16, help="latency focus: the concurrency TPOT is judged at"),
    slo: str = typer.Option(
        "mlperf-server",
        help="phase 8.3 SLO capacity: a preset (mlperf-server, mlperf-interactive: by model size; "
        "perftune capacity --list-presets) or ttft=MS,tpot=MS,p=99",
    ),
    capacity: bool = typer.Option(
        True, "--capacity/--no-capacity", help="phase 8.3: search each config's SLO capacity"
    ),
    capacity_mode: str = typer.Option(
        "open", help="phase 8.3: open (Poisson req/s, as MLPerf's Server scenario) or closed (concurrency)"
    ),
    capacity_duration_s: float = typer.Option(
        10.0, help="phase 8.3, open loop: seconds of arrivals per trial"
    ),
    top_x: int = typer.Option(3, help="phase 8 benches the baseline and the top X tuned configs per engine"),
    fresh_baseline: bool = typer.Option(
        False, "--fresh-baseline", help="ignore the standing champion: the engine defaults are the baseline"
    ),
    workloads: str = typer.Option("random,prefix,chat,code,long", help="phase 8 workloads"),
    ladder: str | None = typer.Option(None, help="phase 8 concurrencies, e.g. 8,32,64 (default: by focus)"),
    isl: int = typer.Option(1024, help="random/prefix input tokens"),
    osl: int = typer.Option(128, help="output tokens"),
    trials: int = typer.Option(3, help="trials per cell"),
    tune: bool = typer.Option(False, "--tune", help="run phase 3 (lever tuning) inside the campaign"),
    budget_gpu_min: float = typer.Option(60.0, help="phase 3 budget, GPU-minutes"),
    profile_layers: str = typer.Option(
        "l1,l2,l3,l4", help="phase 2 profiler layers: l1 py-spy, l2 kernel timeline, l3 GPM, l4 ncu"
    ),
    profile_concurrency: str | None = typer.Option(
        None, help="phase 2 window concurrencies, e.g. 1,8,64 (default 1, 8 and the ladder's highest)"
    ),
    quant_target: str | None = typer.Option(
        None, help="phase 4 schemes, e.g. fp8-dynamic or gguf-q8_0,gguf-q4_k_m (default: none)"
    ),
    ack_compute: bool = typer.Option(
        False, "--ack-compute", help="phase 4 may run quantization jobs (refused without it)"
    ),
    accuracy_tolerance: float = typer.Option(
        1.0, help="phase 5: largest accuracy drop a quantized variant may have, absolute points"
    ),
    eval_tasks: str = typer.Option("mmlu,humaneval", help="phase 5 accuracy tasks"),
    mmlu_n: int = typer.Option(1000, help="phase 5 MMLU items"),
    humaneval_n: int = typer.Option(40, help="phase 5 HumanEval problems"),
    eval_api: str = typer.Option("auto", help="phase 5: auto, chat or completions"),
    spec_method: str | None = typer.Option(
        None, help="phase 7 speculative methods, e.g. ngram or ngram,eagle3 (default: none)"
    ),
    spec_k: str = typer.Option("2,4", help="phase 7: K (drafted tokens per step) to screen"),
    spec_workloads: str = typer.Option("code,chat,random", help="phase 7: the workloads its gate judges"),
    spec_concurrency: str | None = typer.Option(None, help="phase 7 A/B concurrencies (default 1)"),
    draft_model: str | None = typer.Option(None, help="phase 7: the draft or EAGLE head folder"),
    spec_against: str | None = typer.Option(
        None, help="phase 7: METHOD:K the standing config speculates with (e.g. mtp:3; default: none)"
    ),
    engine_arg: list[str] = typer.Option([], help="ENGINE=FLAG passed to that engine, repeatable"),
    runs_dir: Path = typer.Option(Path("runs"), help="where campaign bundles go"),
    lake: Path | None = typer.Option(None, help="DuckDB lake (default: the per-user data folder)"),
    registry: Path | None = typer.Option(None, help="known-good registry (default: the per-user one)"),
    findings: Path | None = typer.Option(None, help="value-findings ledger (default: the per-user one)"),
    resume: str | None = typer.Option(None, help="resume this run id"),
    until: str | None = typer.Option(None, help="stop after this phase"),
    start_phase: str | None = typer.Option(None, help="start at this phase"),
    skip: list[str] = typer.Option([], help="skip this phase, repeatable"),
    yes: bool = typer.Option(False, "--yes", "-y", help="continue on green without asking"),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="print the campaign state as JSON at the end: stdout holds only that JSON; progress goes "
        "to stderr as plain lines (never animated)",
    ),
) -> None:
    """Drive a model through the gated campaign: resolve, baselines, suite, champion, ratchet.

    Progress goes to stderr: on a terminal a live display (phase N of M, an engine's start with its
    log's last line, each trial's live tok/s, the tuner's GPU-minutes) under the campaign's lines; in
    a pipe, or with --json, the same as plain lines, throttled."""
    from perftune.api import optimize as run
    from perftune.campaign.state import Intent

    intent = None
    if resume is None:
        if model is None:
            raise ConfigError(
                "optimize needs a MODEL or --resume RUN_ID", hint="e.g. perftune optimize llama-3.1-8b"
            )
        eargs: dict[str, list[str]] = {}
        for item in engine_arg:
            eng, sep, flag = item.partition("=")
            if not sep:
                raise ConfigError(
                    f"bad --engine-arg '{item}'", hint="write ENGINE=FLAG, e.g. vllm=--load-format=dummy"
                )
            eargs.setdefault(eng, []).extend(
                flag.split("=", 1) if flag.startswith("--") and "=" in flag else [flag]
            )
        intent = Intent.model_validate(  # the flat keyword form: validated into its parts
            dict(
                model=model,
                model_path=model_path,
                engines=[e.strip() for e in engines.split(",") if e.strip()],
                gpu=gpu,
                gpus=gpus,
                focus=focus,
                slo_ttft_ms=slo_ttft_ms,
                slo_tpot_ms=slo_tpot_ms,
                target_concurrency=target_concurrency,
                capacity=capacity,
                capacity_slo=slo,
                capacity_mode=capacity_mode,
                capacity_duration_s=capacity_duration_s,
                top_x=top_x,
                baseline_from_champion=not fresh_baseline,
                workloads=[w.strip() for w in workloads.split(",") if w.strip()],
                ladder=[int(x) for x in ladder.split(",")] if ladder else [],
                isl=isl,
                osl=osl,
                trials=trials,
                tune=tune,
                budget_gpu_min=budget_gpu_min,
                profile_layers=[x.strip() for x in profile_layers.split(",") if x.strip()],
                profile_concurrency=int_list(profile_concurrency, "--profile-concurrency"),
                engine_args=eargs,
                quant_schemes=[x.strip() for x in (quant_target or "").split(",") if x.strip()],
                ack_compute=ack_compute,
                accuracy_tolerance_pts=accuracy_tolerance,
                eval_tasks=[x.strip() for x in eval_tasks.split(",") if x.strip()],
                mmlu_n=mmlu_n,
                humaneval_n=humaneval_n,
                eval_api=eval_api,
                spec_methods=[x.strip() for x in (spec_method or "").split(",") if x.strip()],
                spec_ks=int_list(spec_k, "--spec-k") or [],
                spec_workloads=[x.strip() for x in spec_workloads.split(",") if x.strip()],
                spec_concurrencies=int_list(spec_concurrency, "--spec-concurrency") or [],
                spec_draft_model=draft_model,
                spec_against=spec_against,
                registry=str(registry) if registry else None,
                findings=str(findings) if findings else None,
            )
        )
        bad = [e for e in intent.serving.engines if e not in ("vllm", "sglang", "llamacpp", "sim", "mock")]
        if bad:
            raise ConfigError(
                f"unknown engine(s): {', '.join(bad)}", hint="vllm, sglang, llamacpp, sim, mock"
            )
        badw = [w for w in intent.suite.workloads if w not in ("random", "prefix", "chat", "code", "long")]
        if badw:
            raise ConfigError(
                f"unknown workload(s): {', '.join(badw)}", hint="random, prefix, chat, code, long"
            )

    def confirm(nxt: str) -> bool:
        if yes:
            return True
        if sys.stdin.isatty():
            return typer.confirm(f"continue to phase {nxt}?", default=True)
        return False

    renderer = ProgressRenderer(err_console, live=err_console.is_terminal and not as_json)

    def confirm_outside_live(nxt: str) -> bool:
        with renderer.paused():  # a prompt under a live display would be redrawn over
            return confirm(nxt)

    with sigterm_as_interrupt(), renderer:
        run_dir, state = run(
            runs_dir=runs_dir,
            intent=intent,
            resume=resume,
            until=until,
            start_phase=start_phase,
            skip=skip,
            confirm=confirm_outside_live,
            observe=renderer,
            lake=lake,
        )
    if as_json:
        print_json(state.model_dump(mode="json"))
    else:
        sys.stdout.write((run_dir / "summary.md").read_text() + f"\nbundle: {run_dir}\n")
    if any(p.status == "red" for p in state.phases.values()):
        raise SystemExit(4)


@lake_app.command("query")
@handle_errors
def lake_query(
    sql: str = typer.Argument(..., help="SQL over campaigns, cells, trials, requests, champions, findings"),
    lake: Path | None = typer.Option(None, help="DuckDB lake path"),
    as_json: bool = typer.Option(False, "--json", help="print rows as JSON"),
) -> None:
    """Run a SQL query against the lake (read-only)."""
    from perftune.api import lake_query as q

    _render(q(sql, lake), as_json)


@lake_app.command("show")
@handle_errors
def lake_show(
    what: str = typer.Argument(..., help="campaigns | champions"),
    lake: Path | None = typer.Option(None, help="DuckDB lake path"),
    model: str | None = typer.Option(None, help="only this model"),
    as_json: bool = typer.Option(False, "--json", help="print rows as JSON"),
) -> None:
    """Show campaigns or champions (every row with its tier)."""
    from perftune.api import lake_show as s

    _render(s(what, lake, model), as_json)


@lake_app.command("export")
@handle_errors
def lake_export(
    out: Path = typer.Option(..., help="folder for one Parquet file per table"),
    lake: Path | None = typer.Option(None, help="DuckDB lake path"),
) -> None:
    """Export every lake table to Parquet."""
    from perftune.lake.db import default_lake, export_parquet

    for f in export_parquet(lake or default_lake(), out):
        out_console.print(f, highlight=False)


@handle_errors
def frontier(
    model: str | None = typer.Option(None, help="only this model"),
    findings: Path | None = typer.Option(None, help="value-findings ledger (default: the per-user one)"),
    as_json: bool = typer.Option(False, "--json", help="print rows as JSON"),
) -> None:
    """The ranked frontier of open levers, per model (the next lever first)."""
    from perftune.api import frontier as f

    _render(f(findings, model), as_json)


def _cell_text(v: object) -> str:
    """Readable numbers: 11,900.1 rather than 1.19e+04 or 11900.123456789."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _render(rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    if not rows:
        out_console.print("(no rows)")
        return
    t = Table()
    for col in rows[0]:
        t.add_column(str(col))
    for r in rows:
        t.add_row(*[_cell_text(v) for v in r.values()])
    out_console.print(t)


def int_list(text: str | None, flag: str) -> list[int] | None:
    """A comma-separated list of integers >= 1, or a one-line error naming the flag."""
    if not text:
        return None
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(x < 1 for x in out):
        raise ConfigError(f"bad {flag} '{text}'", hint="comma-separated integers >= 1, e.g. 1,8,64")
    return out


@handle_errors
def profile(
    run: str = typer.Argument(..., help="campaign run id (phase 0 done)"),
    layers: str = typer.Option(
        "l1,l2,l3,l4", help="profiler layers: l1 py-spy, l2 kernel timeline, l3 GPM, l4 ncu"
    ),
    concurrency: str | None = typer.Option(
        None, help="window concurrencies, e.g. 1,8,64 (default 1, 8, max)"
    ),
    reparse: bool = typer.Option(
        False, "--reparse", help="no deploy: the captures' figures again from their raw artifacts, then 2.5"
    ),
    runs_dir: Path = typer.Option(Path("runs"), help="where campaign bundles are"),
    lake: Path | None = typer.Option(None, help="DuckDB lake (default: the per-user data folder)"),
) -> None:
    """Phases 2 and 2.5 of a campaign: profile each engine in four layers, then the cited lever ledger."""
    from perftune.api import profile as run_profile

    conc = int_list(concurrency, "--concurrency")
    with sigterm_as_interrupt(), ProgressRenderer(err_console) as renderer:
        run_dir, state = run_profile(
            run,
            runs_dir=runs_dir,
            layers=[x.strip() for x in layers.split(",") if x.strip()],
            concurrency=conc,
            observe=renderer,
            lake=lake,
            reparse=reparse,
        )
    for pid in ("2", "2.5"):
        p = state.phases[pid]
        sys.stdout.write(
            f"phase {pid}: {p.status} — {p.reason}\n" + (f"{p.headline}\n" if p.headline else "")
        )
    ledger = run_dir / "findings" / "ledger.md"
    if ledger.exists():
        sys.stdout.write(f"see {ledger}\n")
    if any(state.phases[pid].status == "red" for pid in ("2", "2.5")):
        raise SystemExit(4)


@handle_errors
def tune(
    run: str = typer.Option(..., help="campaign run id (phases 0-1 done)"),
    engines: str | None = typer.Option(
        None, help="comma-separated engines to tune (default: the campaign's)"
    ),
    budget_gpu_min: float = typer.Option(60.0, help="GPU-minutes the tuner may spend"),
    workloads: str | None = typer.Option(
        None, help="comma-separated workloads each arm is measured on (default: random,prefix)"
    ),
    top_k: int | None = typer.Option(None, help="arms besides the baseline given the full treatment (3)"),
    focus: str | None = typer.Option(
        None, help="throughput | latency (default: the campaign's); latency scores median TPOT at the target"
    ),
    target_concurrency: int | None = typer.Option(
        None, help="latency focus: the concurrency arms are judged at (default: the campaign's)"
    ),
    stop_after_s: float | None = typer.Option(
        None, help="start no new deploy after this many seconds; re-run the command to resume"
    ),
    runs_dir: Path = typer.Option(Path("runs"), help="where campaign bundles are"),
    lake: Path | None = typer.Option(None, help="DuckDB lake (default: the per-user data folder)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Phase 3 of a campaign: tune each engine's levers (same node, interleaved, >= 3 trials)."""
    from perftune.api import tune as run_tune

    if focus is not None and focus not in ("throughput", "latency"):
        raise ConfigError(f"unknown focus '{focus}'", hint="--focus throughput or --focus latency")
    if (
        not yes
        and sys.stdin.isatty()
        and not typer.confirm(f"tune {run} with up to {budget_gpu_min} GPU-min?")
    ):
        raise SystemExit(1)
    err_console.print(
        f"tuning {run} (budget {budget_gpu_min:g} GPU-min): every deploy and trial is reported below",
        highlight=False,
    )
    with sigterm_as_interrupt(), ProgressRenderer(err_console) as renderer:
        run_dir, state = run_tune(
            run,
            runs_dir=runs_dir,
            engines=[e.strip() for e in engines.split(",")] if engines else None,
            budget_gpu_min=budget_gpu_min,
            observe=renderer,
            lake=lake,
            workloads=[w.strip() for w in workloads.split(",") if w.strip()] if workloads else None,
            focus=focus,
            target_concurrency=target_concurrency,
            top_k=top_k,
            stop_after_s=stop_after_s,
        )
    p = state.phases["3"]
    tune_md = run_dir / "phase3" / "TUNE.md"
    sys.stdout.write(
        f"phase 3: {p.status} — {p.reason}\n{p.headline}\n"
        + (f"see {tune_md}\n" if tune_md.exists() else "no TUNE.md: the tuner stopped before writing it\n")
    )
    if p.status == "red":
        sys.stdout.write(
            f"the campaign is not blocked: perftune optimize --resume {run} --runs-dir {runs_dir} --yes "
            "goes on with the baseline; the same tune command resumes tuning from its journal\n"
        )
    if p.status == "red":
        raise SystemExit(4)
