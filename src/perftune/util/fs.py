"""Filesystem checks done before work starts, so a bad output path never costs a measurement."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from perftune.errors import ConfigError


def writable_dir(path: str | Path, *, what: str, hint: str) -> Path:
    """Create `path` if needed and prove a file can be written there; a ConfigError (exit 2) if not."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".perftune-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to {what} {out}: {e.strerror or e}", hint=hint) from e
    return out
