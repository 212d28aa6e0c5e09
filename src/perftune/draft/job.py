"""The entry point a submitted draft-training job runs: `python -m perftune.draft.job JOB.json`.

It runs as a background process in its own session (a batch job on a cluster later), outlives the
campaign that submitted it, and resumes: each step leaves `steps/<name>.done` and is skipped when the
job is run again; the trainer resumes from its own checkpoints. It leaves `train.log` (appended as it
happens), `progress.json` (the step now running) and, at the end, `result.json` ({status, out_path,
losses, acc0, error}), each written atomically so a poller never reads half of one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perftune.draft.trainers import TRAINERS, Step
from perftune.errors import PerftuneError
from perftune.util.atomic import write_text

LOG_NAME = "train.log"
RESULT_NAME = "result.json"
PROGRESS_NAME = "progress.json"
PID_NAME = "job.pid"


class DraftJob(BaseModel):
    """What to train: job.json."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["eagle3"] = Field(description="the draft method")
    trainer: Literal["speculators"] = Field("speculators", description="the training library")
    target: str = Field(description="the target model: a Hugging Face folder")
    data: str = Field(description="training prompts, JSONL of {'conversations': [{role, content}]}")
    python: str = Field(description="the Python with torch, transformers and speculators")
    out_dir: str = Field(description="the job's folder: logs, checkpoints, the exported draft")
    epochs: int = Field(1, ge=1, description="training epochs")
    max_samples: int = Field(2000, ge=1, description="conversations used")
    seq_len: int = Field(2048, ge=64, description="longest training sequence, tokens")
    response_tokens: int = Field(256, ge=8, description="tokens the target answers each prompt with")
    draft_vocab: int = Field(32000, ge=256, description="the head's reduced vocabulary (d2t/t2d)")
    lr: float = Field(1e-4, gt=0, description="learning rate")
    device: str | None = Field(None, description="torch device (None: the trainer's default, a GPU)")


class DraftResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["ok", "failed"]
    method: str
    trainer: str
    seconds: float
    out_path: str | None = Field(description="the engine-loadable draft folder, None on failure")
    losses: list[float] = Field(default_factory=list, description="training loss per logged step")
    acc0: float | None = Field(None, description="first-position accuracy on held-out data, 0..1")
    metrics_source: str | None = Field(None, description="the file the losses and acc_0 were read from")
    error: str | None = None


def _stamp(line: str) -> str:
    return f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}\n"


def _run_step(step: Step, out: Path, log_path: Path) -> None:
    """One step as its own process; its output appended to train.log; a failure raises with the tail."""
    with log_path.open("a", encoding="utf-8") as log:
        log.write(_stamp(f"step {step.name}: {' '.join(step.argv)}"))
        log.flush()
        rc = subprocess.run(
            step.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=out,
            env={**os.environ, **step.env},
            check=False,
        ).returncode
        log.write(_stamp(f"step {step.name}: exit {rc}"))
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-3:]
        raise PerftuneError(f"step {step.name} exited {rc}: {' | '.join(tail)[-400:]}")


def run_job(job: DraftJob) -> DraftResult:
    out = Path(job.out_dir)
    (out / "steps").mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_NAME
    trainer = TRAINERS[job.trainer]
    t0 = time.monotonic()
    error: str | None = None
    losses: list[float] = []
    acc0: float | None = None
    source: str | None = None
    try:
        with log_path.open("a", encoding="utf-8") as log:
            log.write(_stamp(f"job: {job.method} with {job.trainer} for {job.target}, python {job.python}"))
        why = trainer.available(job.python)
        if why is not None:
            raise PerftuneError(why)
        for step in trainer.steps(job):
            done = out / "steps" / f"{step.name}.done"
            if done.exists():
                continue
            write_text(out / PROGRESS_NAME, json.dumps({"step": step.name, "since": time.time()}) + "\n")
            _run_step(step, out, log_path)
            done.touch()
        losses, acc0, source = trainer.metrics(job)
    except PerftuneError as e:
        error = e.message
    except Exception as e:  # the library's own failure: the traceback to the log, one line to the result
        with log_path.open("a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
        error = f"{type(e).__name__}: {e}".splitlines()[0]
    result = DraftResult(
        status="ok" if error is None else "failed",
        method=job.method,
        trainer=job.trainer,
        seconds=round(time.monotonic() - t0, 1),
        out_path=str(trainer.export_dir(job)) if error is None else None,
        losses=losses,
        acc0=acc0,
        metrics_source=source,
        error=error,
    )
    write_text(out / RESULT_NAME, result.model_dump_json(indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m perftune.draft.job JOB.json`; exit 0 on success, 1 on failure."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m perftune.draft.job JOB.json\n")
        return 1
    path = Path(args[0])
    try:
        job = DraftJob.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as e:
        sys.stderr.write(f"invalid draft job {path}: {str(e).splitlines()[0]}\n")
        return 1
    write_text(Path(job.out_dir) / PID_NAME, f"{os.getpid()}\n")
    return 0 if run_job(job).status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
