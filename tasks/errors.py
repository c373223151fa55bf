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
    """The store cannot be read or written, or its content is inconsistent."""
