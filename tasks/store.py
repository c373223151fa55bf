"""The store: any fsspec URL (local path, file://, s3://, memory://...) with atomic writes.

Paths inside the store follow ``../shared/DESIGN.md``::

    STORE/datasets/<dataset_id>/{catalog.parquet, shards/, stats.json, config.json}
    STORE/models/<model_id>/
    STORE/generated/<run_id>/

Credentials and endpoints come from the usual places (``AWS_*`` variables,
``FSSPEC_S3_ENDPOINT_URL``...), so every Dask worker sees the same store.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from musicflow.errors import StoreError


@dataclass(frozen=True)
class Store:
    """A filesystem and a root path in it; cheap to rebuild from ``url`` anywhere."""

    url: str
    fs: fsspec.AbstractFileSystem
    root: str

    @property
    def is_local(self) -> bool:
        return is_local_fs(self.fs)

    def path(self, *parts: str) -> str:
        """Path of ``parts`` under the root, as the filesystem names it."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def full_url(self, *parts: str) -> str:
        """URL with protocol of ``parts``, for libraries that open URLs themselves."""
        path = self.path(*parts)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    def read_bytes(self, *parts: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(*parts)))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a whole file so that readers see the old or the new content, never a part.

        On a local disk: write a temporary sibling, then rename over. On object
        stores a single PUT is already atomic.
        """
        path = self.path(*parts)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        partial = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.pipe_file(partial, data)
            self.fs.mv(partial, path)
        finally:
            if self.fs.exists(partial):
                self.fs.rm(partial)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_json(self, value: Any, *parts: str, indent: int | None = 2) -> None:
        """Write JSON atomically; ``indent=None`` for large machine-read files."""
        self.write_bytes(json.dumps(value, indent=indent, sort_keys=True).encode(), *parts)

    def list_dirs(self, *parts: str) -> list[str]:
        """Names of the folders directly under ``parts`` (empty when it does not exist)."""
        path = self.path(*parts)
        if not self.fs.exists(path):
            return []
        return sorted(
            posixpath.basename(entry["name"].rstrip("/"))
            for entry in self.fs.ls(path, detail=True)
            if entry["type"] == "directory"
        )

    @contextlib.contextmanager
    def lock(self, *parts: str, timeout: float = 120.0, stale_after: float = 60.0) -> Iterator[None]:
        """Hold an exclusive lock file at ``parts`` for the duration of the block.

        The lock is created with an exclusive create (``O_EXCL`` locally, an
        ``If-None-Match`` conditional PUT on S3), so two processes on any hosts
        never both hold it. A lock whose holder is a dead process of this host,
        or older than ``stale_after`` seconds (commits take well under that),
        belongs to a killed run and is broken. Raises :class:`StoreError` after
        ``timeout`` seconds of waiting.
        """
        path = self.path(*parts)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        owner = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "token": uuid.uuid4().hex}
        ).encode()
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                with self.fs.open(path, "xb") as handle:
                    handle.write(owner)
                break
            except FileExistsError:
                if self._lock_is_stale(path, stale_after):
                    with contextlib.suppress(FileNotFoundError, OSError):
                        self.fs.rm(path)
                    continue
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"timed out after {timeout:.0f} s waiting for the lock {self.full_url(*parts)}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.rm(path)

    def _lock_is_stale(self, path: str, stale_after: float) -> bool:
        try:
            holder = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return False  # vanished: try again
        except (ValueError, OSError):
            # Half-written: its holder is still writing it, or was killed doing so; only age tells.
            try:
                return time.time() - self.fs.modified(path).timestamp() > stale_after
            except (OSError, NotImplementedError):
                return False
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))):
            return True
        return time.time() - float(holder.get("time", 0)) > stale_after

    def rm(self, *parts: str) -> None:
        path = self.path(*parts)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


# fsspec options (credentials, endpoint...) by URL prefix; see register_storage_options.
_STORAGE_OPTIONS: dict[str, dict[str, Any]] = {}


def register_storage_options(url_prefix: str, options: dict[str, Any] | None) -> None:
    """Use ``options`` (fsspec storage options) for every URL under ``url_prefix`` in this process.

    The source and the store can each have their own (two S3 endpoints, two
    sets of credentials). Registration is per process: whoever sends work to
    another process (a Dask worker) sends the options along and registers them
    there. ``None`` or ``{}`` removes the prefix's options.
    """
    if options:
        _STORAGE_OPTIONS[url_prefix] = dict(options)
    else:
        _STORAGE_OPTIONS.pop(url_prefix, None)


def registered_storage_options() -> dict[str, dict[str, Any]]:
    """Every registered prefix and its options (to send to another process)."""
    return {prefix: dict(options) for prefix, options in _STORAGE_OPTIONS.items()}


def storage_options_for(url: str) -> dict[str, Any]:
    """The registered options of the longest prefix of ``url`` (empty when none matches)."""
    matches = [prefix for prefix in _STORAGE_OPTIONS if url.startswith(prefix)]
    return dict(_STORAGE_OPTIONS[max(matches, key=len)]) if matches else {}


def url_to_fs(url: str, **options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """``fsspec.core.url_to_fs`` with the options registered for ``url`` (``options`` win).

    Every place that opens a URL goes through here, so registered credentials
    reach every filesystem musicflow opens.
    """
    return fsspec.core.url_to_fs(url, **{**storage_options_for(url), **options})


def open_store(url: str) -> Store:
    """Open the store at ``url``; :class:`StoreError` names the URL when that fails."""
    if not url or not isinstance(url, str):
        raise StoreError(f"invalid store URL {url!r}")
    try:
        fs, root = url_to_fs(url, auto_mkdir=True) if _is_local_url(url) else url_to_fs(url)
    except (ValueError, ImportError, OSError) as error:
        raise StoreError(f"cannot open store {url!r}: {error}") from error
    return Store(url=url, fs=fs, root=root.rstrip("/") or root)


def check_writable(store: Store) -> None:
    """Create the root and write/delete a probe file; :class:`StoreError` when that fails."""
    probe = f".probe-{uuid.uuid4().hex[:8]}"
    try:
        store.fs.makedirs(store.root, exist_ok=True)
        store.fs.pipe_file(store.path(probe), b"ok")
        store.fs.rm(store.path(probe))
    except Exception as error:  # any backend error means the same thing to the user
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StoreError(f"cannot write to store {store.url!r}: {reason}") from error


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local disk, where renames are atomic and paths need no protocol."""
    return isinstance(fs, LocalFileSystem)


def _is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://") or url.startswith("local://")
