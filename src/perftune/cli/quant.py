"""`perftune quantize` (phase 4), `perftune validate` (phase 5) and `perftune specdec` (phase 7) on an
existing campaign."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from perftune.cli.common import ProgressRenderer, err_console, handle_errors, sigterm_as_interrupt


def _report(run_dir: Path, state: object, pid: str, doc: str) -> None:
    p = state.phases[pid]  # type: ignore[attr-defined]
    sys.stdout.write(f"phase {pid}: {p.status} — {p.reason}\n" + (f"{p.headline}\n" if p.headline else ""))
    if p.hint and p.status == "red":
        sys.stdout.write(f"hint: {p.hint}\n")
    if (run_dir / doc).exists():
        sys.stdout.write(f"see {run_dir / doc}\n")
    if p.status == "red":
        raise SystemExit(4)


@handle_errors
def quantize(
    run: str = typer.Argument(..., help="campaign run id (phase 0 done)"),
    scheme: str = typer.Option(
        ..., help="comma-separated: fp8-dynamic, w8a8-fp8, w4a16, nvfp4, modelopt-fp8, gguf-q8_0, gguf-q4_k_m"
    ),
    ack_compute: bool = typer.Option(
        False, "--ack-compute", help="let perftune run the quantization jobs (they use CPU/GPU time)"
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="on a terminal: answer the compute prompt yes"),
    runs_dir: Path = typer.Option(Path("runs"), help="where campaign bundles are"),
    lake: Path | None = typer.Option(None, help="DuckDB lake (default: the per-user data folder)"),
) -> None:
    """Phase 4: quantize the campaign's model with each scheme, as submitted jobs, each output gated on
    its own tensors (declared method, every in-scope layer quantized). Refused without the ack."""
    from perftune.api import quantize as run_quantize

    schemes = [s.strip() for s in scheme.split(",") if s.strip()]
    if not ack_compute and sys.stdin.isatty():
        ack_compute = yes or typer.confirm(f"run {len(schemes)} quantization job(s) ({', '.join(schemes)})?")
    with sigterm_as_interrupt(), ProgressRenderer(err_console) as renderer:
        run_dir, state = run_quantize(
            run, schemes=schemes, ack_compute=ack_compute, runs_dir=runs_dir, observe=renderer, lake=lake
        )
    _report(run_dir, state, "4", "phase4/quantize.md")


@handle_errors
def validate(
    run: str = typer.Argument(..., help="campaign run id (phase 4 done)"),
    accuracy_tolerance: float | None = typer.Option(
        None, help="largest accuracy drop allowed, absolute points (default 1.0)"
    ),
    tasks: str | None = typer.Option(None, help="comma-separated: mmlu, humaneval (default both)"),
    limit: int | None = typer.Option(
        None, min=1, help="items per task (both tasks; HumanEval has 164): --mmlu-n/--humaneval-n win"
    ),
    mmlu_n: int | None = typer.Option(None, help="MMLU items (default 1000)"),
    humaneval_n: int | None = typer.Option(None, help="HumanEval problems (default 40)"),
    eval_api: str | None = typer.Option(
        None, help="auto (chat when the model has a chat template), chat or completions"
    ),
    runs_dir: Path = typer.Option(Path("runs"), help="where campaign bundles are"),
    lake: Path | None = typer.Option(None, help="DuckDB lake (default: the per-user data folder)"),
) -> None:
    """Phase 5: known-answer sanity, MMLU and HumanEval paired against the reference weights, and a
    perf A/B; a variant ships only with no accuracy drop beyond the tolerance and a perf win."""
    from perftune.api import validate as run_validate

    with sigterm_as_interrupt(), ProgressRenderer(err_console) as renderer:
        run_dir, state = run_validate(
            run,
            runs_dir=runs_dir,
            accuracy_tolerance_pts=accuracy_tolerance,
            tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
            mmlu_n=mmlu_n or limit,
            humaneval_n=humaneval_n or limit,
            eval_api=eval_api,
            observe=renderer,
            lake=lake,
        )
    _report(run_dir, state, "5", "phase5/ACCURACY.md")


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


@handle_errors
def specdec(
    run: str = typer.Argument(..., help="campaign run id; or `train`, then the run id (phase 6)"),
    train_run: str | None = typer.Argument(
        None, help="with `train`: the campaign run id", show_default=False
    ),
    methods: str | None = typer.Option(None, help="comma-separated: ngram, draft-model, eagle, eagle3, mtp"),
    k: str | None = typer.Option(
        None, "--k", help="comma-separated K (drafted tokens per step) to screen; default 2,4"
    ),
    workloads: str | None = typer.Option(None, help="comma-separated, default code,chat,random"),
    concurrency: str | None = typer.Option(
        None, help="comma-separated A/B concurrencies (default 1); the gate judges the lowest"
    ),
    draft_model: str | None = typer.Option(
        None, help="the draft or draft head folder (draft-model, eagle, eagle3)"
    ),
    against: str | None = typer.Option(
        None,
        help="METHOD:K: the standing config speculates with it (e.g. mtp:3, or ngram:3 to measure a "
        "trained head against prompt lookup); default: the campaign's levers",
    ),
    method: str = typer.Option("eagle3", help="train: the method whose draft phase 6 trains"),
    ack_compute: bool = typer.Option(
        False, "--ack-compute", help="train: let phase 6 submit the training job"
    ),
    samples: int | None = typer.Option(
        None, help="train: prompts the target answers to train on (default 2000)"
    ),
    epochs: int | None = typer.Option(None, help="train: epochs (default 3)"),
    runs_dir: Path = typer.Option(Path("runs"), help="where campaign bundles are"),
    lake: Path | None = typer.Option(None, help="DuckDB lake (default: the per-user data folder)"),
) -> None:
    """Phase 7: speculative decoding measured in the engine. K is screened, then the best K and the
    standing config run in interleaved trials on each workload; acceptance is read from the engine;
    a method ships only with an acceptance win and a TPOT win on every workload and the suite.

    `perftune specdec train RUN_ID --method eagle3 --ack-compute` is phase 6: it submits the job that
    trains an EAGLE-3 head for the campaign's model (it runs on after this command returns: the phase
    shows queued); the same command again, or `optimize --resume`, picks the result up and gates it."""
    from perftune.api import specdec as run_specdec
    from perftune.api import specdec_train
    from perftune.cli.campaign import int_list
    from perftune.errors import ConfigError

    if run == "train":
        if train_run is None:
            raise ConfigError(
                "specdec train needs the campaign run id", hint="perftune specdec train RUN_ID --ack-compute"
            )
        with sigterm_as_interrupt(), ProgressRenderer(err_console) as renderer:
            run_dir, state = specdec_train(
                train_run, method=method, ack_compute=ack_compute, samples=samples, epochs=epochs,
                runs_dir=runs_dir, observe=renderer, lake=lake,
            )  # fmt: skip
        _report(run_dir, state, "6", f"phase6/{method}/train.log")
        return
    if train_run is not None:
        raise ConfigError(
            f"unexpected argument '{train_run}'", hint="perftune specdec RUN_ID --methods ngram"
        )
    if not methods:
        raise ConfigError(
            "specdec needs --methods", hint="e.g. perftune specdec RUN_ID --methods ngram --k 2,4"
        )
    with sigterm_as_interrupt(), ProgressRenderer(err_console) as renderer:
        run_dir, state = run_specdec(
            run,
            methods=_csv(methods),
            ks=int_list(k, "--k"),
            workloads=_csv(workloads) or None,
            concurrencies=int_list(concurrency, "--concurrency"),
            draft_model=draft_model,
            against=against,
            runs_dir=runs_dir,
            observe=renderer,
            lake=lake,
        )
    _report(run_dir, state, "7", "phase7/SPECDEC.md")
