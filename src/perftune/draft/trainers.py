"""Draft trainers behind one interface: what must be installed, the job's steps as argv, where the
engine-loadable draft lands, and the training metrics. Today: speculators (the vLLM project's EAGLE-3
trainer; chosen over SpecForge because its checkpoints are what vLLM's `eagle3` method loads, it
trains from stored hidden states without a running engine, and it resumes from its own checkpoints).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from perftune.draft.job import DraftJob


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


class Trainer(Protocol):
    name: str

    def available(self, python: str) -> str | None: ...
    def steps(self, job: DraftJob) -> list[Step]: ...
    def export_dir(self, job: DraftJob) -> Path: ...
    def metrics(self, job: DraftJob) -> tuple[list[float], float | None, str | None]: ...


OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def step_env() -> dict[str, str]:
    """No hub, and this perftune importable in the trainer's Python (its own steps run there)."""
    import perftune

    src = str(Path(perftune.__file__).resolve().parents[1])
    return {**OFFLINE, "PYTHONPATH": os.pathsep.join(x for x in (src, os.environ.get("PYTHONPATH", "")) if x)}


def n_layers(target: str) -> int:
    cfg = json.loads((Path(target) / "config.json").read_text())
    return int(cfg.get("num_hidden_layers") or cfg["text_config"]["num_hidden_layers"])


def vocab_size(target: str) -> int:
    cfg = json.loads((Path(target) / "config.json").read_text())
    return int(cfg.get("vocab_size") or cfg["text_config"]["vocab_size"])


class Speculators:
    name = "speculators"

    def versions(self, python: str) -> str:
        r = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('speculators'))"],
                           capture_output=True, text=True, check=False)  # fmt: skip
        return r.stdout.strip()

    def available(self, python: str) -> str | None:
        probe = (
            "import importlib.metadata as m, torch, transformers, datasets, safetensors, speculators; "
            "print('speculators', m.version('speculators'), 'torch', torch.__version__, "
            "'transformers', transformers.__version__)"
        )
        try:
            r = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
        except OSError as e:
            return f"the training Python {python} cannot run ({e.strerror}): set PERFTUNE_DRAFT_PYTHON"
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            return (
                f"speculators is not available in {python} ({last}): pip install speculators (it needs "
                "torch and transformers 5); or point PERFTUNE_DRAFT_PYTHON at a Python that has it"
            )
        return None

    def steps(self, job: DraftJob) -> list[Step]:
        py, out, jf = job.python, Path(job.out_dir), str(Path(job.out_dir) / "job.json")
        own = [py, "-m", "perftune.draft.steps"]
        n = n_layers(job.target)
        layers = [str(x) for x in (2, n // 2, n - 3)]
        train = [
            "--verifier-name-or-path", str(Path(job.target).resolve()),
            "--data-path", str(out / "dataset"),
            "--hidden-states-path", str(out / "dataset" / "hidden_states"),
            "--save-path", str(out / "checkpoints"),
            "--epochs", str(job.epochs),
            "--lr", str(job.lr),
            "--total-seq-len", str(max(job.seq_len, 1024)),
            "--on-missing", "raise",
            "--target-layer-ids", *layers,
            "--draft-vocab-size", str(min(job.draft_vocab, vocab_size(job.target))),
            # the classic EAGLE-3 layout (no extra norms, full attention) that engines load
            "--no-norm-output", "--no-norm-before-fc", "--full-attention-indices", "0",
        ]  # fmt: skip
        # eager loss everywhere: speculators 0.9's fused Triton KL loss fails under torch 2.11's dynamo
        # (H200, 2026-12-03: "ListVariable ... is already tracked for mutation" in its backward)
        train += ["--loss-implementation", "eager"]
        if job.device == "cpu":
            train += ["--num-workers", "0", "--draft-attn-impl", "sdpa"]
        prepare = [py, "-m", "speculators", "prepare-data", "--model", str(Path(job.target).resolve())]
        prepare += ["--data", str(out / "pretok.jsonl"), "--output", str(out / "dataset")]
        prepare += ["--seq-length", str(job.seq_len), "--no-skip-token-freq", "--overwrite"]
        env = step_env()
        return [
            Step("respond", [*own, "respond", jf], env),
            Step("pretok", [*own, "pretok", jf], env),
            Step("prepare", prepare, env),
            Step("hidden", [*own, "hidden", jf], env),
            Step("train", [*own, "train", jf, *train], env),
        ]

    def export_dir(self, job: DraftJob) -> Path:
        return Path(job.out_dir) / "checkpoints" / "checkpoint_best"

    def metrics(self, job: DraftJob) -> tuple[list[float], float | None, str | None]:
        """Training losses in step order and the best checkpoint's validation acc_0, from the
        metrics.jsonl our train step records (speculators' own metric dicts)."""
        path = Path(job.out_dir) / "metrics.jsonl"
        if not path.exists():
            return [], None, None
        losses: list[float] = []
        acc0: float | None = None
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec.get("train"), dict) and "loss" in rec["train"]:
                losses.append(float(rec["train"]["loss"]))
            if isinstance(rec.get("val"), dict) and "full_acc_0_epoch" in rec["val"]:
                acc0 = float(rec["val"]["full_acc_0_epoch"])
        best = self.export_dir(job) / "val_metrics.json"
        if best.exists():  # the checkpoint the engine loads: its own validation figure
            v = json.loads(best.read_text())
            v = v.get("val", v)
            if "full_acc_0_epoch" in v:
                acc0 = float(v["full_acc_0_epoch"])
        return losses, acc0, str(path)


TRAINERS: dict[str, Trainer] = {"speculators": Speculators()}
