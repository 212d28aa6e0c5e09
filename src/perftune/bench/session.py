"""A bench session: validate, check the out folder, run the trials on uvloop, write the evidence.

The imperative shell around run_bench that every caller shares (the CLI through the api, a campaign's
cells, the tuner's live evaluator), so a bench that writes an evidence folder exists once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from perftune.bench.output import RecordsFormat, check_out_dir, write_run_safely
from perftune.bench.records import PARTIAL_NAME, CountTokens
from perftune.bench.runner import BenchConfig, BenchRun, Observer, run_bench, validate
from perftune.errors import ConfigError

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when available (lower per-chunk overhead), else asyncio's loop."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - non-Linux
        return asyncio.run(coro)


def default_run_dir(prefix: str, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    short = hashlib.sha1(f"{stamp}{time.monotonic_ns()}".encode()).hexdigest()[:6]
    return Path(root) / f"{prefix}-{stamp}-{short}"


def tokenizer_counter(path: str | None) -> CountTokens | None:
    """A text -> token count function from a tokenizer.json / model folder, for the retokenize fallback."""
    if not path:
        return None
    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.exists():
        raise ConfigError(f"tokenizer not found: {file}", hint="pass a model folder or a tokenizer.json")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(file))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def bench_to_dir(
    cfg: BenchConfig,
    *,
    out_dir: str | Path | None = None,
    records_format: RecordsFormat = "jsonl",
    tokenizer: str | None = None,
    observer: Observer | None = None,
    refuse_incomplete: bool = False,
) -> tuple[BenchRun, dict[str, str]]:
    """Run a bench and write its evidence folder (a bench session). Returns the run and the paths.

    The out folder is checked before anything is measured; records stream to
    `records.partial.jsonl` while the trials run (a killed bench keeps them); a folder that fails
    after the run sends the evidence to a fallback folder, named in paths["fallback"].
    `refuse_incomplete`: a folder still holding a killed run's partial records is a ConfigError
    (the CLI's choice) instead of being benched over (callers that own their folders, e.g. a resume).
    """
    validate(cfg)
    count = tokenizer_counter(tokenizer)
    target = Path(out_dir or default_run_dir("bench"))
    created = not target.exists()
    out = check_out_dir(target, refuse_incomplete=refuse_incomplete)
    try:
        run = run_async(
            run_bench(cfg, observer=observer, count_tokens=count, partial_path=out / PARTIAL_NAME)
        )
    except BaseException:
        if created:  # a run that failed before measuring anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    paths = write_run_safely(run, out, records_format)
    return run, paths
