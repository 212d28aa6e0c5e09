"""Adapter plans: environment the engines need."""


def test_multi_gpu_plans_turn_nvlink_multicast_off() -> None:
    from perftune.engines.adapters import MULTI_GPU_ENV, plan
    from perftune.serving.spec import ServeSpec

    tp2 = plan(ServeSpec(engine="vllm", model="/m", tp=2), port=1)
    assert all(tp2.env[k] == v for k, v in MULTI_GPU_ENV.items())
    assert "NCCL_NVLS_ENABLE" not in plan(ServeSpec(engine="vllm", model="/m"), port=1).env
    mine = plan(ServeSpec(engine="sglang", model="/m", dp=2, env={"NCCL_NVLS_ENABLE": "1"}), port=1)
    assert mine.env["NCCL_NVLS_ENABLE"] == "1"  # the user's explicit choice wins


def test_llama_cpp_python_takes_text_prompts_only_and_says_with_which_vocabulary() -> None:
    from perftune.engines.adapters import plan, plan_llamacpp
    from perftune.serving.spec import ServeSpec

    spec = ServeSpec(engine="llamacpp", model="/m/model.gguf")
    py = plan_llamacpp(spec, host="127.0.0.1", port=1, launcher="llama-cpp-python")
    assert py.text_prompts_only == "/m/model.gguf"  # token-id prompts are decoded with its vocabulary
    assert plan_llamacpp(spec, host="127.0.0.1", port=1, launcher="llama-server").text_prompts_only is None
    assert plan(ServeSpec(engine="vllm", model="/m"), port=1).text_prompts_only is None
