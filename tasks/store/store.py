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
import datetime as dt
import errno
import json
import os
import posixpath
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tasks.errors import ConfigError, StoreArgumentError, StoreError, first_line, is_infrastructure

# ``faulty:///path``: a local folder with faults on demand, for the fault tests and the soak benchmark
# (:mod:`tasks.store.faults`); known in every process that opens a store, Dask workers included, and
# imported only when such a URL is opened.
fsspec.register_implementation("faulty", "tasks.store.faults.FaultyFileSystem", clobber=True)

_T = TypeVar("_T")

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

    def signed_url(self, *parts: str, expires_seconds: int) -> str | None:
        """A URL of ``parts`` that a browser opens without credentials for ``expires_seconds``
        (presigned, as S3 gives it through fsspec's ``sign``); None where the filesystem cannot
        sign (a local folder, memory)."""
        if self.is_local:
            return None
        try:
            url = str(self.fs.sign(self.path(*parts), expiration=expires_seconds))
        except NotImplementedError:
            return None
        # Signed with temporary credentials, the URL carries their session token in the clear
        # (X-Amz-Security-Token): whoever reads the URL could use it. No URL then: the caller embeds.
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        if any(name.lower() in _TOKEN_PARAMETERS for name in query):
            return None
        return url

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    def read_bytes(self, *parts: str) -> bytes:
        """The whole file; a glitch of the store (an I/O error, a timeout) is tried again
        (:func:`glitch_retried`): a reader of many files (a catalog of many segments) must not fail
        for one flaky read."""
        path = self.path(*parts)
        return glitch_retried(lambda: bytes(self.fs.cat_file(path)))

    def write_bytes(
        self,
        data: bytes,
        *parts: str,
        fence: Callable[[], None] | None = None,
        content_type: str | None = None,
    ) -> None:
        """Write a whole file so that readers see the old or the new content, never a part.

        On a local disk: write a temporary sibling, then rename over. On object
        stores a single PUT is already atomic. ``fence`` (a held lock's
        :meth:`HeldLock.ensure`) is called right before the write takes effect
        (the rename, the PUT): a run that lost its lock raises there, writing nothing.
        ``content_type``: the Content-Type an S3 object is served with (a browser renders a page
        only as ``text/html``; S3's default is ``binary/octet-stream``); elsewhere unused.
        """
        self._write_whole(self.path(*parts), data, fence=fence, content_type=content_type)

    def _write_whole(
        self,
        path: str,
        data: bytes,
        *,
        fence: Callable[[], None] | None = None,
        content_type: str | None = None,
    ) -> None:
        """:meth:`write_bytes` at a path as the filesystem names it."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not self.is_local:
            if fence is not None:
                fence()
            s3 = "s3" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
            self.fs.pipe_file(path, data, **({"ContentType": content_type} if content_type and s3 else {}))
            return
        partial = _partial_name(path)
        try:
            self.fs.pipe_file(partial, data)
            _sync_file(partial)
            if fence is not None:
                fence()
            self.fs.mv(partial, path)
            _sync_folder(path)  # the rename itself survives a power loss
        finally:
            if self.fs.exists(partial):
                self.fs.rm(partial)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def write_json(
        self, value: Any, *parts: str, indent: int | None = 2, fence: Callable[[], None] | None = None
    ) -> None:
        """Write JSON atomically; ``indent=None`` for large machine-read files (``fence``: as
        :meth:`write_bytes`)."""
        self.write_bytes(json.dumps(value, indent=indent, sort_keys=True).encode(), *parts, fence=fence)

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
        return self._create_exclusive(data, *parts) is not None

    def _create_exclusive(self, data: bytes, *parts: str) -> str | None:
        """:meth:`create_exclusive`: the new object's ETag ("" where the store gives none), or
        None when the file exists."""
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
            return None
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        _sync_folder(path)
        return ""

    @contextlib.contextmanager
    def lock(
        self,
        *parts: str,
        timeout: float = 120.0,
        stale_after: float | None = None,
        raise_if_lost: bool = True,
    ) -> Iterator[HeldLock]:
        """Hold an exclusive lock file at ``parts`` for the duration of the block.

        The lock is created with :meth:`create_exclusive`, so two processes on
        any hosts never both take it. While it is held, a heartbeat thread
        renews it every ``stale_after / 4`` seconds (a touch on a local disk, a
        conditional rewrite on an object store), so a holder may keep it as long
        as it lives (a 30-minute training). Staleness is judged by the store's
        clock: a lock whose modification time, as the store reports it, is more
        than ``stale_after`` seconds (default :func:`lock_expiry`) behind the
        store's present time belongs to a killed or frozen run and is broken;
        the holder's own clock, host name and pid are not trusted for that. A
        dead holder is broken at once only when it was a process of this very
        machine and pid namespace. Breaking and releasing are compare-and-delete:
        only the lock file as it was judged (same content and modification stamp;
        the ETag on S3) is removed, never one renewed or taken since. Yields a
        :class:`HeldLock`: its ``ensure()`` renews the lock and raises
        :class:`LockLostError` when it was lost (the process was frozen past
        ``stale_after`` and another run took it); call it right before each
        write the lock guards (or pass it as ``fence`` to :meth:`write_bytes`).
        Leaving the block raises :class:`LockLostError` when it was lost
        meanwhile (unless ``raise_if_lost`` is off: a lock that only marks a run
        in progress, whose writes are checked otherwise). Raises
        :class:`StoreError` after ``timeout`` seconds of waiting.
        """
        expiry = lock_expiry() if stale_after is None else stale_after
        path = self.path(*parts)
        token = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        delay = 0.01
        record = _owner(token)
        while True:
            created = glitch_retried(lambda: self._take(record, token, path, *parts))
            if created is not None:
                break
            stale = glitch_retried(lambda: self._breakable(path, expiry))
            if stale is not None:
                self._delete_if_unchanged(path, stale)
                continue
            if time.monotonic() > deadline:
                raise StoreError(
                    f"timed out after {timeout:.0f} s waiting for the lock {self.full_url(*parts)}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        # Its ETag (S3) is the condition of its first renewal and of its release.
        seen = LockSeen(record, time.time(), created) if created else None
        held = HeldLock(self, path, token, seen, expiry=expiry)
        held.start()
        failed = True
        try:
            yield held
            failed = False
        finally:
            held.stop()
            released = glitch_retried(lambda: self._release(path, token, held.seen))
            if raise_if_lost and not failed and (held.lost or not released):
                raise LockLostError(
                    f"the lock {self.full_url(*parts)} was lost while held "
                    f"(not renewed for {expiry:g} s, then taken by another process)"
                )

    def _take(self, record: bytes, token: str, path: str, *parts: str) -> str | None:
        """One try at creating the lock file holding ``record``: its ETag as :meth:`_create_exclusive`
        gives it, or None when another holder has it. A file that carries ``token`` already is ours: a
        create that failed on its way back (the write landed, the answer was lost) and was tried again."""
        try:
            return self._create_exclusive(record, *parts)
        except OSError:
            seen = self._look(path)
            if seen is not None and seen.holder().get("token") == token:
                return seen.tag
            raise

    def lock_is_live(self, *parts: str, stale_after: float | None = None) -> bool:
        """Whether the lock file at ``parts`` is held by a run that is alive for all the store can
        tell (present, and neither unrenewed for ``stale_after`` nor a dead process of this machine)."""
        path = self.path(*parts)
        expiry = lock_expiry() if stale_after is None else stale_after
        return self._look(path) is not None and self._breakable(path, expiry) is None

    def break_stale_lock(self, *parts: str, stale_after: float | None = None) -> bool:
        """Remove the lock file at ``parts`` if it is stale (compare-and-delete); True when it did."""
        path = self.path(*parts)
        stale = self._breakable(path, lock_expiry() if stale_after is None else stale_after)
        return stale is not None and self._delete_if_unchanged(path, stale)

    def modified(self, *parts: str) -> float | None:
        """When the file (or, for a folder, its newest file) at ``parts`` was last written, in
        seconds since the epoch as the store's clock says; None when there is nothing there."""
        return self._modified(self.path(*parts))

    def _modified(self, path: str) -> float | None:
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            found = self.fs.find(path, detail=True)
            times = [_info_time(entry) for entry in found.values()]
            known = [value for value in times if value is not None]
            return max(known) if known else _info_time(info)
        return _info_time(info)

    def now(self, *, fresh: bool = False) -> float:
        """The store's present time (seconds since the epoch): the time stamp it gives a probe file
        written now. The offset to this process's clock is measured at most every
        :data:`CLOCK_CHECK_S` seconds (and at once with ``fresh``), so that two hosts whose clocks
        disagree still judge a lock's age alike."""
        cached = _CLOCK_OFFSETS.get(self.url)
        if not fresh and cached is not None and time.monotonic() - cached[1] < CLOCK_CHECK_S:
            return time.time() - cached[0]
        probe = self.path(f".clock-probe-{uuid.uuid4().hex[:12]}")
        self.fs.makedirs(self.root, exist_ok=True)
        before = time.time()
        self.fs.pipe_file(probe, b"")
        after = time.time()
        try:
            stamped = self._modified(probe)
        finally:
            with contextlib.suppress(OSError):
                self.fs.rm(probe)
        if stamped is None:
            raise StoreError(f"the store {self.url!r} gives its files no modification time")
        _CLOCK_OFFSETS[self.url] = ((before + after) / 2 - stamped, time.monotonic())
        return stamped

    def _look(self, path: str) -> LockSeen | None:
        """The lock file as it is now (None when there is none)."""
        try:
            if self.is_local:
                stat = os.stat(path)
                with open(path, "rb") as handle:
                    data = handle.read()
                return LockSeen(data, stat.st_mtime, f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}")
            # Never a cached listing's entry (s3fs answers info from one): its time stamp and ETag
            # may be from before the holder's last renewal.
            self.fs.invalidate_cache(path)
            info = self.fs.info(path)
            data = bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        modified = _info_time(info)
        tag = str(info.get("ETag") or info.get("etag") or "")
        return LockSeen(data, modified if modified is not None else 0.0, tag or f"{modified}:{len(data)}")

    def _breakable(self, path: str, stale_after: float) -> LockSeen | None:
        """The lock file as judged breakable (a dead holder of this machine, or not renewed for
        ``stale_after`` seconds of the store's clock), or None when it must be waited for."""
        seen = self._look(path)
        if seen is None:
            return None  # vanished: try again
        holder = seen.holder()
        machine = machine_id()
        if (
            machine
            and holder.get("machine") == machine
            and holder.get("host") == socket.gethostname()
            and not _pid_alive(_int(holder.get("pid")))
        ):
            return seen  # a process of this machine and pid namespace that is gone
        if self.now() - seen.modified <= stale_after:
            return None
        # Looks stale by the cached offset: confirm with the store's clock read now.
        return seen if self.now(fresh=True) - seen.modified > stale_after else None

    def _delete_if_unchanged(self, path: str, seen: LockSeen) -> bool:
        """Remove the lock file only if it is still exactly ``seen`` (compare-and-delete)."""
        if self.is_local:
            # Move it aside (atomic), then look at what was moved: a lock renewed or replaced since
            # it was judged goes back, unless a new lock took the name meanwhile.
            aside = f"{path}.broken-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                return False
            moved = self._look(aside)
            try:
                if moved is not None and (moved.data, moved.tag) == (seen.data, seen.tag):
                    return True
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)
                return False
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(aside)
        if _is_s3(self.fs) and seen.tag and conditional_overwrites(self):
            return self._if_match("delete_object", path, seen.tag) is not None
        # A filesystem without a conditional delete: re-read and compare, as close to the delete
        # as it gets (a renewal in between is still possible, and is then caught by its holder).
        current = self._look(path)
        if current is None or (current.data, current.tag) != (seen.data, seen.tag):
            return False
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path)
        return True

    def _release(self, path: str, token: str, last: LockSeen | None) -> bool:
        """Remove this holder's lock file; False when it is not ours any more. On S3, one DELETE
        conditional on the ETag of its last write (creation or renewal)."""
        if last is not None and last.tag and _is_s3(self.fs) and conditional_overwrites(self):
            return self._if_match("delete_object", path, last.tag) is not None
        return self._delete_if_owner(path, token)

    def _delete_if_owner(self, path: str, token: str) -> bool:
        """Release: remove the lock file if ``token`` still owns it."""
        seen = self._look(path)
        if seen is None or seen.holder().get("token") != token:
            return False
        self._delete_if_unchanged(path, seen)
        return True

    def _renew(self, path: str, token: str, last: LockSeen | None) -> LockSeen | None:
        """Refresh the lock's time stamp if ``token`` still owns it; the lock as renewed, or None
        when it is not ours any more. On S3 the rewrite is conditional on the ETag last seen."""
        if self.is_local:
            current = self._look(path)
            if current is None or current.holder().get("token") != token:
                return None
            try:
                os.utime(path)
            except FileNotFoundError:
                return None
            renewed = self._look(path)
            return renewed if renewed is not None and renewed.holder().get("token") == token else None
        if _is_s3(self.fs) and conditional_overwrites(self):
            if last is None or not last.tag:
                last = self._look(path)
                if last is None or last.holder().get("token") != token:
                    return None
            data = _renewed(last.holder())
            answer = self._if_match("put_object", path, last.tag, Body=data)
            # The holder needs the new ETag (its next renewal's condition), not the time stamp.
            return None if answer is None else LockSeen(data, time.time(), str(answer.get("ETag", "")))
        current = self._look(path)
        if current is None or current.holder().get("token") != token:
            return None
        self._write_whole(path, _renewed(current.holder()))
        return self._look(path)

    def _if_match(self, operation: str, path: str, etag: str, **arguments: Any) -> dict[str, Any] | None:
        """An S3 ``operation`` on ``path`` only if its ETag is still ``etag``: the answer, or None
        when the object changed or is gone."""
        bucket, key, _ = self.fs.split_path(path)
        try:
            answer = self.fs.call_s3(operation, Bucket=bucket, Key=key, IfMatch=etag, **arguments)
        except FileNotFoundError:
            return None
        except OSError as error:
            if _precondition_failed(error):
                return None
            raise
        finally:
            self.fs.invalidate_cache(path)
        return dict(answer)

    def rm(self, *parts: str) -> None:
        path = self.path(*parts)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


@dataclass(frozen=True)
class LockSeen:
    """A lock file as read at one moment: its bytes, its modification time by the store's clock,
    and a stamp that changes with every write or renewal (the ETag on S3)."""

    data: bytes
    modified: float
    tag: str

    def holder(self) -> dict[str, Any]:
        """The owner record ({} when the file is empty or unreadable: a holder still writing it)."""
        try:
            value = json.loads(self.data)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class LockLostError(StoreError):
    """This process held a lock and lost it: it was not renewed for the lock's expiry (the process
    was frozen or starved) and another run may have taken it. Whatever the lock guards must not be
    written any more."""


class HeldLock:
    """A lock held by this process, renewed by a heartbeat thread until :meth:`stop`.

    ``token`` is the fencing token: :meth:`ensure` renews the lock and checks that the file still
    carries this token right before a guarded write.
    """

    def __init__(self, store: Store, path: str, token: str, seen: LockSeen | None, *, expiry: float) -> None:
        self.store, self.path, self.token, self.expiry = store, path, token, expiry
        self.interval = max(0.05, min(expiry / 4, 30.0))
        self.lost = False
        self.renewals = 0
        self._seen = seen
        self._guard = threading.Lock()  # one renewal at a time (the heartbeat and ensure())
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat {path}", daemon=True)

    @property
    def seen(self) -> LockSeen | None:
        """The lock file as this holder last wrote it (its ETag on S3), or None when unknown."""
        return self._seen

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def ensure(self) -> None:
        """Renew the lock now and raise :class:`LockLostError` unless this process still owns it.

        After it returns, a run that judged the lock stale before cannot break it any more (its
        compare-and-delete sees the renewal), and a new judgement takes the lock's expiry: call it
        right before each write the lock guards.
        """
        with self._guard:
            if not self.lost:
                renewed = self.store._renew(self.path, self.token, self._seen)
                if renewed is None:
                    self.lost = True
                else:
                    self._seen = renewed
        if self.lost:
            raise LockLostError(
                f"the lock {self.store.fs.unstrip_protocol(self.path)} was lost: this run was not "
                f"heard from for more than its expiry ({self.expiry:g} s; frozen or starved) and "
                "another run took it; stopped before writing anything more"
            )

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                with self._guard:
                    renewed = self.store._renew(self.path, self.token, self._seen)
                    if renewed is None:
                        self.lost = True
                        return
                    self._seen = renewed
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
    """A new lock's owner record. ``since`` (this host's clock) is for people reading it; staleness
    is judged by the file's time stamp on the store."""
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "machine": machine_id(),
        "since": time.time(),
        "token": token,
        "renewals": 0,
    }
    return json.dumps(owner).encode()


def _renewed(record: dict[str, Any]) -> bytes:
    """The owner record rewritten by a renewal: its bytes (and so its ETag) change every time."""
    return json.dumps({**record, "renewals": _int(record.get("renewals")) + 1}).encode()


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _info_time(info: dict[str, Any]) -> float | None:
    """A file's modification time from an fsspec ``info`` dict (local ``mtime``, S3
    ``LastModified``, GCS ``updated``, memory ``created``...), in seconds since the epoch."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if isinstance(value, dt.datetime):
            return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value:
            with contextlib.suppress(ValueError):
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
                return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()
    return None


def machine_id() -> str:
    """This machine's boot and pid namespace ("" where unknown): a lock holder's pid is only
    checked for life by a process that sees the same pids (same kernel boot, same namespace),
    never by another container that happens to share the host name."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


# How long a lock may go unrenewed before another run breaks it (seconds): MUSICFLOW_LOCK_EXPIRY_S.
DEFAULT_LOCK_EXPIRY_S = 60.0


def lock_expiry() -> float:
    """The lock expiry: ``MUSICFLOW_LOCK_EXPIRY_S`` (seconds), else :data:`DEFAULT_LOCK_EXPIRY_S`.
    :class:`ConfigError` naming the value unless positive and finite."""
    text = os.environ.get("MUSICFLOW_LOCK_EXPIRY_S", "").strip()
    if not text:
        return DEFAULT_LOCK_EXPIRY_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise ConfigError(f"invalid MUSICFLOW_LOCK_EXPIRY_S {text!r}: a number of seconds above 0")
    return value


# The store's clock offset (this process's time minus the store's), by store URL, and when it was
# measured (monotonic); see Store.now.
_CLOCK_OFFSETS: dict[str, tuple[float, float]] = {}
CLOCK_CHECK_S = 60.0


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)) and hasattr(
        fs, "call_s3"
    )


def _precondition_failed(error: BaseException) -> bool:
    text = f"{error} {error.__cause__ or ''}"
    return "PreconditionFailed" in text or "412" in text


def _put_if_absent(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> str | None:
    """PUT ``data`` unless ``path`` exists: the new object's ETag ("" when the filesystem does not
    say), or None when it exists."""
    try:
        answer = fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return None
    except OSError as error:  # some servers answer 412 without naming the condition
        if "PreconditionFailed" in str(error) or "412" in str(error):
            return None
        raise
    return str(answer.get("ETag", "")) if isinstance(answer, dict) else ""


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
        first = _put_if_absent(store.fs, probe, b"1") is not None
        second = _put_if_absent(store.fs, probe, b"2") is not None
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


# Stores (by URL) whose server honours If-Match on PUT and DELETE; see conditional_overwrites.
_IF_MATCH: dict[str, bool] = {}


def conditional_overwrites(store: Store) -> bool:
    """Whether the store's S3 server honours ``If-Match`` on PUT and DELETE (AWS S3, MinIO, moto):
    then a lock is renewed and broken by ETag, atomically. Probed once per store and process; a
    server that ignores the header gets the re-read-and-compare fallback."""
    if store.url in _IF_MATCH:
        return _IF_MATCH[store.url]
    probe = store.path(f".conditional-write-probe-{uuid.uuid4().hex[:12]}")
    bucket, key, _ = store.fs.split_path(probe)
    wrong = '"00000000000000000000000000000000"'
    refused = 0
    try:
        store.fs.pipe_file(probe, b"1")
        for operation, extra in (("put_object", {"Body": b"2"}), ("delete_object", {})):
            try:
                store.fs.call_s3(operation, Bucket=bucket, Key=key, IfMatch=wrong, **extra)
            except OSError as error:
                refused += _precondition_failed(error)
    finally:
        with contextlib.suppress(OSError):
            store.fs.rm(probe)
        store.fs.invalidate_cache(probe)
    _IF_MATCH[store.url] = refused == 2
    return _IF_MATCH[store.url]


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
    """Open the store at ``url``; :class:`StoreArgumentError` names the URL when that fails."""
    if not url or not isinstance(url, str):
        raise StoreArgumentError(f"invalid store URL {url!r}")
    try:
        fs, root = url_to_fs(url, auto_mkdir=True) if _is_local_url(url) else url_to_fs(url)
    except (ValueError, ImportError, OSError) as error:
        raise StoreArgumentError(f"cannot open store {url!r}: {error}") from error
    return Store(url=url, fs=fs, root=root.rstrip("/") or root)


def open_existing_store(url: str) -> Store:
    """:func:`open_store` of a store that must already exist (reading commands, the Python API)."""
    store = open_store(url)
    try:
        found = store.fs.exists(store.root)
    except Exception as error:  # an endpoint that refuses, a DNS name that does not resolve...
        reason = first_line(error)
        raise StoreError(f"cannot reach store {url!r}: {reason}") from error
    if not found:
        raise StoreArgumentError(f"store not found: {url!r}")
    return store


_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ENOENT, errno.EISDIR}


# Query parameters of a presigned URL that carry a credential (S3's session token, SigV4 and V2).
_TOKEN_PARAMETERS = frozenset({"x-amz-security-token", "securitytoken"})


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
            # A store the user cannot write (permissions, read-only, not a folder, no credentials
            # given) is a bad argument, at once; a full disk or an endpoint that does not answer is
            # a failure of the run, after the tries.
            bad_argument = (
                isinstance(error, PermissionError | FileNotFoundError | NotADirectoryError)
                or (isinstance(error, OSError) and error.errno in _NOT_WRITABLE)
                or _missing_credentials(error)
            )
            if not bad_argument and attempt < PROBE_ATTEMPTS - 1:
                time.sleep(0.2 * 2**attempt)
                continue
            reason = first_line(error)
            kind = StoreArgumentError if bad_argument else StoreError
            raise kind(f"cannot write to store {store.url!r}: {reason}") from error


PROBE_ATTEMPTS = 3

# Tries of one small store operation (a whole-file read, a step of taking or releasing a lock) when
# the store glitches (an I/O error, a dropped connection). Seen in the soak (issue 26), 10% faulty
# reads and writes: one EIO on the ingest marker failed a whole run before it ingested anything, and
# a catalog of 70 segments was never read whole, so no re-run got past its plan. 4 tries in ~1.5 s.
GLITCH_ATTEMPTS = 4


def glitch_retried(step: Callable[[], _T]) -> _T:
    """``step()``, tried again after an infrastructure error (:func:`tasks.errors.is_infrastructure`:
    EIO, a timeout, a connection) up to :data:`GLITCH_ATTEMPTS` times; anything else, or the
    last glitch, is raised."""
    for attempt in range(GLITCH_ATTEMPTS):
        try:
            return step()
        except OSError as error:
            # A missing or refused file is an answer, whatever its errno (fsspec backends give none).
            answer = isinstance(error, FileNotFoundError | FileExistsError | PermissionError)
            if answer or not is_infrastructure(error) or attempt == GLITCH_ATTEMPTS - 1:
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def _missing_credentials(error: BaseException) -> bool:
    """botocore's "Unable to locate credentials" (and partial ones): the caller gave none that
    work, which is their argument, not the store's failure. botocore is only there with s3fs."""
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError  # lazy: start-up
    except ImportError:
        return False
    return isinstance(error, NoCredentialsError | PartialCredentialsError)


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
