"""One exception root for musicflow, so callers can catch everything we raise on purpose, and the one
rule that tells a song's fault from the machinery's (:func:`is_infrastructure`).

Messages name the bad value, in one line, so the CLI can print them as they are.
"""

from __future__ import annotations

import errno
from typing import Any


class MusicflowError(Exception):
    """Root of every error musicflow raises on purpose."""


class ConfigError(MusicflowError, ValueError):
    """A bad argument or configuration value (CLI exit code 2)."""


class DecodeError(MusicflowError):
    """A song could not be decoded into usable audio (recorded, then skipped)."""


class DecoderMissingError(MusicflowError):
    """ffmpeg is not installed, so nothing can be decoded (aborts the run)."""


class StoreError(MusicflowError):
    """The store cannot be read or written, or its content is inconsistent (CLI exit code 1)."""


class StoreArgumentError(StoreError, ConfigError):
    """A store URL that cannot be used as given: not there, an unknown protocol, not writable.

    A bad argument (CLI exit code 2), found before anything runs; still a :class:`StoreError`
    to whoever catches store failures.
    """


class ServiceError(MusicflowError):
    """A service a run needs (the Prefect API) did not answer (CLI exit code 1)."""


def exit_code(error: BaseException) -> int:
    """The CLI's one rule: 2 for a bad argument (:class:`ConfigError`), 1 for any other failure
    (a run that failed: store, decoder, service, training). A run that completes exits 0, even
    when some songs are recorded as failed."""
    return 2 if isinstance(error, ConfigError) else 1


class InfrastructureError(MusicflowError):
    """The machinery failed, not the song: a store write or read, a source read, a lost worker, a wait
    that ran out.

    It is retried, and a song it stopped is left unrecorded (no ``failed`` row), so the next plain run
    tries it again; the run that gave up on it fails (CLI exit code 1). ``summary`` carries what the
    run did all the same (an ingest's summary), for the caller to show.
    """

    def __init__(self, message: str, *, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary


# An OSError with one of these numbers is about the one file it names (it is missing, refused to us, not
# a file, its name is bad): the file's fault. Any other OSError (no space, I/O error, read-only, a network
# or a timeout, or no number at all, as fsspec backends raise them) is the machinery's.
_FILE_ERRNOS = frozenset(
    {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}
)
# Exceptions of the cluster and of waits, by class name: the domain does not import Dask.
_INFRASTRUCTURE_NAMES = frozenset(
    {"KilledWorker", "CommClosedError", "FutureCancelledError", "CancelledError", "TimeoutError"}
)


def is_infrastructure(error: BaseException) -> bool:
    """Whether ``error`` is the machinery's fault (store, source, network, cluster, a wait that ran out)
    rather than a song's content or a verdict of ours.

    The one rule the worker (a row, or a batch that fails), the Prefect tasks (retried or not), the
    ingest flow (files left unrecorded) and the CLI (exit 1) go by. An
    :class:`InfrastructureError` is; any other :class:`MusicflowError` (a decode verdict, a bad argument,
    an inconsistent store) is not; an ``OSError`` is unless it is about its one file
    (:data:`_FILE_ERRNOS`: missing, permission denied...); a lost Dask worker, a closed connection or a
    cancelled wait is. Anything else (a ``ValueError`` from a decoder fed odd bytes) is not. Where an
    error's place decides (a permission error writing the store is the store's), the code there raises
    :class:`InfrastructureError` itself.
    """
    if isinstance(error, InfrastructureError):
        return True
    if isinstance(error, MusicflowError):
        return False
    if isinstance(error, OSError):
        return error.errno not in _FILE_ERRNOS
    return any(kind.__name__ in _INFRASTRUCTURE_NAMES for kind in type(error).__mro__)


def first_line(error: BaseException) -> str:
    """``error``'s message up to its first line break, or its class name when it has none: what a
    one-line error says of the cause it wraps."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def error_text(error: BaseException) -> str:
    """``error`` in one line: one of ours as it is, an ``OSError`` with a number as ``[Errno 28] No space
    left on device`` (without the path: the same fault on every file reads the same), anything else with
    its class name."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        return f"[Errno {error.errno}] {error.strerror}"
    text = " ".join(str(error).split())
    if isinstance(error, MusicflowError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def is_verdict(error: BaseException) -> bool:
    """Whether ``error`` is a verdict of ours that would repeat (a bad argument, an inconsistent store, no
    decoder): never retried, and it stops the run; everything else that stops a task is retried."""
    return isinstance(error, MusicflowError) and not is_infrastructure(error)


def as_infrastructure(error: BaseException, what: str = "") -> InfrastructureError:
    """``error`` (not one already) as an :class:`InfrastructureError` whose message says ``what`` failed
    (``store write failed: [Errno 28] No space left on device``), to raise ``from error``."""
    if isinstance(error, InfrastructureError):  # raised from itself, it would be its own cause: a cycle
        raise ValueError("already an InfrastructureError: raise it as it is")
    return InfrastructureError(f"{what} failed: {error_text(error)}" if what else error_text(error))
