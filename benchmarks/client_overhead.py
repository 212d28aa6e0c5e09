"""Client overhead: the faithful ceiling of perftune's client vs `vllm bench serve`, same run, same mock.

Both clients run, one after the other, against ONE mock server (child process, 1 token per chunk,
100 ms TTFT, 20 ms ITL, 256 in / 128 out) over the same concurrency ladder. At each level a client is
faithful when its mean TTFT and its output throughput are both within 10% of ground truth (as in
`perftune bench calibrate`); its ceiling is the highest faithful output tok/s. vLLM's client is
installed in this benchmark's own virtual environment (.bench-venv/vllm, made on first use:
vllm==0.26.0 without its CUDA dependencies plus the CPU build of torch; it only needs to import).

    python benchmarks/client_overhead.py [--ladder 64,256,...] [--skip-vllm]

Last line: `ceiling: perftune=X tok/s vllm=Y tok/s ratio=R`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perftune import api
from perftune.bench.calibrate import CalibrationPoint, MockTruth, ceiling, point, requests_for
from perftune.mock.process import mock_process

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench-venv" / "vllm"
REQS = Path(__file__).with_name("vllm-bench-requirements.txt")
LADDER = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 1536, 1792, 2048, 3072)
TRUTH = MockTruth(ttft_ms=100.0, itl_ms=20.0, tokens_per_chunk=1, isl=256, osl=128)


def ensure_vllm_venv() -> Path:
    py = VENV / "bin" / "python"
    if (
        py.exists()
        and subprocess.run([py, "-c", "import vllm.benchmarks.serve"], capture_output=True).returncode == 0
    ):
        return py
    print(f"installing vllm bench serve into {VENV} (one time, a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # CPU build; vLLM's client only imports torch
    subprocess.run([*pip, "--no-deps", "-r", str(REQS)], check=True)
    return py


def tokenizer_dir() -> Path:
    """vLLM's random dataset needs a tokenizer folder; any Llama-3-sized one will do (no hub access)."""
    shared = ROOT.parent / "shared" / "gpu" / "models" / "llama-3.1-8b-dummy"
    if (shared / "tokenizer.json").exists():
        return shared
    raise SystemExit(
        "needs ../shared/gpu/models/llama-3.1-8b-dummy (a tokenizer folder) for vllm bench serve"
    )


def perftune_point(endpoint: str, c: int) -> CalibrationPoint:
    return api.calibration_point(endpoint, c, TRUTH)


def vllm_point(py: Path, endpoint: str, c: int, tok: Path) -> CalibrationPoint:
    with tempfile.TemporaryDirectory() as d:
        cmd = [
            str(py),
            "-m",
            "vllm.entrypoints.cli.main",
            "bench",
            "serve",
            "--backend",
            "vllm",
            "--base-url",
            endpoint,
            "--model",
            "mock",
            "--tokenizer",
            str(tok),
            "--dataset-name",
            "random",
            "--random-input-len",
            str(TRUTH.isl),
            "--random-output-len",
            str(TRUTH.osl),
            "--random-range-ratio",
            "0",
            "--num-prompts",
            str(requests_for(c)),
            "--max-concurrency",
            str(c),
            "--request-rate",
            "inf",
            "--ignore-eos",
            "--num-warmups",
            str(min(c, 64)),
            "--disable-tqdm",
            "--save-result",
            "--result-dir",
            d,
            "--result-filename",
            "r.json",
        ]
        env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        f = Path(d) / "r.json"
        if not f.exists():
            raise RuntimeError(
                f"vllm bench serve failed at c={c}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
            )
        r = json.loads(f.read_text())
    return point(c, r["mean_ttft_ms"], r["output_throughput"], TRUTH, itl_ms=r.get("mean_itl_ms"))


def sweep(name: str, measure: object, ladder: list[int]) -> list[CalibrationPoint]:
    pts: list[CalibrationPoint] = []
    misses = 0
    for c in ladder:
        p = measure(c)  # type: ignore[operator]
        pts.append(p)
        print(
            f"{name:8s} c={c:5d} ttft {p.ttft_ms:8.2f} ms ({p.ttft_err:+6.1%})  "
            f"out {p.output_tok_s:9.0f} tok/s (truth {p.truth_output_tok_s:9.0f}, {p.tput_err:+6.1%})  "
            f"{'faithful' if p.faithful else 'NOT faithful'}",
            flush=True,
        )
        misses = 0 if p.faithful else misses + 1
        if misses >= 2:
            break
    return pts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ladder", default=",".join(map(str, LADDER)))
    ap.add_argument("--skip-vllm", action="store_true", help="perftune only (no reference: prints no ratio)")
    args = ap.parse_args()
    ladder = [int(x) for x in args.ladder.split(",")]
    py = None if args.skip_vllm else ensure_vllm_venv()
    print(
        f"mock: ttft {TRUTH.ttft_ms} ms, itl {TRUTH.itl_ms} ms, {TRUTH.tokens_per_chunk} tok/chunk, "
        f"{TRUTH.isl} in / {TRUTH.osl} out; host: {os.cpu_count()} cores; tolerance 10%",
        flush=True,
    )
    t0 = time.monotonic()
    with mock_process(TRUTH.ttft_ms, TRUTH.itl_ms, TRUTH.tokens_per_chunk) as endpoint:
        ours = sweep("perftune", lambda c: perftune_point(endpoint, c), ladder)
        theirs = (
            []
            if py is None
            else sweep("vllm", lambda c: vllm_point(py, endpoint, c, tokenizer_dir()), ladder)
        )
    for c in (64, 256):
        p = next((x for x in ours if x.concurrency == c), None)
        if p is not None:
            target = 0.03 if c == 64 else 0.10
            print(
                f"perftune TTFT error at c={c}: {p.ttft_err:+.2%} (target <= {target:.0%}: "
                f"{'met' if abs(p.ttft_err) <= target else 'NOT met'})"
            )
    for c in (64, 256):
        p = next((x for x in theirs if x.concurrency == c), None)
        if p is not None:
            print(f"vllm bench serve TTFT error at c={c}: {p.ttft_err:+.2%}")
    a, b = ceiling(ours), ceiling(theirs)
    print(f"elapsed {time.monotonic() - t0:.0f} s")
    pa = a.output_tok_s if a else 0.0
    pb = b.output_tok_s if b else 0.0
    ratio = f"{pa / pb:.2f}" if pb else "n/a"
    print(f"ceiling: perftune={pa:.0f} tok/s vllm={pb:.0f} tok/s ratio={ratio}")


if __name__ == "__main__":
    main()
