"""One exception root for musicflow, so callers can catch everything we raise on purpose.

Messages name the bad value, in one line, so the CLI can print them as they are.
"""

from __future__ import annotations


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
