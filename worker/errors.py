"""The worker's exceptions, named by what the caller does next.

    WorkerError
    ├── ConfigError                 fix the configuration and restart
    │   ├── ConfigErrors            several ConfigError collected at load time
    │   ├── NotARead                a configured query would write
    │   └── ConnectorMissing        no connector (or driver extra) for a source type
    ├── RetriableError              try again later (engine down, queue busy)
    │   ├── EngineUnavailable       5xx, timeout, refused connection
    │   └── QueueUnavailable        the queue database did not answer
    ├── FatalError                  stop: nothing a retry can mend
    │   ├── EngineAuthError         401/403 from the engine: a configuration problem
    │   └── NotOurs                 the job is not this worker's: fail it, never run it
    │       └── UnknownLookup       (worker.pipeline) no such lookup, no fallback text
    ├── LeaseLost                   another worker owns the job now; drop it quietly
    ├── InvalidInput                the job cannot run as given: `invalid_input`, with
    │                               customer-readable reasons; no source is read
    ├── InputRefused                a source refused a customer's value: `invalid_input`,
    │                               and the source is not counted as failing
    ├── CircuitOpen                 the source keeps failing: skip the read (`fallback`)
    ├── BadInbound                  a customer's message body (`POST /webhook/inbound`,
    │                               `/inbound`) is not one it may take: 422, nothing queued
    ├── RenderError                 (worker.render) a reply template failed: `fallback`
    ├── DeadlinePassed              a render passed its deadline inside the sandbox;
    │                               the renderer answers it as a `RenderError`
    └── SourceError                 a data source failed: the job gets `fallback`
        ├── SourceTimeout           the read passed its deadline
        ├── SourceAuthError         the source refused the credentials
        └── SourceUnavailable       the source cannot be reached
            └── SourceFull          it has no connection to spare (too many clients):
                                    read on the ones the worker has

Connectors translate driver errors into the `SourceError` family (or
`InputRefused`) in one place each (`raise SourceError(...) from exc`), so the
pipeline never sees a driver's own exception type. Messages never carry secrets:
they name the source, not its credentials; `without_password` masks the one
inside a DSN or URL before it is printed.

The command line ends with one of the exit codes of contract §7 (`EXIT_OK` …
`EXIT_UNREACHABLE`); `worker.cli` maps these errors to them in one place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "BadInbound",
    "CircuitOpen",
    "ConfigError",
    "ConfigErrors",
    "ConnectorMissing",
    "DeadlinePassed",
    "EngineAuthError",
    "EngineUnavailable",
    "FatalError",
    "InputRefused",
    "InvalidInput",
    "LeaseLost",
    "NotARead",
    "NotOurs",
    "QueueUnavailable",
    "RetriableError",
    "SourceAuthError",
    "SourceError",
    "SourceFull",
    "SourceTimeout",
    "SourceUnavailable",
    "WorkerError",
    "without_password",
]

#: Contract §7: success; a check failed or a lookup's outcome was not ``ok``; a usage
#: error; an invalid config (or a setting that cannot be used); a server (engine,
#: queue, source) that could not be reached.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG, EXIT_UNREACHABLE = 0, 1, 2, 3, 4

# scheme://user:password@host…, and libpq's key=value form (password=… in a DSN)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^\s/?#]*(?=@)")
_KV_PASSWORD = re.compile(r"(?i)(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)")


def without_password(text: str) -> str:
    """``text`` with the password of every DSN or URL in it masked (``user:***@host``).

    Works on a bare DSN and on a message quoting one; libpq's ``password=…``
    form is masked too. The user, host and database stay: they say where.
    """
    masked = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + "***", masked)


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""


class ConfigError(WorkerError):
    """A configuration value is wrong; `where` says which file, path and line."""

    def __init__(self, message: str, *, where: str = "") -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ConfigErrors(ConfigError):
    """All problems found while loading one config, reported together."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} problem(s) in the configuration:\n{lines}")


class RetriableError(WorkerError):
    """Worth trying again after a back-off."""


class EngineUnavailable(RetriableError):
    """The engine answered 5xx, timed out or refused the connection."""


class QueueUnavailable(RetriableError):
    """The queue database did not answer (restarting, unreachable)."""


class FatalError(WorkerError):
    """Nothing a retry can mend."""


class EngineAuthError(FatalError):
    """The engine refused the worker's token (401/403): fix ENGINE_TOKEN."""


class NotOurs(FatalError):
    """The job is not this worker's to run: fail it without retry."""


class BadInbound(WorkerError, ValueError):
    """A customer's message body is not what the inbound endpoints take; says what is wrong."""


class DeadlinePassed(WorkerError):
    """The render in progress passed its deadline (`worker.sandbox`)."""


class LeaseLost(WorkerError):
    """The job's lease expired and another worker may own it now."""


@dataclass
class InvalidInput(WorkerError):
    """The job cannot run as given; ``errors`` are customer-readable."""

    errors: list[str]
    reply_to: str | None = None

    def __str__(self) -> str:
        return "; ".join(self.errors)


class InputRefused(WorkerError):
    """The source refused a value the customer sent (not a number, no such date, too long).

    The source works; the customer's words do not fit it. ``argument`` is the
    1-based position of the refused ``$n`` when the server says which. The
    message never quotes the value.
    """

    def __init__(self, source_id: str, message: str, *, argument: int | None = None) -> None:
        self.source_id = source_id
        self.message = message
        self.argument = argument
        super().__init__(f"source {source_id!r}: {message}")


class CircuitOpen(WorkerError):
    """The source's circuit is open: do not call it (`worker.circuit`)."""


class SourceError(WorkerError):
    """A data source failed; the job is answered with the lookup's fallback."""

    def __init__(self, source_id: str, message: str) -> None:
        self.source_id = source_id
        self.message = message
        super().__init__(f"source {source_id!r}: {message}")


class SourceTimeout(SourceError):
    """The read did not finish before its deadline."""


class SourceAuthError(SourceError):
    """The source refused the configured credentials."""


class SourceUnavailable(SourceError):
    """The source could not be reached."""


class SourceFull(SourceUnavailable):
    """The source refused another connection (too many clients): it is up, with none
    to spare. The worker goes on with the connections it already has (worker.sources)."""


class NotARead(ConfigError):
    """A configured query is not a read (INSERT, UPDATE, a write command…)."""


class ConnectorMissing(ConfigError):
    """No connector is installed for a source type."""
