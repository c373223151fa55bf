"""The one rule that tells a song's fault from the machinery's (tasks.errors.is_infrastructure)."""

from __future__ import annotations

import errno

import pytest

from tasks.errors import (
    ConfigError,
    DecodeError,
    InfrastructureError,
    StoreError,
    as_infrastructure,
    error_text,
    is_infrastructure,
    is_verdict,
)


class KilledWorker(Exception):  # distributed's, by name: the domain does not import Dask
    pass


@pytest.mark.parametrize(
    ("error", "infrastructure"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/store/x"), True),
        (OSError(errno.EIO, "Input/output error"), True),
        (OSError("a backend's error without a number"), True),
        (TimeoutError("reading the file took longer than 60 s"), True),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
        (KilledWorker("ingest-batch-1"), True),
        (InfrastructureError("store write failed: ..."), True),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "song.mp3"), False),
        (PermissionError(errno.EACCES, "Permission denied", "song.mp3"), False),
        (DecodeError("not audio"), False),
        (ConfigError("invalid x"), False),
        (StoreError("inconsistent"), False),
        (ValueError("a decoder fed odd bytes"), False),
    ],
)
def test_what_is_the_machinerys_fault(error: BaseException, infrastructure: bool) -> None:
    assert is_infrastructure(error) is infrastructure


def test_verdicts_are_ours_and_not_infrastructure() -> None:
    assert is_verdict(StoreError("x")) and is_verdict(DecodeError("x"))
    assert not is_verdict(InfrastructureError("x"))
    assert not is_verdict(OSError(errno.EIO, "Input/output error"))
    assert not is_verdict(ValueError("a bug"))


def test_an_infrastructure_error_says_what_failed_in_one_line() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/store/shards/a.zarr/c/0/0")
    assert error_text(full) == "[Errno 28] No space left on device"  # the same on every file
    message = "store write failed: [Errno 28] No space left on device"
    assert str(as_infrastructure(full, "store write")) == message
    assert error_text(ValueError("odd\nbytes")) == "ValueError: odd bytes"
    with pytest.raises(ValueError, match="already"):  # raised from itself, it would be its own cause
        as_infrastructure(InfrastructureError("x"), "store write")
