"""Every input form of `check`, JSON-valued flags, aliases, env vars, versions. Pure functions."""

from pathlib import Path

import pytest

from perftune.registry.check import applies, check_deploy
from perftune.registry.deploy_args import parse_deploy_file, parse_serve_args
from perftune.registry.schema import ModelEntry, RequiredFlag
from perftune.registry.store import load_registry

ROOT = Path(__file__).resolve().parents[3]
MODEL = "Qwen/Qwen3-Next-80B-A3B-Instruct"


@pytest.fixture(scope="module")
def entry() -> ModelEntry:
    return load_registry(ROOT / "configs" / "known-good-configs.yaml").models[MODEL]


def _verdict(entry: ModelEntry, text: str, version: str | None = "0.22.1") -> str:
    d = parse_serve_args(text)
    d.engine_version = version
    return check_deploy(MODEL, entry, d).verdict


@pytest.mark.parametrize(
    "flag",
    [
        """--additional-config '{"gdn_prefill_backend":"triton"}'""",  # compact
        """--additional-config='{ "other": 1,  "gdn_prefill_backend" : "triton" }'""",  # =, spaces, key order
        """--additional_config '{"gdn_prefill_backend": "triton", "x": {"y": 2}}'""",  # underscores, nested
        """--additional-config.gdn_prefill_backend=triton""",  # vLLM's dotted form
    ],
)
def test_json_valued_flag_written_many_ways_passes(entry: ModelEntry, flag: str) -> None:
    assert _verdict(entry, f"vllm serve {MODEL} -tp 4 {flag}") == "pass"


def test_missing_or_wrong_value_fails(entry: ModelEntry) -> None:
    assert _verdict(entry, f"vllm serve {MODEL} -tp 4") == "fail"
    assert (
        _verdict(
            entry, f"""vllm serve {MODEL} --additional-config '{{"gdn_prefill_backend":"flashinfer"}}'"""
        )
        == "fail"
    )
    res = check_deploy(MODEL, entry, parse_serve_args(f"vllm serve {MODEL}"))
    assert (
        res.missing_required[0].flag == "--additional-config"
        and res.missing_required[0].severity == "crash-high-c"
    )


def test_version_awareness(entry: ModelEntry) -> None:
    assert _verdict(entry, f"vllm serve {MODEL}", "0.26.0") == "pass"  # the 0.22 wedge does not apply
    assert _verdict(entry, f"vllm serve {MODEL}", "0.22.0") == "fail"
    assert _verdict(entry, f"vllm serve {MODEL}", None) == "fail"  # unknown version: fail-closed
    assert applies("vllm >=0.22,<0.24", "vllm", "0.23.1")[0]
    assert not applies("vllm >=0.22,<0.24", "vllm", "0.24.0")[0]
    assert not applies("sglang 0.5", "vllm", "0.5.1")[0]
    assert applies("all", "vllm", "9.9")[0]


def test_perf_flags_only_warn_and_env_vars_match() -> None:
    e = ModelEntry(
        slug="m",
        engine="vllm",
        grind_frontier="x",
        required_flags=[
            RequiredFlag(flag="--enable-prefix-caching", severity="perf", why="faster"),
            RequiredFlag(
                flag="env:VLLM_USE_FLASHINFER_SAMPLER",
                match="^0$",
                severity="boot-blocker",
                why="no flashinfer",
            ),
        ],
    )
    bad = check_deploy("m", e, parse_serve_args("vllm serve m"))
    assert bad.verdict == "fail" and [w.flag for w in bad.warnings] == ["--enable-prefix-caching"]
    good = check_deploy("m", e, parse_serve_args("VLLM_USE_FLASHINFER_SAMPLER=0 vllm serve m"))
    assert good.verdict == "pass" and good.warnings


def test_json_object_match_is_a_subset_test() -> None:
    e = ModelEntry(
        slug="m",
        engine="vllm",
        grind_frontier="x",
        required_flags=[
            RequiredFlag(
                flag="--compilation-config",
                match='{"cudagraph_mode": "PIECEWISE"}',
                severity="boot-blocker",
                why="full graphs crash",
            )
        ],
    )
    ok = parse_serve_args(
        """vllm serve m --compilation-config '{"level": 3, "cudagraph_mode": "PIECEWISE"}'"""
    )
    assert check_deploy("m", e, ok).verdict == "pass"
    assert check_deploy("m", e, parse_serve_args("vllm serve m -O3")).verdict == "fail"


def test_unregistered_model() -> None:
    d = parse_serve_args("vllm serve other/model")
    assert check_deploy("other/model", None, d).verdict == "pass"
    assert check_deploy("other/model", None, d, require_registered=True).verdict == "fail"


K8S = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: qwen3-next}
spec:
  template:
    spec:
      containers:
        - name: vllm
          image: vllm/vllm-openai:v0.22.0
          args:
            - Qwen/Qwen3-Next-80B-A3B-Instruct
            - --tensor-parallel-size=4
            - '--additional-config={"gdn_prefill_backend": "triton"}'
          env:
            - {name: HF_HOME, value: /models}
"""

SLURM = """\
#!/bin/bash
#SBATCH --gres=gpu:4
export VLLM_SERVER_DEV_MODE=1
srun --ntasks=1 vllm serve Qwen/Qwen3-Next-80B-A3B-Instruct \\
    --tensor-parallel-size 4 \\
    --additional-config '{"gdn_prefill_backend": "triton"}'  # workaround
"""

SGLANG_SH = """\
#!/bin/sh
python -m sglang.launch_server --model-path Qwen/Qwen3-Next-80B-A3B-Instruct --tp 4 --mem-fraction-static 0.85
"""

SPEC = """\
engine: vllm
engine_version: 0.22.0
model: Qwen/Qwen3-Next-80B-A3B-Instruct
args: ["--tensor-parallel-size", "4"]
flags:
  --additional-config: {gdn_prefill_backend: triton}
env: {VLLM_SERVER_DEV_MODE: "1"}
"""


def test_kubernetes_manifest(entry: ModelEntry) -> None:
    d = parse_deploy_file(K8S, "deploy.yaml")
    assert (d.engine, d.model, d.engine_version, d.source) == ("vllm", MODEL, "0.22.0", "kubernetes")
    assert d.values("-tp") == ["4"] and d.env["HF_HOME"] == "/models"
    assert check_deploy(MODEL, entry, d).verdict == "pass"
    dropped = parse_deploy_file(
        K8S.replace("""            - '--additional-config={"gdn_prefill_backend": "triton"}'\n""", "")
    )
    assert check_deploy(MODEL, entry, dropped).verdict == "fail"


def test_slurm_script(entry: ModelEntry) -> None:
    d = parse_deploy_file(SLURM, "job.sbatch")
    assert d.engine == "vllm" and d.model == MODEL and d.env["VLLM_SERVER_DEV_MODE"] == "1"
    d.engine_version = "0.22.0"
    assert check_deploy(MODEL, entry, d).verdict == "pass"


def test_shell_script_sglang_and_serve_spec(entry: ModelEntry) -> None:
    s = parse_deploy_file(SGLANG_SH, "run.sh")
    assert s.engine == "sglang" and s.model == MODEL and s.values("--tp-size") == ["4"]
    # the entry is for vLLM: an SGLang deploy is not held to vLLM's flag
    assert check_deploy(MODEL, entry, s).verdict == "pass"
    spec = parse_deploy_file(SPEC, "spec.yaml")
    assert spec.source == "serve-spec" and spec.engine_version == "0.22.0"
    assert check_deploy(MODEL, entry, spec).verdict == "pass"
