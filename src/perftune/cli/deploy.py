"""`perftune deploy` (start, ready, smoke, print the endpoint) and `perftune deploy down RUN_ID`."""

from __future__ import annotations

import signal
from pathlib import Path

import typer

from perftune.cli.common import err_console, handle_errors, out_console, print_json
from perftune.errors import ConfigError

CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def _levers(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"bad --lever '{item}'", hint="write NAME=VALUE, e.g. --lever max-num-seqs=64")
        out[k] = v
    return out


@handle_errors
def deploy(
    ctx: typer.Context,
    engine: str | None = typer.Option(
        None, help="vllm | sglang | llamacpp | sim (perftune's simulated vLLM) | mock"
    ),
    model: str | None = typer.Option(None, help="model folder, GGUF file or hub id"),
    lever: list[str] = typer.Option([], help="NAME=VALUE, repeatable (see `perftune levers`)"),
    tp: int = typer.Option(1, help="tensor parallelism"),
    dp: int = typer.Option(1, help="data parallelism"),
    served_name: str | None = typer.Option(None, help="name clients use (default: the folder's name)"),
    engine_version: str | None = typer.Option(None, help="engine version, if known before start"),
    port: int | None = typer.Option(None, help="port (default: a free one)"),
    host: str = typer.Option("127.0.0.1", help="bind address"),
    gpus: str | None = typer.Option(None, help="CUDA_VISIBLE_DEVICES for the server, e.g. 0,1"),
    sim_gpu: str = typer.Option("h100", help="engine sim: the GPU it models"),
    ready_timeout_s: float = typer.Option(900.0, help="seconds to wait for readiness"),
    chat_only_smoke: bool = typer.Option(
        False, help="instruction-tuned model: judge the smoke gate on chat only"
    ),
    registry: Path | None = typer.Option(None, help="known-good registry (default resolution otherwise)"),
    runs_dir: Path = typer.Option(Path("runs"), help="where run folders (logs, deploy.json) go"),
    detach: bool = typer.Option(
        False, help="leave the server running; stop it with `perftune deploy down RUN_ID`"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the deploy record as JSON"),
) -> None:
    """Start an engine, wait until ready, smoke-test it, print the endpoint. Ctrl-C tears it down.

    Engine flags after `--` pass through verbatim, e.g. `-- --load-format dummy`.
    """
    from perftune.deploy import deploy as do_deploy
    from perftune.deploy import deploy_down
    from perftune.serving.spec import ServeSpec
    from perftune.targets.local import down

    extra = list(ctx.args)
    if extra[:1] == ["down"]:
        if len(extra) != 2:
            raise ConfigError(
                "usage: perftune deploy down RUN_ID", hint="the run id printed by deploy --detach"
            )
        stopped = deploy_down(extra[1], runs_dir)
        if as_json:
            print_json({"run_id": extra[1], "stopped": stopped})
        else:
            out_console.print(f"{extra[1]}: {'stopped' if stopped else 'already gone'}")
        return
    if model is None and extra and not extra[0].startswith("-"):  # `deploy --engine vllm MODEL ...`
        model, extra = extra[0], extra[1:]
    if engine is None or model is None:
        raise ConfigError(
            "deploy needs --engine and a model",
            hint="e.g. perftune deploy --engine vllm ./m (or --model ./m)",
        )
    if engine not in ("vllm", "sglang", "llamacpp", "sim", "mock"):
        raise ConfigError(f"unknown engine '{engine}'", hint="one of vllm, sglang, llamacpp, sim, mock")
    spec = ServeSpec(
        engine=engine,
        model=model,
        served_name=served_name,
        engine_version=engine_version,
        tp=tp,
        dp=dp,
        levers=_levers(lever),
        extra_args=extra,
        gpu=sim_gpu if engine == "sim" else None,
    )
    gpu_list = [int(g) for g in gpus.split(",")] if gpus else None
    rec, dep = do_deploy(
        spec,
        runs_dir=runs_dir,
        host=host,
        port=port,
        ready_timeout_s=ready_timeout_s,
        registry=registry,
        chat_only_smoke=chat_only_smoke,
        gpus=gpu_list,
    )
    if as_json:
        print_json(rec.model_dump(mode="json"))
    else:
        out_console.print(
            f"ready: {rec.endpoint} (model '{rec.served_name}', {rec.engine} "
            f"{rec.engine_version or ''}, {rec.ready_s:.1f} s); run {rec.run_id}; log {rec.log_path}"
        )
        if rec.plan.lever_argv:
            out_console.print(f"levers: {' '.join(rec.plan.lever_argv)}", highlight=False)
    if detach:
        return
    err_console.print("serving; Ctrl-C stops it")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        down(dep)
        err_console.print("stopped")
