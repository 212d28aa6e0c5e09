"""One error tree. Every failure the user can act on is a PerftuneError with a hint.

The CLI renders these once: a one-line message, a hint, and (where there is one) a log path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class PerftuneError(Exception):
    """Base of all perftune errors: message + hint (+ optional log path)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "", log_path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.log_path = log_path


class ConfigError(PerftuneError):
    """Bad user input: flags, spec files, workload files."""

    exit_code = 2


class ModelError(PerftuneError):
    """A model (config, catalog name, folder) cannot be read or understood: bad input, exit 2."""

    exit_code = 2


class DeployError(PerftuneError):
    """An engine could not be started, or died."""


class BenchError(PerftuneError):
    """The bench could not measure: endpoint unreachable, server rejected the requests."""


class GateError(PerftuneError):
    """A campaign gate is red."""


class Interrupted(PerftuneError):
    """The user stopped a long command (SIGINT, SIGTERM) after it tore down and saved what it had."""

    exit_code = 130


class LakeError(PerftuneError):
    """The perf lake could not be read or written."""


class RegistryError(PerftuneError):
    """The known-good registry is missing, malformed, or refuses the change."""

    exit_code = 3


def config_error_from(e: ValidationError, what: str, *, hint: str) -> ConfigError:
    """A pydantic ValidationError as one ConfigError line: '<what><field.path>: <message>' (first error)."""
    err = e.errors()[0]
    return ConfigError(f"{what}{'.'.join(map(str, err['loc']))}: {err['msg']}", hint=hint)
