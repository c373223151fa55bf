"""The store: any fsspec URL (local path, file://, s3://, memory://...) with atomic writes.

The store's layout (docs/data-format.md), each folder owned by its repository::

    STORE/datasets/<dataset_id>/{catalog/, shards/, stats.json, config.json}   tasks.dataset.repository
    STORE/models/<model_id>/                                                  tasks.model.repository
    STORE/generated/<run_id>/                                                 tasks.generation.runs

Ids become folder names only through :func:`checked_id`. Credentials and endpoints are registered
per URL prefix (:func:`register_storage_options`, docs/credentials.md), or come from the usual
places (``AWS_*`` variables...).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tasks.errors import ConfigError, StoreError

# ``faulty:///path``: a local folder with faults on demand, for the fault tests and the soak benchmark
# (:mod:`tasks.store.faults`); known in every process that opens a store, Dask workers included, and
# imported only when such a URL is opened.
fsspec.register_implementation("faulty", "tasks.store.faults.FaultyFileSystem", clobber=True)

# An id that names a folder of the store (a dataset, a model, a generated run): letters, digits,
# ".", "_" and "-", starting with a letter or digit, so that it stays one folder inside the store
# ("../x", "a/b", "" and "." never reach a path).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def checked_id(kind: str, value: str) -> str:
    """``value`` if it is a valid ``kind`` id (:data:`ID_PATTERN`); :class:`ConfigError` naming it."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ConfigError(
            f"invalid {kind} id {value!r}: use letters, digits, '.', '_' and '-' (at most 128, "
            "starting with a letter or digit)"
        )
    return value


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
        self._write_whole(self.path(*parts), data)

    def _write_whole(self, path: str, data: bytes) -> None:
        """:meth:`write_bytes` at a path as the filesystem names it."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        partial = _partial_name(path)
        try:
            self.fs.pipe_file(partial, data)
            _sync_file(partial)
            self.fs.mv(partial, path)
            _sync_folder(path)  # the rename itself survives a power loss
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

    def list_ids(self, *parts: str) -> list[str]:
        """The folders under ``parts`` whose names are ids (:data:`ID_PATTERN`): what a listing of
        datasets, models or runs holds; a stray folder of another name is not one of them."""
        return [name for name in self.list_dirs(*parts) if ID_PATTERN.fullmatch(name)]

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Create the file at ``parts`` holding ``data`` unless it exists; True when this call made it.

        Readers see the whole content or no file. On a local disk: a temporary
        sibling hard-linked to the final name (``link`` fails when the name
        exists). On object stores: one conditional PUT (``If-None-Match: *``);
        a server that ignores that header gives no exclusion at all, so it is
        detected once per store (:func:`check_conditional_writes`) and refused.
        """
        path = self.path(*parts)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not self.is_local:
            check_conditional_writes(self)
            return _put_if_absent(self.fs, path, data)
        partial = _partial_name(path)
        _write_synced(partial, data)
        try:
            os.link(partial, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        _sync_folder(path)
        return True

    @contextlib.contextmanager
    def lock(self, *parts: str, timeout: float = 120.0, stale_after: float = 60.0) -> Iterator[HeldLock]:
        """Hold an exclusive lock file at ``parts`` for the duration of the block.

        The lock is created with :meth:`create_exclusive`, so two processes on
        any hosts never both take it. While it is held, a heartbeat thread
        renews it every ``stale_after / 4`` seconds, so a holder may keep it as
        long as it lives (a 30-minute training); a lock not renewed for
        ``stale_after`` seconds, or whose holder is a dead process of this host,
        belongs to a killed run and is broken. Breaking and releasing are
        compare-and-delete on the owner's token: nobody removes a lock it does
        not own. Yields a :class:`HeldLock` (``ensure()`` raises when the lock
        was lost, e.g. the process was frozen past ``stale_after``); leaving the
        block raises :class:`StoreError` when it was lost meanwhile. Raises
        :class:`StoreError` after ``timeout`` seconds of waiting.
        """
        path = self.path(*parts)
        token = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            if self.create_exclusive(_owner(token), *parts):
                break
            stale = self._stale_token(path, stale_after)
            if stale is not None:
                self._delete_if_owner(path, stale)
                continue
            if time.monotonic() > deadline:
                raise StoreError(
                    f"timed out after {timeout:.0f} s waiting for the lock {self.full_url(*parts)}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        held = HeldLock(self, path, token, interval=max(0.05, min(stale_after / 4, 30.0)))
        held.start()
        failed = True
        try:
            yield held
            failed = False
        finally:
            held.stop()
            released = self._release(path, token)
            if not failed and (held.lost or not released):
                raise StoreError(
                    f"the lock {self.full_url(*parts)} was lost while held "
                    f"(not renewed for {stale_after:g} s, then taken by another process)"
                )

    def _read_owner(self, path: str) -> dict[str, Any] | None:
        """The lock's owner record; None when there is no lock file; {} when its content is unreadable.

        A read that fails (an I/O or network error) raises its ``OSError``: it says nothing of who
        holds the lock, so it must not read as a lock lost or free to break (the heartbeat tries
        again at its next beat; the caller of anything else fails, to be retried)."""
        try:
            holder = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _stale_token(self, path: str, stale_after: float) -> str | None:
        """The token of a lock that may be broken ("" for an old unreadable one), or None."""
        holder = self._read_owner(path)
        if holder is None:
            return None  # vanished: try again
        if not holder.get("token"):
            # Half-written: its holder is still writing it, or was killed doing so; only age tells.
            try:
                age = time.time() - self.fs.modified(path).timestamp()
            except (OSError, NotImplementedError):
                return None
            return "" if age > stale_after else None
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0))):
            return str(holder["token"])
        if time.time() - float(holder.get("time", 0)) > stale_after:
            return str(holder["token"])
        return None

    def _release(self, path: str, token: str, *, attempts: int = 3) -> bool:
        """:meth:`_delete_if_owner` of a lock this process holds, again after a failed read (a lock
        left behind would hold every other run until it goes stale)."""
        for attempt in range(attempts):
            try:
                return self._delete_if_owner(path, token)
            except OSError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1 * 2**attempt)
        return False

    def _delete_if_owner(self, path: str, token: str) -> bool:
        """Remove the lock file if ``token`` still owns it (an unreadable one for ``""``)."""
        holder = self._read_owner(path)
        if holder is None or str(holder.get("token", "")) != token:
            return False
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.rm(path)
        return True

    def rm(self, *parts: str) -> None:
        path = self.path(*parts)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


class HeldLock:
    """A lock held by this process, renewed by a heartbeat thread until :meth:`stop`."""

    def __init__(self, store: Store, path: str, token: str, *, interval: float) -> None:
        self.store, self.path, self.token, self.interval = store, path, token, interval
        self.lost = False
        self.renewals = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def ensure(self) -> None:
        """Raise :class:`StoreError` unless this process still owns the lock (checked now)."""
        holder = self.store._read_owner(self.path)
        if self.lost or holder is None or holder.get("token") != self.token:
            self.lost = True
            raise StoreError(f"the lock {self.store.fs.unstrip_protocol(self.path)} was lost while held")

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                holder = self.store._read_owner(self.path)
                if holder is None or holder.get("token") != self.token:
                    self.lost = True
                    return
                self.store._write_whole(self.path, _owner(self.token))
                self.renewals += 1
            except OSError:
                continue  # a glitch: the next beat tries again, well before the lock goes stale


def _write_synced(path: str, data: bytes) -> None:
    """Write ``data`` to a new local file and flush it to the disk before it takes a name: after a
    power loss a committed file is whole, not a zero-length name (ext4 and xfs may keep the name
    and lose the unsynced data)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_file(path: str) -> None:
    """Flush a local file's data to the disk (before it takes its final name)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_folder(path: str) -> None:
    """Flush the folder holding ``path``, so that a name just made or replaced in it is kept."""
    descriptor = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:  # a filesystem that cannot sync a folder (some network mounts): the file is
        pass  # synced all the same
    finally:
        os.close(descriptor)


def _partial_name(path: str) -> str:
    """A temporary sibling of ``path``, written whole before it takes the final name."""
    return f"{path}.tmp-{uuid.uuid4().hex[:8]}"


def _owner(token: str) -> bytes:
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "token": token}
    return json.dumps(owner).encode()


def _put_if_absent(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    except OSError as error:  # some servers answer 412 without naming the condition
        if "PreconditionFailed" in str(error) or "412" in str(error):
            return False
        raise
    return True


# Stores (by URL) known to honour conditional writes; see check_conditional_writes.
_CONDITIONAL_WRITES_OK: set[str] = set()


def check_conditional_writes(store: Store) -> None:
    """Make sure the store's server refuses a second ``If-None-Match: *`` PUT of one key.

    Some S3-compatible servers ignore the header and overwrite: a lock or an
    exclusive commit there would exclude nobody. Checked once per store and
    process with a probe object; :class:`StoreError` when the server ignores it.
    """
    if store.is_local or store.url in _CONDITIONAL_WRITES_OK:
        return
    probe = store.path(f".conditional-write-probe-{uuid.uuid4().hex[:12]}")
    try:
        first = _put_if_absent(store.fs, probe, b"1")
        second = _put_if_absent(store.fs, probe, b"2")
    finally:
        with contextlib.suppress(OSError):
            store.fs.rm(probe)
    if not (first and not second):
        raise StoreError(
            f"the store {store.url!r} ignores conditional writes (If-None-Match): it cannot give "
            "musicflow's lock and commits any exclusion; use a server that supports them "
            "(AWS S3, MinIO, Ceph RGW 18+, R2...)"
        )
    _CONDITIONAL_WRITES_OK.add(store.url)


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
    merged = {**storage_options_for(url), **options}
    if _is_local_path(url):
        # fsspec reads "::" as a chain of URLs ("/music/a::b.mp3" would open "/music/a").
        return LocalFileSystem(**merged), LocalFileSystem._strip_protocol(url)
    return fsspec.core.url_to_fs(url, **merged)


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
    for attempt in range(PROBE_ATTEMPTS):  # a glitch is not an unwritable store: a few tries
        try:
            store.fs.makedirs(store.root, exist_ok=True)
            store.fs.pipe_file(store.path(probe), b"ok")
            store.fs.rm(store.path(probe))
            return
        except Exception as error:  # any backend error means the same thing to the user
            if attempt < PROBE_ATTEMPTS - 1:
                time.sleep(0.2 * 2**attempt)
                continue
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise StoreError(f"cannot write to store {store.url!r}: {reason}") from error


PROBE_ATTEMPTS = 3


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


def _is_local_path(url: str) -> bool:
    """A plain local path (no protocol), whatever characters its names hold."""
    if "://" in url:
        return False
    if url.startswith(("/", "./", "../", "~")) or "::" not in url:
        return not re.match(r"^[a-zA-Z][\w+.-]+:", url) or os.path.lexists(url)
    return os.path.lexists(url)


def _is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://") or url.startswith("local://")
