"""Deploy: known-good gate -> launch plan -> local process -> ready -> smoke gate. The imperative shell."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from perftune.errors import ConfigError, DeployError, GateError
from perftune.registry.gate import enforce_known_good
from perftune.serving.registry import engine as engine_info
from perftune.serving.registry import plan as make_plan
from perftune.serving.spec import LaunchPlan, ServeSpec
from perftune.targets.local import (
    LocalDeployment,
    WaitProgress,
    check_port_free,
    down,
    free_port,
    group_alive,
    stop_group,
    up,
    wait_ready,
)
from perftune.util.atomic import write_text

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, not a path


class SmokeResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_text: str
    chat_text: str
    completion_tokens: int | None = Field(None, description="usage.completion_tokens of the completion")
    chat_tokens: int | None = Field(None, description="usage.completion_tokens of the chat completion")
    passed: bool
    reason: str
    hint: str = ""


class DeployRecord(BaseModel):
    """What `deploy --detach` leaves behind so `deploy down RUN_ID` can find the process group."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    endpoint: str
    served_name: str
    engine: str
    engine_version: str | None
    pgid: int
    log_path: str
    plan: LaunchPlan
    ready_s: float
    smoke: SmokeResult | None
    known_good: dict[str, Any] = Field(description="the registry check's verdict and reasons")


def _engine_installed(p: LaunchPlan) -> None:
    exe = p.argv[0]
    if p.engine == "llamacpp" and p.argv[1:3] == ["-m", "llama_cpp.server"]:
        if importlib.util.find_spec("llama_cpp") is None:
            raise DeployError(
                "llama.cpp is not installed (no llama-server on PATH, no llama-cpp-python)",
                hint="pip install 'llama-cpp-python[server]', or put llama-server on PATH",
            )
    elif p.engine == "llamacpp" and shutil.which(exe) is None:
        raise DeployError(
            f"llama.cpp is not installed: '{exe}' is not on PATH", hint=engine_info("llamacpp").install_hint
        )
    if p.engine in ("vllm", "sglang"):
        module = "vllm" if p.engine == "vllm" else "sglang"
        if importlib.util.find_spec(module) is None:
            raise DeployError(
                f"{p.engine} is not installed in this Python ({exe})", hint=engine_info(p.engine).install_hint
            )


async def smoke(base_url: str, served: str, *, chat_only: bool = False) -> SmokeResult:
    """One completion and one chat completion with non-empty output.

    Instruction-tuned models are judged on the chat endpoint only: a raw completion on an -it model
    can degenerate by design and would falsely fail a correct checkpoint.
    """
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with s.post(base_url + path, json=body) as r:
                data = await r.json(content_type=None)
                if r.status != 200:
                    raise DeployError(
                        f"smoke {path} failed: HTTP {r.status}: {str(data)[:300]}",
                        hint="the server is up but rejects requests; read its log",
                    )
                return dict(data)

        c = await post(
            "/v1/completions",
            {"model": served, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
        )
        ch = await post(
            "/v1/chat/completions",
            {
                "model": served,
                "max_tokens": 8,
                "temperature": 0,
                "messages": [{"role": "user", "content": "Say hello."}],
            },
        )
    return judge_smoke(c, ch, chat_only=chat_only)


def _generated(resp: dict[str, Any]) -> int | None:
    usage = resp.get("usage")
    n = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return int(n) if isinstance(n, int) else None


def judge_smoke(c: dict[str, Any], ch: dict[str, Any], *, chat_only: bool = False) -> SmokeResult:
    """Pure: did the server generate tokens? Judged on usage.completion_tokens where the server reports
    it, on text only where it does not. With dummy weights the text is meaningless and may decode to
    nothing (a synthesized tokenizer pads its vocab with special tokens, which engines skip when they
    detokenize), so an empty text with generated tokens passes, with a note saying why it is empty."""
    ctext = str(c["choices"][0].get("text") or "")
    htext = str((ch["choices"][0].get("message") or {}).get("content") or "")
    cn, hn = _generated(c), _generated(ch)
    checks = [("chat completion", hn, htext)] + ([] if chat_only else [("completion", cn, ctext)])
    zero = [name for name, n, text in checks if (n == 0) or (n is None and not text.strip())]
    if zero:
        return SmokeResult(
            completion_text=ctext,
            chat_text=htext,
            completion_tokens=cn,
            chat_tokens=hn,
            passed=False,
            reason=f"the {' and the '.join(zero)} generated no tokens",
            hint="the server answered 200 but generated nothing: the first sampled token was EOS or a "
            "stop string; check generation_config.json's eos_token_id and the chat template, or read "
            "the server log",
        )
    empty = [f"{name} ({n} tokens)" for name, n, text in checks if n and not text.strip()]
    reason = "chat and completion generated tokens" if not chat_only else "chat completion generated tokens"
    if empty:
        reason += "; " + ", ".join(empty) + " decoded to empty text (special or unprintable tokens: "
        reason += "expected with dummy weights)"
    return SmokeResult(
        completion_text=ctext,
        chat_text=htext,
        completion_tokens=cn,
        chat_tokens=hn,
        passed=True,
        reason=reason,
    )


async def detect_version(base_url: str, engine: str) -> str | None:
    paths = {"vllm": "/version", "sim": "/version", "sglang": "/get_server_info", "llamacpp": "/props"}
    path = paths.get(engine)
    if path is None:
        return None
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
            s.get(base_url + path) as r,
        ):
            data = await r.json(content_type=None)
            v = data.get("version") if isinstance(data, dict) else None
            return str(v) if v else None
    return None


def _gpu_preflight(spec: ServeSpec, gpus: list[int] | None) -> None:
    """NVML: the GPUs exist, are free, and hold the weights (per GPU at the spec's TP)."""
    from perftune.errors import PerftuneError
    from perftune.models.resolve import model_card
    from perftune.targets.gpu_preflight import check_gpus, read_gpus

    try:
        need = model_card(spec.model).native_weight_bytes / spec.tp
    except PerftuneError:
        need = 0.0  # no readable config: existence and busy checks still apply
    check_gpus(read_gpus(), gpus if gpus is not None else list(range(spec.tp * spec.dp)), need)


def run_id_for(spec: ServeSpec) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    h = hashlib.sha1(f"{spec.model_dump_json()}{time.time_ns()}".encode()).hexdigest()[:6]
    return f"deploy-{spec.engine}-{stamp}-{h}"


def deploy(
    spec: ServeSpec,
    *,
    runs_dir: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    ready_timeout_s: float = 900.0,
    registry: str | Path | None = None,
    chat_only_smoke: bool = False,
    gpus: list[int] | None = None,
    on_up: Callable[[LocalDeployment], None] | None = None,
    on_wait: WaitProgress | None = None,
) -> tuple[DeployRecord, LocalDeployment]:
    """Validate everything, then launch, wait for readiness and smoke-test. Tears down on any failure.

    `on_up` is called as soon as the process group exists, before the (long) readiness wait: a caller
    that can be killed while waiting records the group there so a later run can reap it. `on_wait`
    is called about once a second during that wait with the seconds waited and the server log's last
    non-empty line (targets.local.wait_ready)."""
    if spec.engine == "sim":
        from perftune.models.resolve import model_card

        model_card(spec.model)  # a catalog name or a model folder; fails here with a hint otherwise
    elif spec.engine != "mock" and not Path(spec.model).exists() and not HUB_ID.match(spec.model):
        raise ConfigError(
            f"model folder not found: {spec.model}", hint="pass a model folder, a GGUF file or a hub id"
        )
    if port is None:
        port = free_port(host)
    else:
        check_port_free(host, port)
    p = make_plan(spec, host=host, port=port)  # validates every lever before anything launches
    kg = enforce_known_good(
        spec.model,
        spec.engine,
        p.argv[p.argv.index(spec.model) :] if spec.model in p.argv else p.argv,
        env=p.env,
        engine_version=spec.engine_version,
        registry=registry,
    )
    _engine_installed(p)
    if spec.engine in ("vllm", "sglang") and not os.environ.get("PERFTUNE_SKIP_GPU_PREFLIGHT"):
        _gpu_preflight(spec, gpus)
    run_id = run_id_for(spec)
    run_dir = runs_dir / run_id
    dep = up(p, run_dir, host=host, port=port, gpus=gpus)
    try:
        if on_up is not None:
            on_up(dep)
        ready_s = asyncio.run(wait_ready(dep, ready_timeout_s, on_wait=on_wait))
        version = spec.engine_version or asyncio.run(detect_version(dep.base_url, spec.engine))
        sm = asyncio.run(smoke(dep.base_url, p.served_name, chat_only=chat_only_smoke))
        if not sm.passed:
            raise GateError(f"smoke gate red: {sm.reason}", hint=sm.hint, log_path=str(dep.log_path))
    except BaseException:
        down(dep)
        raise
    rec = DeployRecord(
        run_id=run_id,
        endpoint=dep.base_url,
        served_name=p.served_name,
        engine=spec.engine,
        engine_version=version,
        pgid=dep.pgid,
        log_path=str(dep.log_path),
        plan=p,
        ready_s=ready_s,
        smoke=sm,
        known_good={"verdict": kg.verdict, "reasons": kg.reasons},
    )
    write_text(run_dir / "deploy.json", rec.model_dump_json(indent=2) + "\n")
    return rec, dep


def deploy_down(run_id: str, runs_dir: Path, grace_s: float = 15.0) -> bool:
    """Tear down a detached deploy by run id. Returns False if it was already gone (idempotent)."""
    f = runs_dir / run_id / "deploy.json"
    if not f.exists():
        raise ConfigError(
            f"no deploy record for {run_id} in {runs_dir}", hint="check the run id and --runs-dir"
        )
    rec = DeployRecord.model_validate(json.loads(f.read_text()))
    if not group_alive(rec.pgid):
        return False
    stop_group(rec.pgid, grace_s)
    return True
