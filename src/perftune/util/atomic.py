"""Atomic file writes: temp file in the same folder, fsync, rename. A crash never leaves half a file.

The result has the mode a plain `open(path, "w")` would give: a replaced file keeps its mode (and its
owner and group where we may set them), a new file gets 0o666 & ~umask. mkstemp's 0o600 applies only
while the temp file is written, so nobody reads a half-written file.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux >= 4.7: /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # No /proc: os.umask can only be read by setting it. Set it to the most private value for the
    # instant it is changed, so a file another thread creates meanwhile is never too open.
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _final_mode(tmp: Path, target: Path) -> None:
    """Give `tmp` the mode (and owner/group) `target` has, or a new file's mode under the umask."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        os.chmod(tmp, 0o666 & ~current_umask())
        return
    mine = os.stat(tmp)
    if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid):
        # chown before chmod: chown may clear setuid/setgid bits. Only root may give a file away, and
        # only to a group we are in may we move it: keep what we may, never fail the write over it.
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except OSError:
            with suppress(OSError):
                os.chown(tmp, -1, st.st_gid)
    os.chmod(tmp, stat.S_IMODE(st.st_mode))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; if the block succeeds it atomically replaces `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # fsync what the caller wrote, whoever wrote it
            os.fsync(fh.fileno())
        _final_mode(tmp, target)  # after the block: the caller may have recreated the temp file
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())
