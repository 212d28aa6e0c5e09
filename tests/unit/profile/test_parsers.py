"""The profiler layers' pure parsers and the capture-validation gate, on hand-made and real inputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from perftune.profile import kernels, ncu
from perftune.profile.base import Capture, check, implausible
from perftune.profile.host import BUCKET_NAMES, classify

FIXTURE = Path(__file__).parents[2] / "fixtures" / "profile" / "llamacpp-smollm2-c1.pyspy.collapsed.txt"


# L1: py-spy collapsed stacks


def test_classify_real_llamacpp_capture() -> None:
    text = FIXTURE.read_text()
    expected = sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.strip())
    out = classify(text)
    assert out["samples"] == expected > 0
    assert sum(out["shares"].values()) == pytest.approx(1.0)
    assert max(out["shares"], key=out["shares"].get) == "model_compute"
    assert out["shares"]["model_compute"] > 0.5
    assert sum(out["processes"].values()) == pytest.approx(1.0)
    # One process; its command line is cut at 60 characters.
    assert len(out["processes"]) == 1
    assert all("llama_cpp" in p and len(p) <= 60 for p in out["processes"])
    assert out["top_frames"] and all(0 < share <= 1 for _f, share in out["top_frames"])


HAND = "\n".join(
    [
        'process 12:"python -m vllm";thread (0x7F01);main (a.py:1);'
        "Scheduler.schedule (vllm/v1/core/sched/scheduler.py:200) 3",
        'process 12:"python -m vllm";thread (0x7F01);main (a.py:1);execute_model (vllm/worker.py:10);'
        "synchronize (torch/cuda/__init__.py:1) 5",
        "main (a.py:1);execute_model (vllm/worker.py:10);_helper (vllm/worker.py:20) 4",
        # Only the prefixes name a bucket (tokeniz, schedul): stripped, the stack is "other".
        'process 13:"server --tokenizer x";thread (0x7F02): "scheduler";main (a.py:1);idle (b.py:2) 2',
        "garbage",
        "a_stack;without (a.py:1) count",
        " 7",
        "",
    ]
)


def test_classify_hand_made_stacks() -> None:
    out = classify(HAND)
    assert out["samples"] == 14
    shares = out["shares"]
    assert shares["scheduling"] == pytest.approx(3 / 14)
    assert shares["gpu_wait"] == pytest.approx(5 / 14)  # the deepest match wins over execute_model
    assert shares["gpu_launch"] == pytest.approx(4 / 14)  # an unmatched leaf falls to its caller
    assert shares["other"] == pytest.approx(2 / 14)
    assert shares["tokenization"] == 0.0
    assert set(shares) == set(BUCKET_NAMES)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert out["processes"] == {"python -m vllm": pytest.approx(8 / 14), "server --tokenizer x": 2 / 14}
    frames = dict(out["top_frames"])
    assert out["top_frames"][0][0] == "synchronize (torch/cuda/__init__.py:1)"
    assert frames["idle (b.py:2)"] == pytest.approx(2 / 14)
    assert not any(f.startswith(("process ", "thread ")) for f in frames)


def test_classify_empty_input() -> None:
    for text in ("", "\n\n", "not a stack\n"):
        assert classify(text) == {"samples": 0, "shares": {}, "processes": {}, "top_frames": []}


# L2: torch-profiler Chrome traces


def kernel(name: str, ts: float, dur: float, cat: str = "kernel", stream: int = 7) -> dict[str, object]:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": stream}


GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32"
ATTN = "flash_fwd_splitkv_kernel"
NCCL = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL"


@pytest.mark.parametrize(
    ("name", "cat", "fam"),
    [
        (NCCL, "kernel", "communication"),
        ("cross_device_reduce_1stage", "kernel", "communication"),
        ("fused_moe_kernel", "kernel", "moe"),
        ("void vllm::moe::topk_softmax<8>", "kernel", "moe"),
        (ATTN, "kernel", "attention"),
        ("void vllm::reshape_and_cache_flash_kernel", "kernel", "attention"),
        (GEMM, "kernel", "gemm"),
        ("nvjet_tst_64x8_64x16_4x1_v_bz_TNN", "kernel", "gemm"),
        ("triton_red_fused_add_rms_norm_0", "kernel", "norm_elementwise"),
        ("void vllm::act_and_mul_kernel<silu>", "kernel", "norm_elementwise"),
        ("at::native::sampling_kernel", "kernel", "sampling"),
        ("void at::native::reduce_kernel<ReduceOp<float, ArgMaxOps<float>>>", "kernel", "sampling"),
        ("Memcpy HtoD (Pageable -> Device)", "gpu_memcpy", "memcpy"),
        ("anything", "gpu_memset", "memcpy"),
        ("Memset (Device)", "kernel", "memcpy"),
        ("my_custom_kernel", "kernel", "other"),
    ],
)
def test_family(name: str, cat: str, fam: str) -> None:
    assert kernels.family(name, cat) == fam


def test_busy_intervals_merge_streams() -> None:
    ev = kernels.gpu_events(
        {"traceEvents": [kernel("a", 0, 100, stream=7), kernel("b", 50, 100, stream=8), kernel("c", 150, 10)]}
    )
    assert [e[0] for e in ev] == [0.0, 50.0, 150.0]
    assert kernels.busy_intervals(ev) == [(0.0, 160.0)]  # overlap and touching both merge
    ev2 = kernels.gpu_events({"traceEvents": [kernel("a", 0, 100), kernel("b", 20, 10), kernel("c", 101, 1)]})
    assert kernels.busy_intervals(ev2) == [(0.0, 100.0), (101.0, 102.0)]


def test_steps_split_at_step_gap() -> None:
    busy = [(0.0, 10.0), (100.0, 110.0), (310.0, 320.0), (519.0, 520.0)]
    # 90 < 200 joins, 200 splits, 199 joins.
    assert kernels.steps(busy) == [(0.0, 110.0, 20.0), (310.0, 520.0, 11.0)]
    assert kernels.steps(busy, step_gap_us=50.0) == [
        (0.0, 10.0, 10.0),
        (100.0, 110.0, 10.0),
        (310.0, 320.0, 10.0),
        (519.0, 520.0, 1.0),
    ]
    assert kernels.steps([]) == []


TRACE = {
    "traceEvents": [
        # step 0: two streams overlap, then a 30 us host gap
        kernel(GEMM, 0, 100, stream=7),
        kernel(ATTN, 50, 100, stream=8),
        kernel("triton_red_fused_add_rms_norm_0", 180, 20),
        # step 1 (800 us gap): a 10 us gap inside the step is no host gap
        kernel(GEMM, 1000, 300),
        kernel(NCCL, 1310, 90),
        # step 2 (600 us gap), step 3 (700 us gap)
        kernel(GEMM, 2000, 500),
        kernel(ATTN, 3200, 100),
        # not GPU work: ignored, else they would move the span
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": -5000, "dur": 100000},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 4000, "dur": 5},
        {"ph": "i", "cat": "kernel", "name": GEMM, "ts": 9000},
        "not an event",
    ]
}


def test_summarize_hand_computed() -> None:
    s = kernels.summarize(TRACE)
    assert s["kernels"] == 7
    assert s["kernel_time_ms"] == pytest.approx(1.21)
    assert s["span_ms"] == pytest.approx(3.3)
    assert s["gpu_busy_share"] == pytest.approx(1160 / 3300)
    assert s["family_shares"] == pytest.approx(
        {
            "gemm": 900 / 1210,
            "attention": 200 / 1210,
            "norm_elementwise": 20 / 1210,
            "communication": 90 / 1210,
        }
    )
    assert s["host_gaps"] == 4  # 30, 800, 600, 700 (not 10)
    assert s["host_gap_share"] == pytest.approx(2130 / 3300)
    assert s["host_gap_median_us"] == pytest.approx(650.0)
    assert s["steps"] == 4
    # No engine annotations: steps split at gaps; every step but the last has a wall (start to the
    # next start) and its kernel time: the medians of the first three.
    assert s["step_source"] == "gaps >= 200 us"
    assert s["step_wall_ms_median"] == pytest.approx(1.0)
    assert s["step_kernel_ms_median"] == pytest.approx(0.39)
    assert s["step_budget"] == "host-bound"
    top = s["top_kernels"][0]
    assert top == {"name": GEMM, "time_share": pytest.approx(900 / 1210), "calls": 3, "family": "gemm"}


def annotation(name: str, ts: float, dur: float) -> dict[str, object]:
    return {"ph": "X", "cat": "gpu_user_annotation", "name": name, "ts": ts, "dur": dur}


def test_steps_from_engine_annotations() -> None:
    """vLLM 0.26.0 marks each engine step on the GPU timeline; a decode step is `context_0`. With async
    scheduling the gaps between steps are short, so only the annotations tell steps apart."""
    ev: list[dict[str, object]] = [annotation("execute_context_1(1024)_generation_0(0)", 0, 900)]
    ev += [kernel(GEMM, 0, 880)]
    for k in range(4):  # four decode steps of 1,000 us, 800 us of kernels each, 50 us gaps between
        t0 = 1000 + k * 1000
        ev += [annotation("execute_context_0(0)_generation_1(1)", t0, 900)]
        ev += [kernel(GEMM, t0 + 10 * j, 10) for j in range(80)]
    s = kernels.summarize({"traceEvents": ev})
    assert s["step_source"] == "engine annotations"
    assert s["steps"] == 5 and s["decode_steps"] == 4
    # the last step has no next start: three decode walls of 1.0 ms, 0.8 ms of kernels each
    assert s["step_wall_ms_median"] == pytest.approx(1.0)
    assert s["step_kernel_ms_median"] == pytest.approx(0.8)
    assert s["step_budget"] == "host-bound"  # 80% < 85%


def test_busy_within() -> None:
    busy = [(0.0, 10.0), (20.0, 30.0), (35.0, 50.0)]
    assert kernels.busy_within(busy, [(0, 25), (25, 40), (40, 100)]) == [15.0, 10.0, 10.0]


def test_host_gap_threshold() -> None:
    gap = kernels.GAP_US
    trace = [kernel("a", 0, 10), kernel("b", 10 + gap, 10), kernel("c", 20 + gap + gap - 0.5, 10)]
    s = kernels.summarize({"traceEvents": trace})
    assert s["host_gaps"] == 1
    assert s["host_gap_median_us"] == pytest.approx(gap)
    assert s["host_gap_share"] == pytest.approx(gap / (30 + 2 * gap - 0.5))


def test_summarize_communication_bound() -> None:
    ev = []
    for i in range(4):
        ev += [kernel(GEMM, i * 1000, 100), kernel(NCCL, i * 1000 + 100, 100)]
    s = kernels.summarize({"traceEvents": ev})
    assert s["family_shares"]["communication"] == pytest.approx(0.5)
    assert s["step_budget"] == "communication-bound"


@pytest.mark.parametrize(
    ("kernel_ms", "wall_ms", "comm", "verdict"),
    [
        (0.9, 1.0, 0.1, "kernel-bound"),
        (0.85, 1.0, 0.0, "kernel-bound"),
        (0.5, 1.0, 0.1, "host-bound"),
        (0.9, 1.0, 0.30, "communication-bound"),
        (1.0, 0.0, 0.5, "unknown"),
        (1.0, -1.0, 0.0, "unknown"),
    ],
)
def test_budget(kernel_ms: float, wall_ms: float, comm: float, verdict: str) -> None:
    assert kernels.budget(kernel_ms, wall_ms, comm) == verdict


def test_no_kernel_trace() -> None:
    empty = {"kernels": 0, "kernel_time_ms": 0.0}
    assert (
        kernels.summarize({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "x", "ts": 0, "dur": 9}]})
        == empty
    )
    assert kernels.summarize({}) == empty
    assert kernels.merge([empty, empty]) == empty
    assert kernels.merge([]) == empty


def test_merge_keeps_busiest_worker() -> None:
    a = kernels.summarize({"traceEvents": [kernel(GEMM, 0, 100)]})
    b = kernels.summarize({"traceEvents": [kernel(GEMM, 0, 300)]})
    m = kernels.merge([a, {"kernels": 0, "kernel_time_ms": 0.0}, b])
    assert m["kernel_time_ms"] == pytest.approx(0.3)
    assert m["traces"] == 3


def test_load_trace_plain_gzip_and_list(tmp_path: Path) -> None:
    plain = tmp_path / "t.json"
    plain.write_text(json.dumps(TRACE))
    gz = tmp_path / "t.pt.trace.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(TRACE).encode()))
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(TRACE["traceEvents"]))
    for p in (plain, gz, listed):
        t = kernels.load_trace(p)
        assert t["traceEvents"] == TRACE["traceEvents"]
        assert kernels.summarize(t)["kernels"] == 7


# L4: Nsight Compute


def test_name_filter() -> None:
    names = [
        "void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 64>>(Flash_fwd_params)",
        "void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 64>>(Flash_fwd_params)",
        "ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_tn",
        "  void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int)  ",
        "void vllm::rms_norm_kernel<c10::BFloat16>(c10::BFloat16*)",
    ]
    assert ncu.name_filter(names) == (
        "regex:flash_fwd_kernel|ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_tn|vectorized_elementwise_kernel"
    )
    assert ncu.name_filter(names, 1) == "regex:flash_fwd_kernel"
    assert ncu.name_filter(["a.b(int)", "", "a.b"], 5) == r"regex:a\.b"


def test_prefix_argv(tmp_path: Path) -> None:
    argv = ncu.prefix("/usr/bin/ncu", tmp_path / "rep", "regex:k", skip=50, count=4)
    assert argv[0] == "/usr/bin/ncu"

    def after(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert after("--target-processes") == "all"
    assert after("--launch-skip") == "50"
    assert after("--launch-count") == "4"
    assert after("--section") == "SpeedOfLight"
    assert after("--kernel-name") == "regex:k"
    assert after("--export") == str(tmp_path / "rep")


def csv_text(rows: list[list[str]]) -> str:
    return "\n".join(",".join(f'"{c}"' for c in r) for r in rows) + "\n"


HEAD = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream"]


def test_parse_raw_csv_nanoseconds() -> None:
    head = [*HEAD, ncu.DRAM_ALT, ncu.DURATION, ncu.SM]
    text = "==PROF== Disconnected from process 100\n" + csv_text(
        [
            head,
            ["", "", "", "", "", "", "", "%", "nsecond", "%"],
            ["0", "100", "python", "h", "norm_kernel", "1", "7", "30", "2,500", "10"],
            ["1", "100", "python", "h", "gemm_kernel", "1", "7", "80.5", "12,000", "40"],
            ["2", "100", "python", "h", "gemm_kernel", "1", "7", "79.5", "14,000", "42"],
            ["3", "100"],  # a short line
        ]
    )
    ks = ncu.parse_raw_csv(text)["kernels"]
    assert [k["name"] for k in ks] == ["gemm_kernel", "norm_kernel"]  # longest first
    gemm, norm = ks
    assert gemm["launches"] == 2
    assert gemm["memory_pct_of_peak"] == pytest.approx(80.0)
    assert gemm["sm_pct_of_peak"] == pytest.approx(41.0)
    assert gemm["duration_us"] == pytest.approx(13.0)
    assert norm == {
        "name": "norm_kernel",
        "launches": 1,
        "memory_pct_of_peak": pytest.approx(30.0),
        "sm_pct_of_peak": pytest.approx(10.0),
        "duration_us": pytest.approx(2.5),
    }


def test_parse_raw_csv_microseconds_and_dram_fallback() -> None:
    head = [*HEAD, ncu.DRAM, ncu.DURATION, ncu.SM]
    text = csv_text(
        [
            head,
            ["", "", "", "", "", "", "", "%", "usecond", "%"],
            ["0", "1", "p", "h", "k", "1", "7", "55", "3.5", "20"],
        ]
    )
    (k,) = ncu.parse_raw_csv(text)["kernels"]
    assert k["duration_us"] == pytest.approx(3.5)
    assert k["memory_pct_of_peak"] == pytest.approx(55.0)


def test_parse_raw_csv_without_header() -> None:
    assert ncu.parse_raw_csv("") == {"kernels": []}
    assert ncu.parse_raw_csv('"ID","Name"\n"0","k"\n') == {"kernels": []}
    assert ncu.parse_raw_csv("==ERROR== the profiler failed\n") == {"kernels": []}


# The capture-validation gate

PLAUSIBLE = [
    ("l1", {"samples": 10}),
    ("l2", {"kernels": 5, "kernel_time_ms": 1.0}),
    ("l3", {"gpm_samples": 3, "dram_bw_util_pct": 40.0, "sm_occupancy_pct": 0.0}),
    ("l4", {"kernels": [{"name": "k"}]}),
    ("sim", {"steps": 4}),
]
IMPLAUSIBLE = [
    ("l1", {"samples": 0}),
    ("l1", {}),
    ("l2", {"kernels": 0, "kernel_time_ms": 0.0}),
    ("l2", {"kernels": 3, "kernel_time_ms": 0.0}),
    ("l3", {"gpm_samples": 0, "dram_bw_util_pct": 40.0}),
    ("l3", {"gpm_samples": 5, "dram_bw_util_pct": 0.0, "sm_occupancy_pct": 0.0}),
    ("l4", {"kernels": []}),
    ("sim", {"steps": 0}),
]


def ok(layer: str, figures: dict[str, object]) -> Capture:
    return Capture(
        layer=layer, engine="vllm", concurrency=4, status="ok", artifacts=["a.txt"], figures=figures
    )


@pytest.mark.parametrize(("layer", "figures"), PLAUSIBLE)
def test_gate_keeps_plausible(layer: str, figures: dict[str, object]) -> None:
    assert implausible(layer, figures) is None
    cap = ok(layer, figures)
    assert check(cap) == cap


@pytest.mark.parametrize(("layer", "figures"), IMPLAUSIBLE)
def test_gate_fails_implausible(layer: str, figures: dict[str, object]) -> None:
    why = implausible(layer, figures)
    assert why
    cap = ok(layer, figures)
    out = check(cap)
    assert out.status == "failed"
    assert out.reason == f"capture failed: {why}"
    assert out.model_copy(update={"status": "ok", "reason": None}) == cap  # nothing else changed
    assert cap.status == "ok"  # the input is left alone


@pytest.mark.parametrize("status", ["skipped", "failed"])
def test_gate_passes_non_ok_through(status: str) -> None:
    cap = Capture(layer="l2", engine="sglang", status=status, reason="no GPU", figures={"kernels": 0})
    assert check(cap) is cap


def test_name_filter_anonymous_namespace() -> None:
    """PyTorch kernels in an anonymous namespace: its parentheses are not the parameter list."""
    name = "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>(float*, float const*, int)"
    assert ncu.name_filter([name]) == "regex:cunn_SoftMaxForward"
    assert ncu.name_filter(["(anonymous namespace)::k(int)", "(", ""]) == "regex:k"
