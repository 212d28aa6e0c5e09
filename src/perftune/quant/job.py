"""The entry point a submitted quantization job runs: `python -m perftune.quant.job JOB.json`.

It runs locally as a background process today (a Slurm job later). It reads a QuantJob, runs its
backend, and leaves two files in the job's out_dir: `quant.log` (what happened, appended as it happens)
and `result.json` ({status, scheme, backend, seconds, out_path, error}), written atomically so a poller
never reads half of it. Exit status 0 on success, 1 on failure.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perftune.errors import PerftuneError
from perftune.quant.backends import QuantJob, backend_for
from perftune.util.atomic import write_text

LOG_NAME = "quant.log"
RESULT_NAME = "result.json"


class QuantResult(BaseModel):
    """What a quantization job left behind: result.json."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "failed"] = Field(description="ok when the backend produced its output")
    scheme: str = Field(description="scheme id")
    backend: str = Field(description="backend name")
    seconds: float = Field(description="wall time of the backend run, s")
    out_path: str | None = Field(description="the quantized model (folder or GGUF), None on failure")
    error: str | None = Field(description="one-line error, None on success")


class _Log:
    """Appends timestamped lines to quant.log, flushing each (a poller tails it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def __call__(self, line: str) -> None:
        self._fh.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def load_job(path: Path) -> QuantJob:
    """Read and validate JOB.json."""
    return QuantJob.model_validate_json(Path(path).read_text(encoding="utf-8"))


def run_job(job: QuantJob) -> QuantResult:
    """Run one job: backend -> output; always writes quant.log and result.json in job.out_dir."""
    scheme = job.scheme_spec
    backend = backend_for(scheme)
    log = _Log(job.out_dir / LOG_NAME)
    t0 = time.monotonic()
    out_path: Path | None = None
    error: str | None = None
    try:
        log(f"job: scheme={scheme.name} backend={backend.name} family={job.family} model={job.model_dir}")
        why = backend.available()
        if why is not None:
            error = why
        else:
            out_path = backend.run(job, log)
            log(f"done: {out_path}")
    except PerftuneError as e:
        error = e.message + (f" ({e.hint})" if e.hint else "")
    except Exception as e:  # a library's own failure: keep the traceback in the log, one line in result
        log(traceback.format_exc().rstrip())
        error = f"{type(e).__name__}: {e}".splitlines()[0]
    finally:
        if error is not None:
            log(f"failed: {error}")
        log.close()
    result = QuantResult(
        status="ok" if error is None else "failed",
        scheme=scheme.name,
        backend=backend.name,
        seconds=round(time.monotonic() - t0, 3),
        out_path=str(out_path) if out_path is not None else None,
        error=error,
    )
    write_text(job.out_dir / RESULT_NAME, result.model_dump_json(indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m perftune.quant.job JOB.json`; exit 0 on success, 1 on failure."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m perftune.quant.job JOB.json\n")
        return 1
    job_path = Path(args[0])
    try:
        job = load_job(job_path)
    except (OSError, ValidationError, PerftuneError) as e:
        # no valid job, so no out_dir we trust: report next to JOB.json
        msg = e.message if isinstance(e, PerftuneError) else str(e).splitlines()[0]
        payload = {"status": "failed", "scheme": None, "backend": None, "seconds": 0.0, "out_path": None}
        write_text(job_path.with_name(RESULT_NAME), json.dumps({**payload, "error": msg}, indent=2) + "\n")
        sys.stderr.write(f"invalid quantization job {job_path}: {msg}\n")
        return 1
    return 0 if run_job(job).status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
