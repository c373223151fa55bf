"""Faults on demand, for tests and benchmarks: ``faulty:///abs/path`` is the local folder ``/abs/path``
behind a filesystem that fails, fills up or hangs when told to.

What it does is read from the JSON file that ``$MUSICFLOW_FAULTS`` names, read again whenever it
changes, so every process of a run (the flow, its Dask workers) follows the same file, and a test can
"free space" halfway by rewriting it. Its keys, all optional:

- ``enospc_after_bytes`` and ``usage_root``: a write that would take the files under ``usage_root``
  past that many bytes raises ``OSError(ENOSPC)`` (a disk that fills up, in the middle of a file);
- ``write_failure_rate`` / ``read_failure_rate``: that share of file opens for writing (and whole-file
  writes) / for reading (and whole-file reads) raise ``OSError(EIO)``, at random (``seed``, per process);
- ``hang_s``: every write sleeps that long first (a store write that never returns), or only those to a
  path containing ``hang_match``;
- ``log``: a file each injected fault appends one line to (``ENOSPC|EIO-read|EIO-write <path>``).

Without the variable (or with an empty file) it is the local folder as it is. It is not the local disk
to musicflow (:func:`tasks.store.store.is_local_fs`): a store there is written as on an object store.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import time
from typing import Any

from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

FAULTS_ENV = "MUSICFLOW_FAULTS"
_WRITE_MODES = frozenset("wax+")


class _Faults:
    """The control file's settings, read again when the file changes."""

    def __init__(self) -> None:
        self._stamp: tuple[str, int, int] | None = None
        self.settings: dict[str, Any] = {}
        self.random = random.Random()

    def current(self) -> dict[str, Any]:
        path = os.environ.get(FAULTS_ENV)
        if not path:
            self.settings, self._stamp = {}, None
            return self.settings
        try:
            status = os.stat(path)
        except FileNotFoundError:
            self.settings, self._stamp = {}, None
            return self.settings
        stamp = (path, status.st_mtime_ns, status.st_size)
        if stamp != self._stamp:
            with open(path) as handle:
                text = handle.read()
            self.settings = json.loads(text) if text.strip() else {}
            self.random.seed(f"{self.settings.get('seed', 0)}-{os.getpid()}")
            self._stamp = stamp
        return self.settings

    def before_write(self, n_bytes: int, path: str) -> None:
        settings = self.current()
        if settings.get("hang_s") and settings.get("hang_match", "") in path:
            time.sleep(float(settings["hang_s"]))
        limit = settings.get("enospc_after_bytes")
        if limit is not None and _usage(settings.get("usage_root") or path) + n_bytes > int(limit):
            self._log(settings, "ENOSPC", path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    def maybe_fail(self, kind: str, path: str) -> None:
        settings = self.current()
        rate = float(settings.get(f"{kind}_failure_rate") or 0.0)
        if rate and self.random.random() < rate:
            self._log(settings, f"EIO-{kind}", path)
            raise OSError(errno.EIO, f"injected {kind} failure", path)

    @staticmethod
    def _log(settings: dict[str, Any], fault: str, path: str) -> None:
        if settings.get("log"):
            with open(settings["log"], "a") as log:  # one short append: whole lines from every process
                log.write(f"{fault} {path}\n")


_FAULTS = _Faults()


def _usage(root: str) -> int:
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # removed while walking
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


class _FaultyFile:
    """A file opened for writing whose writes go through the faults first."""

    def __init__(self, inner: Any, path: str) -> None:
        self._inner = inner
        self._path = path

    def write(self, data: Any) -> int:
        _FAULTS.before_write(len(memoryview(data).cast("B")), self._path)
        written: int = self._inner.write(data)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> _FaultyFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._inner.close()


class FaultyFileSystem(DirFileSystem):
    """The local filesystem, with the faults of ``$MUSICFLOW_FAULTS`` (see the module)."""

    protocol = "faulty"
    async_impl = False  # zarr wraps it in fsspec's AsyncFileSystemWrapper, as any sync filesystem

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("asynchronous", None)
        super().__init__(path="/", fs=LocalFileSystem(auto_mkdir=True))
        self.path = ""  # no prefix: paths are the local ones

    def open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if _WRITE_MODES & set(mode):
            _FAULTS.maybe_fail("write", path)
            _FAULTS.before_write(0, path)
            return _FaultyFile(super().open(path, mode, *args, **kwargs), path)
        _FAULTS.maybe_fail("read", path)
        return super().open(path, mode, *args, **kwargs)

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        _FAULTS.maybe_fail("write", path)
        _FAULTS.before_write(len(value), path)
        super().pipe_file(path, value, *args, **kwargs)

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        _FAULTS.maybe_fail("read", path)
        return super().cat_file(path, *args, **kwargs)
