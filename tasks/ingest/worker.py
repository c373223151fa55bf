"""The worker's batch job: decode, featurise and write one batch of files into one shard.

:func:`ingest_batch` is what a Dask worker runs for each batch that
:func:`tasks.ingest.plan.make_batches` cut. The worker reads each file once,
hashing it while it is decoded, and streams it through the decoder and the
featurizer (:func:`tasks.features.stream.featurise_stream`) into the shard, so
it holds a few MB whatever the song's length. What goes wrong with one file's
content (not audio, corrupt, too long, missing, not readable to us, a bug fed odd
bytes) becomes a ``failed`` row with the error, and the batch goes on; what is the
machinery's fault (:func:`tasks.errors.is_infrastructure`: a store write, a source
read that is not about the file, a timeout) fails the whole batch with an
:class:`~tasks.errors.InfrastructureError`, to be retried, and records nothing.
Callable (and tested) without Prefect or Dask.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import fsspec

from tasks.audio.decode import decode_timeout
from tasks.config import IngestConfig
from tasks.dataset.catalog import STATUS_FAILED, STATUS_OK, CatalogRow, display_text
from tasks.dataset.repository import BatchResult, dataset_dir
from tasks.dataset.shards import ShardWriter
from tasks.errors import (
    DecodeError,
    DecoderMissingError,
    InfrastructureError,
    as_infrastructure,
    is_infrastructure,
)
from tasks.features.stream import featurise_stream
from tasks.ingest.memory import keep_freed_memory, peak_rss_mb
from tasks.ingest.sources import SourceFile, sha256_stream, unread_song_id
from tasks.store.credentials import register_all
from tasks.store.store import is_local_fs, open_store, url_to_fs

# Reading a file (hashing it, downloading a remote one) may take this long, per the file's size:
# generous for any disk or network that works, short enough that a stalled read fails its file.
READ_TIMEOUT_BASE_S = 60.0
READ_TIMEOUT_S_PER_MB = 10.0
_T = TypeVar("_T")


def read_timeout(n_bytes: int) -> float:
    """Seconds reading an ``n_bytes`` file may take before it fails as stalled."""
    return READ_TIMEOUT_BASE_S + READ_TIMEOUT_S_PER_MB * n_bytes / 2**20


def ingest_batch(
    files: list[SourceFile],
    *,
    store_url: str,
    dataset_id: str,
    config: IngestConfig,
    storage_options: dict[str, dict[str, Any]] | None = None,
) -> BatchResult:
    """Decode, featurise and write one batch of files into one new shard (what a Dask worker runs).

    ``storage_options`` is the flow process's ``registered_storage_options()``: a worker
    process has none of its own, so they are registered here before anything is opened.

    A content error of one file (not audio, corrupt, unreadable to us, deleted,
    a decode that timed out, any other exception of its decode) becomes a
    ``failed`` row with the error. An infrastructure error
    (:func:`tasks.errors.is_infrastructure`: the shard's writes, a source read
    that failed or stalled, whichever song it came in) raises an
    :class:`~tasks.errors.InfrastructureError`, and the shard is removed: the
    caller retries the batch, and leaves its files unrecorded if it keeps
    failing. Nothing is committed here: the returned rows are committed by
    :func:`tasks.dataset.repository.commit_batch`.
    """
    started = time.perf_counter()
    register_all(storage_options)
    keep_freed_memory()
    store = open_store(store_url)
    rows: list[CatalogRow] = []
    audio_seconds = 0.0
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with ShardWriter(
        store,
        dataset_dir(dataset_id),
        n_features=config.features.n_features,
        shard_format=config.shard_format,
        attributes={"dataset_id": dataset_id, "features": config.features.to_dict()},
    ) as writer:
        for item in files:
            row = _ingest_file(item, writer, config, now)
            if row.ok:
                audio_seconds += row.seconds
            rows.append(row)
    shard = writer.shard
    return BatchResult(
        rows=[replace(row, shard=shard) if row.ok else row for row in rows],
        shard=shard,
        audio_seconds=audio_seconds,
        task_seconds=time.perf_counter() - started,
        peak_rss_mb=peak_rss_mb(),
    )


def failed_row(
    item: SourceFile, error: str, *, song_id: str | None = None, now: str | None = None
) -> CatalogRow:
    """The catalog row of a file that could not be ingested, with ``error`` in one line."""
    line = " ".join(str(error).split())[:500] or "failed"
    return CatalogRow(
        song_id=song_id or item.song_id or unread_song_id(item.uri),
        source=item.uri,
        bytes=item.bytes,
        mtime=item.mtime,
        seconds=0.0,
        channels=0,
        n_blocks=0,
        shard=None,
        offset=-1,
        status=STATUS_FAILED,
        error=line,
        ingested_at=now or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def describe_error(error: BaseException) -> str:
    """A song's failure in words: a verdict as it is, anything else with its type (a timeout or another
    infrastructure error is never a song's failure: see :func:`tasks.errors.is_infrastructure`)."""
    if isinstance(error, DecodeError):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return "file disappeared before it was decoded"
    if isinstance(error, PermissionError):
        return f"permission denied: {error.strerror or error}"
    return f"{type(error).__name__}: {display_text(str(error)) or 'no message'}"


def _ingest_file(item: SourceFile, writer: ShardWriter, config: IngestConfig, now: str) -> CatalogRow:
    if item.problem:
        return failed_row(item, item.problem, now=now)
    content_hash: Callable[[], str | None] = lambda: None  # noqa: E731
    began = False
    try:
        with _readable_copy(item) as (path, content_hash):
            writer.begin_song(content_hash)
            began = True
            song = featurise_stream(
                path,
                features=config.features,
                sink=writer.add_rows,
                min_peak_db=config.min_peak_db,
                strict=config.strict,
                timeout=decode_timeout(item.bytes),
                restart=lambda: _restart_song(writer, content_hash),
                max_seconds=config.max_seconds,
            )
            song_id = content_hash()
        offset, n_blocks = writer.end_song(keep=True)
    except (DecoderMissingError, InfrastructureError):
        raise  # not this file's fault: every file would fail the same way, or the store or source failed
    except Exception as error:  # a failure while handling one file: its failed row, unless not its fault
        if is_infrastructure(error):  # the machinery's (an I/O error...): the batch fails and is retried
            raise as_infrastructure(error) from error
        if began:
            writer.end_song(keep=False)
        try:
            song_id = content_hash()
        except Exception:
            song_id = None
        return failed_row(item, describe_error(error), song_id=song_id, now=now)
    assert song_id is not None
    return CatalogRow(
        song_id=song_id,
        source=item.uri,
        bytes=item.bytes,
        mtime=item.mtime,
        seconds=round(song.seconds, 6),
        channels=song.channels,
        n_blocks=n_blocks,
        shard=writer.shard,
        offset=offset,
        status=STATUS_OK,
        error=None,
        ingested_at=now,
        warnings=song.warnings,
    )


def _restart_song(writer: ShardWriter, song_id: Callable[[], str | None]) -> None:
    writer.end_song(keep=False)
    writer.begin_song(song_id)


@contextmanager
def _readable_copy(item: SourceFile) -> Iterator[tuple[str, Callable[[], str | None]]]:
    """``(local path, content hash)`` of a file, reading its source once.

    A local file is opened here (a permission error or a vanished file fails
    at once) and hashed by a thread while ffmpeg decodes it, from the page
    cache. A remote file is downloaded to a temporary file, hashed on the way.
    Both reads get :func:`read_timeout`; the hash is a callable that waits for it.
    A read error that is the machinery's (:func:`tasks.errors.is_infrastructure`:
    an I/O or network error, a stalled read) is an
    :class:`~tasks.errors.InfrastructureError` (``source read failed: ...``); one
    about the file (missing, permission denied) is raised as it is.
    """
    fs, path = url_to_fs(item.uri)
    limit = read_timeout(item.bytes)
    if is_local_fs(fs):
        with _source_reads():
            handle = open(path, "rb")  # noqa: SIM115 - closed by the hashing thread
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # replaced by a special file since listing
            handle.close()
            raise DecodeError(f"not a regular file any more: {display_text(path)}")
        hashing = _in_thread(lambda: _hash_handle(handle))

        def content_hash() -> str:
            with _source_reads():
                return hashing(limit)

        yield path, content_hash
        return
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as local:
        with _source_reads():
            digest = _in_thread(lambda: _download(fs, path, local))(limit)
        yield local.name, lambda: digest


@contextmanager
def _source_reads() -> Iterator[None]:
    try:
        yield
    except InfrastructureError:
        raise
    except Exception as error:
        if is_infrastructure(error):
            raise as_infrastructure(error, "source read") from error
        raise


def _hash_handle(handle: Any) -> str:
    with handle:
        return sha256_stream(handle)


def _download(fs: fsspec.AbstractFileSystem, path: str, local: Any) -> str:
    with fs.open(path, "rb") as remote:
        digest = sha256_stream(remote, copy_to=local)
    local.flush()
    return digest


def _in_thread(function: Callable[[], _T]) -> Callable[[float], _T]:
    """Run ``function`` in a daemon thread; the returned callable waits for it at most N seconds.

    A read that stalls forever (a dead network mount) leaves its thread behind,
    but not the batch: the wait raises :class:`TimeoutError`.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the waiter
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="musicflow-read").start()

    def wait(timeout: float) -> _T:
        if not done.wait(timeout):
            raise TimeoutError(f"reading the file took longer than {timeout:.0f} s")
        if "error" in outcome:
            raise outcome["error"]
        value: _T = outcome["value"]
        return value

    return wait
