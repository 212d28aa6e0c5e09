"""Shared CLI plumbing: consoles, error rendering, JSON output."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import orjson
from pydantic import ValidationError
from rich.console import Console

from perftune.errors import ConfigError, PerftuneError


def _console(*, stderr: bool = False) -> Console:
    """A console that never cuts tables at 80 columns when the output is a pipe or a file."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=max(160, c.width))


err_console = _console(stderr=True)
out_console = _console()

P = ParamSpec("P")
R = TypeVar("R")

DEBUG = {"on": False}


def print_json(obj: Any) -> None:
    sys.stdout.write(
        orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n"
    )
    sys.stdout.flush()


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Render PerftuneErrors once: one line, a hint, the log path; exit with the error's code."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ValidationError as e:
            if DEBUG["on"]:
                raise
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "input"
            err_console.print(
                f"[bold red]error:[/] invalid {where}: {first['msg']}", highlight=False, soft_wrap=True
            )
            err_console.print("[yellow]hint:[/] see --help for allowed values", highlight=False)
            raise SystemExit(2) from None
        except PerftuneError as e:
            if DEBUG["on"]:
                raise
            err_console.print(f"[bold red]error:[/] {e.message}", highlight=False, soft_wrap=True)
            if e.hint:
                err_console.print(f"[yellow]hint:[/] {e.hint}", highlight=False, soft_wrap=True)
            if e.log_path:
                err_console.print(f"log: {e.log_path}", highlight=False, soft_wrap=True)
            raise SystemExit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise SystemExit(130) from None

    return wrapper


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM handled like Ctrl-C: the same unwinding (servers torn down, state saved, the lake
    published) instead of dying where it stands and leaving child servers behind."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def serve_forever(
    serve: Callable[[str, int, Any], Coroutine[Any, Any, None]],
    host: str,
    port: int,
    *,
    ready_json: bool,
    banner: Callable[[int], str],
) -> None:
    """Run one of perftune's own servers until Ctrl-C: announce the bound port (one JSON line for
    process supervisors, or a banner on stderr) and turn a bind failure into a one-line error."""
    import asyncio

    from perftune.bench.session import run_async

    async def main() -> None:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def announce(f: asyncio.Future[int]) -> None:
            if ready_json:
                sys.stdout.write(f'{{"event": "ready", "port": {f.result()}}}\n')
                sys.stdout.flush()
            else:
                err_console.print(banner(f.result()), highlight=False)

        ready.add_done_callback(announce)
        try:
            await serve(host, port, ready)
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {e.strerror}", hint="pick a free --port"
            ) from e

    with contextlib.suppress(KeyboardInterrupt):
        run_async(main())
