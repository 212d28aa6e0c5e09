"""Pure parsing of deploy descriptions into one normalized form: engine, model, flags, env, version.

Inputs: a serve command line, a Kubernetes manifest (container command/args/env, image tag), a Slurm
batch script or shell script (the `vllm serve` / `python -m sglang.launch_server` line, with line
continuations, `srun` prefixes, `export` and inline `VAR=value`), or a perftune serve spec (YAML/JSON
with engine, model, args, env). Flags are normalized so `--flag=value` and `--flag value`, dashes and
underscores, `-tp` and `--tensor-parallel-size`, and vLLM's dotted JSON form
(`--additional-config.key=value`) all compare equal.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from perftune.errors import ConfigError

# Short forms engines accept for the same flag.
ALIASES = {
    "-tp": "--tensor-parallel-size",
    "-pp": "--pipeline-parallel-size",
    "-dp": "--data-parallel-size",
    "--tp": "--tp-size",
    "--dp": "--dp-size",
    "--ep": "--ep-size",
}
_VERSION_IN_IMAGE = re.compile(r":v?(\d+\.\d+(?:\.\d+)?)")


@dataclass
class DeployArgs:
    engine: str | None
    model: str | None
    flags: dict[str, list[str | None]] = field(default_factory=dict)  # name -> values (None: bare flag)
    env: dict[str, str] = field(default_factory=dict)
    engine_version: str | None = None
    source: str = "serve-args"

    def values(self, flag: str) -> list[str | None] | None:
        return self.flags.get(normalize_flag(flag))


def normalize_flag(name: str) -> str:
    """Aliases resolved, underscores as dashes in the flag name (not in a dotted JSON key after it)."""
    name = ALIASES.get(name, name)
    if name.startswith("--"):
        base, dot, key = name[2:].partition(".")
        return "--" + base.replace("_", "-") + dot + key
    return name


def _engine_and_rest(argv: list[str]) -> tuple[str | None, list[str]]:
    """Find the engine entry point in argv; return the engine and the tokens after it."""
    for i, tok in enumerate(argv):
        base = tok.rsplit("/", 1)[-1]
        if base == "vllm" and i + 1 < len(argv) and argv[i + 1] == "serve":
            return "vllm", argv[i + 2 :]
        if tok == "-m" and i + 1 < len(argv):
            mod = argv[i + 1]
            if mod.startswith("sglang.launch_server"):
                return "sglang", argv[i + 2 :]
            if mod.startswith("vllm.entrypoints"):
                rest = argv[i + 2 :]
                return "vllm", rest[1:] if rest[:1] == ["serve"] else rest
        if base in ("llama-server", "llama_cpp.server"):
            return "llamacpp", argv[i + 1 :]
    return None, argv


def parse_argv(argv: list[str], *, source: str = "serve-args") -> DeployArgs:
    env: dict[str, str] = {}
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):  # VAR=value prefixes
        k, _, v = argv[0].partition("=")
        env[k] = v
        argv = argv[1:]
    engine, rest = _engine_and_rest(argv)
    flags: dict[str, list[str | None]] = {}
    dotted: dict[str, dict[str, Any]] = {}
    positional: list[str] = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok.startswith("-") and not re.match(r"^-\d", tok):
            name, eq, value = tok.partition("=")
            val: str | None = value if eq else None
            if not eq and i + 1 < len(rest) and not rest[i + 1].startswith("-"):
                val = rest[i + 1]
                i += 1
            name = normalize_flag(name)
            base, dot, key = name.partition(".")
            if dot:  # vLLM: --additional-config.gdn_prefill_backend=triton
                dotted.setdefault(base, {})[key] = _json_scalar(val)
            else:
                flags.setdefault(name, []).append(val)
        else:
            positional.append(tok)
        i += 1
    for base, obj in dotted.items():
        flags.setdefault(base, []).append(json.dumps(obj))
    model = None
    for key in ("--model", "--model-path"):
        if flags.get(key) and flags[key][0]:
            model = flags[key][0]
    if model is None and positional:
        model = positional[0]
    return DeployArgs(engine=engine, model=model, flags=flags, env=env, source=source)


def _json_scalar(v: str | None) -> Any:
    if v is None:
        return True
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def parse_serve_args(text: str) -> DeployArgs:
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise ConfigError(f"cannot split serve args: {e}", hint="quote them as a shell would") from e
    return parse_argv(argv)


def _script_command(text: str) -> tuple[list[str], dict[str, str]]:
    """The engine launch line of a shell/Slurm script (continuations joined) and its exported env."""
    joined = re.sub(r"\\\r?\n", " ", text)
    env: dict[str, str] = {}
    for line in joined.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^export\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$", s)
        if m:
            val = shlex.split(m.group(2))
            env[m.group(1)] = val[0] if val else ""
            continue
        if re.search(r"\bvllm\s+serve\b|sglang\.launch_server|vllm\.entrypoints|llama-server", s):
            argv = shlex.split(s, comments=True)
            while argv and argv[0] in ("srun", "exec", "mpirun", "time", "nohup"):  # launcher prefixes
                argv = argv[1:]
                while argv and argv[0].startswith("-"):
                    argv = argv[1:]
            return argv, env
    raise ConfigError(
        "no engine launch line found in the script",
        hint="expected a `vllm serve ...` or `python -m sglang.launch_server ...` line",
    )


def _k8s_containers(docs: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        stack = [doc]
        while stack:  # walk any workload kind (Deployment, StatefulSet, Job, LeaderWorkerSet, Pod)
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("containers"), list):
                    out.extend(c for c in node["containers"] if isinstance(c, dict))
                stack.extend(v for k, v in node.items() if k != "containers")
            elif isinstance(node, list):
                stack.extend(node)
    return out


def parse_deploy_file(text: str, name: str = "deploy") -> DeployArgs:
    """Detect the form (k8s manifest, serve spec, script) and parse it."""
    stripped = text.lstrip()
    is_script = stripped.startswith("#!") or name.endswith((".sh", ".sbatch", ".slurm", ".bash"))
    if not is_script:
        try:
            docs = [d for d in YAML(typ="safe").load_all(StringIO(text)) if d is not None]
        except YAMLError as e:
            raise ConfigError(
                f"{name}: neither YAML nor a shell script ({str(e).splitlines()[0]})",
                hint="pass a Kubernetes manifest, a serve spec, or a script",
            ) from e
        if docs and isinstance(docs[0], dict) and "engine" in docs[0] and "kind" not in docs[0]:
            return _serve_spec(docs[0], name)
        containers = _k8s_containers(docs)
        if not containers:
            raise ConfigError(
                f"{name}: no containers and no serve spec found",
                hint="expected a Kubernetes workload with containers, or engine/model/args keys",
            )
        for c in containers:
            argv = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
            if len(argv) >= 3 and argv[0] in ("sh", "bash", "/bin/sh", "/bin/bash") and argv[1] == "-c":
                argv = shlex.split(re.sub(r"\\\r?\n", " ", argv[2]))
            parsed = parse_argv(argv, source="kubernetes")
            if parsed.engine is None and "vllm-openai" in str(c.get("image", "")):
                parsed = parse_argv(
                    ["vllm", "serve", *argv], source="kubernetes"
                )  # image entrypoint is vllm serve
            if parsed.engine is None:
                continue
            for item in c.get("env") or []:
                if isinstance(item, dict) and "name" in item and "value" in item:
                    parsed.env[str(item["name"])] = str(item["value"])
            m = _VERSION_IN_IMAGE.search(str(c.get("image", "")))
            parsed.engine_version = m.group(1) if m else None
            return parsed
        raise ConfigError(
            f"{name}: no container launches an engine",
            hint="expected vllm serve / sglang.launch_server in command or args",
        )
    argv, env = _script_command(text)
    parsed = parse_argv(argv, source="script")
    parsed.env = {**env, **parsed.env}
    return parsed


def _serve_spec(doc: dict[str, Any], name: str) -> DeployArgs:
    args = doc.get("args") or []
    if isinstance(args, str):
        args = shlex.split(args)
    levers = doc.get("flags") or {}
    argv = [str(a) for a in args]
    for k, v in levers.items():
        argv += [k] if v is True else [k, v if isinstance(v, str) else json.dumps(v)]
    parsed = parse_argv(argv, source="serve-spec")
    parsed.engine = str(doc["engine"])
    parsed.model = str(doc.get("model") or parsed.model or "") or None
    parsed.env = {str(k): str(v) for k, v in (doc.get("env") or {}).items()}
    parsed.engine_version = str(doc["engine_version"]) if doc.get("engine_version") else None
    return parsed
