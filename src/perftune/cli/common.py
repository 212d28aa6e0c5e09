"""Shared CLI plumbing: consoles, error rendering, JSON output."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from functools import wraps
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import orjson
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from perftune.errors import ConfigError, PerftuneError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from perftune.campaign.base import Event


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
                f"[bold red]error:[/] invalid {where}: {escape(first['msg'])}",
                highlight=False,
                soft_wrap=True,
            )
            err_console.print("[yellow]hint:[/] see --help for allowed values", highlight=False)
            raise SystemExit(2) from None
        except PerftuneError as e:
            if DEBUG["on"]:
                raise
            # escaped: a message or hint holds text like pip's 'perftune[quant]', not rich markup
            err_console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
            if e.hint:
                err_console.print(f"[yellow]hint:[/] {escape(e.hint)}", highlight=False, soft_wrap=True)
            if e.log_path:
                err_console.print(f"log: {escape(e.log_path)}", highlight=False, soft_wrap=True)
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


class PlainThrottle:
    """Which progress events a plain stream (a pipe, a file, --json's stderr) prints as a line. Pure:
    the caller passes the clock.

    - PhaseStart: never (the phase's own line already says "phase N of M").
    - EngineStarting: the first of each start, then at most every `engine_every_s`.
    - EngineReady: always.
    - TrialProgress: when the trial crosses 25, 50, 75 or 100 % of its requests, or `trial_every_s`
      after its last line.
    - TuneBudget: never (the tuner's own "tune: deploy ..." line carries it).
    """

    def __init__(self, trial_every_s: float = 5.0, engine_every_s: float = 10.0) -> None:
        self.trial_every_s, self.engine_every_s = trial_every_s, engine_every_s
        self.engine_at: dict[str, float] = {}  # engine -> when its last starting line was printed
        self.trial: tuple[str, int] | None = None
        self.trial_at, self.trial_quarter = 0.0, 0

    def wants(self, ev: Event, now: float) -> bool:
        from perftune.campaign.base import EngineReady, EngineStarting, TrialProgress

        if isinstance(ev, EngineStarting):
            last = self.engine_at.get(ev.engine)
            if last is not None and now - last < self.engine_every_s:
                return False
            self.engine_at[ev.engine] = now
            return True
        if isinstance(ev, EngineReady):
            self.engine_at.pop(ev.engine, None)  # the next start of this engine prints at once
            return True
        if isinstance(ev, TrialProgress):
            key = (ev.cell_id, ev.trial)
            if key != self.trial:
                self.trial, self.trial_at, self.trial_quarter = key, now, 0
            quarter = 4 * ev.done // ev.total if ev.total else 4
            if quarter > self.trial_quarter or now - self.trial_at >= self.trial_every_s:
                self.trial_at, self.trial_quarter = now, max(quarter, self.trial_quarter)
                return True
            return False
        return False


class ProgressRenderer:
    """The observer of a long command (`optimize`, `tune`): it takes the campaign's plain lines and its
    progress events (perftune.campaign.base.EventObserver).

    live (a terminal, not --json): every line is printed above a transient rich display of the
    current phase (N of M, elapsed), the engine starting (elapsed, its log's last line), the trial
    (requests done, live tok/s) and the tuner's GPU-minutes against its budget; finished engine starts
    and trials leave one line each. Otherwise: plain lines only, events throttled by PlainThrottle,
    nothing animated, no escape codes. Use it as a context manager around the command."""

    def __init__(self, console: Console, *, live: bool | None = None) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.throttle = PlainThrottle()
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.trial_key: tuple[str, int] | None = None

    def __enter__(self) -> ProgressRenderer:
        if self.live:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}", markup=False),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[info]}", markup=False),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the live display for a prompt; the tasks come back after it."""
        if self.bar is None:
            yield
            return
        self.bar.stop()
        try:
            yield
        finally:
            self.bar.start()

    def _print(self, line: str) -> None:
        c = self.bar.console if self.bar is not None else self.console
        c.print(line, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, message: str, /) -> None:
        from perftune.campaign.base import tune_budget_of

        self._print(message)
        budget = tune_budget_of(message)
        if budget is not None:
            self.event(budget)

    def event(self, ev: Event, /) -> None:
        from perftune.campaign.base import event_line

        if self.bar is None:
            if self.throttle.wants(ev, time.monotonic()):
                self._print(event_line(ev))
            return
        self._show(ev, self.bar)

    def _task(self, bar: Progress, name: str, description: str, total: float | None) -> TaskID:
        if name not in self.tasks:
            self.tasks[name] = bar.add_task(description, total=total, info="")
        return self.tasks[name]

    def _drop(self, bar: Progress, *names: str) -> None:
        for n in names:
            if n in self.tasks:
                bar.remove_task(self.tasks.pop(n))

    def _show(self, ev: Event, bar: Progress) -> None:
        from perftune.campaign.base import (
            EngineReady,
            EngineStarting,
            PhaseStart,
            TrialProgress,
            TuneBudget,
            event_line,
        )

        if isinstance(ev, PhaseStart):
            self._drop(bar, "phase", "engine", "trial")
            self._task(bar, "phase", f"phase {ev.n} of {ev.total} (id {ev.id}): {ev.name}", None)
        elif isinstance(ev, EngineStarting):
            t = self._task(bar, "engine", f"engine {ev.engine} starting", None)
            bar.update(t, description=f"engine {ev.engine} starting", info=ev.last_log_line[:100])
        elif isinstance(ev, EngineReady):
            self._drop(bar, "engine")
            self._print(event_line(ev))
        elif isinstance(ev, TrialProgress):
            if (ev.cell_id, ev.trial) != self.trial_key:
                self._drop(bar, "trial")
                self.trial_key = (ev.cell_id, ev.trial)
            label = f"{ev.cell_id} trial {ev.trial}/{ev.trials}"
            t = self._task(bar, "trial", label, ev.total)
            bar.update(t, completed=ev.done, total=ev.total, info=f"{ev.tok_s:,.0f} tok/s")
            if ev.total and ev.done >= ev.total:
                self._drop(bar, "trial")
                self._print(event_line(ev))
        elif isinstance(ev, TuneBudget):
            t = self._task(bar, "tune", "tune budget", ev.budget_min)
            of = f" of {ev.budget_min:g}" if ev.budget_min is not None else ""
            bar.update(
                t,
                completed=ev.spent_min,
                info=f"deploy {ev.deploys} ({ev.replayed} replayed), {ev.spent_min:.1f}{of} GPU-min",
            )
