"""Ingest, as plain functions: list, hash, plan, batch, decode+featurise+write, commit.

``flows/ingest.py`` wires these together; each one is callable (and tested)
without Prefect or Dask.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import math
import os
import resource
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import fsspec
import numpy as np

from musicflow.config import AUDIO_EXTENSIONS, FeatureConfig, IngestConfig
from musicflow.errors import ConfigError, DecodeError
from tasks.audio import decode_audio
from tasks.catalog import STATUS_FAILED, STATUS_OK, CatalogRow
from tasks.dataset import BatchResult, dataset_dir
from tasks.shards import ShardWriter
from tasks.store import is_local_fs, open_store, url_to_fs
from tasks.transforms import get_transform

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest: its URL (or local path), size, mtime and content hash."""

    uri: str
    bytes: int
    mtime: float | None = None
    song_id: str | None = None


@dataclass
class IngestPlan:
    """What an ingest run will do: ``todo`` files, and why the others are left out."""

    todo: list[SourceFile]
    known: list[SourceFile] = field(default_factory=list)
    duplicates: list[SourceFile] = field(default_factory=list)
    n_listed: int = 0


def list_audio_files(source: str) -> list[SourceFile]:
    """Every audio file under ``source`` (a directory, a single file or a URL), sorted.

    Files are recognised by extension (``AUDIO_EXTENSIONS``); what is inside
    them is decided only when decoding. Raises :class:`ConfigError` when the
    source does not exist.
    """
    fs, root = open_source(source)
    infos = {root: fs.info(root)} if fs.isfile(root) else fs.find(root, detail=True)
    files = []
    for path, info in sorted(infos.items()):
        if info.get("type") == "directory" or not path.lower().endswith(AUDIO_EXTENSIONS):
            continue
        uri = path if is_local_fs(fs) else fs.unstrip_protocol(path)
        files.append(SourceFile(uri=uri, bytes=int(info.get("size") or 0), mtime=_mtime(info)))
    return files


def open_source(source: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path of an existing source; :class:`ConfigError` naming it otherwise."""
    try:
        fs, root = url_to_fs(source)
        exists = fs.exists(root)
    except (ValueError, ImportError, OSError) as error:
        raise ConfigError(f"invalid source {source!r}: {error}") from error
    if not exists:
        raise ConfigError(f"source not found: {source!r}")
    return fs, root


def sha256_of(uri: str) -> str:
    digest = hashlib.sha256()
    fs, path = url_to_fs(uri)
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(files: list[SourceFile], *, threads: int = 8) -> list[SourceFile]:
    """Fill in ``song_id`` (sha256 of the bytes); hashing is I/O bound, so threads help."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        digests = list(pool.map(lambda item: item.song_id or sha256_of(item.uri), files))
    return [replace(item, song_id=digest) for item, digest in zip(files, digests, strict=True)]


def plan_ingest(
    files: list[SourceFile], catalog: list[CatalogRow], *, retry_failed: bool = False
) -> IngestPlan:
    """Decide which listed files need decoding.

    A file whose URI, size and mtime match a catalog row is known without
    reading it; the rest are hashed and skipped when their ``song_id`` is in
    the catalog (unless it failed and ``retry_failed``), or when the same
    content appears twice in this listing.
    """
    done = {row.song_id: row for row in catalog if row.ok or not retry_failed}
    by_stat = {(row.source, row.bytes, row.mtime): row.song_id for row in done.values()}
    unknown: list[SourceFile] = []
    known: list[SourceFile] = []
    for item in files:
        song_id = by_stat.get((item.uri, item.bytes, item.mtime))
        (known if song_id else unknown).append(replace(item, song_id=song_id) if song_id else item)
    plan = IngestPlan(todo=[], known=known, n_listed=len(files))
    seen: set[str] = set()
    for item in hash_files(unknown):
        assert item.song_id is not None
        if item.song_id in done:
            plan.known.append(item)
        elif item.song_id in seen:
            plan.duplicates.append(item)
        else:
            seen.add(item.song_id)
            plan.todo.append(item)
    return plan


def make_batches(
    files: list[SourceFile], *, batch_bytes: int, min_batches: int = 1
) -> list[list[SourceFile]]:
    """Split files into balanced batches of at most ``batch_bytes`` of input (or one larger file).

    There are at least ``min_batches`` batches when there are that many files
    (pass a multiple of the worker count, so every worker stays busy to the
    end). Files go largest first to the lightest batch, so batches weigh about
    the same; within a batch they keep their listing order.
    """
    if batch_bytes <= 0:
        raise ConfigError(f"invalid batch_bytes {batch_bytes!r}: must be positive")
    if not files:
        return []
    total = sum(item.bytes for item in files)
    n_batches = min(len(files), max(min_batches, math.ceil(total / batch_bytes)))
    order = sorted(range(len(files)), key=lambda i: -files[i].bytes)
    members: list[list[int]] = []
    while len(members) != n_batches:  # a file fitted nowhere: balance again over more batches
        n_batches = max(n_batches, len(members))
        loads = [(0, 0, index) for index in range(n_batches)]  # (bytes, files, batch index) min-heap
        members = [[] for _ in range(n_batches)]
        for position in order:
            load, count, index = heapq.heappop(loads)
            if count and load + files[position].bytes > batch_bytes:  # a new batch
                heapq.heappush(loads, (load, count, index))
                load, count, index = 0, 0, len(members)
                members.append([])
            members[index].append(position)
            heapq.heappush(loads, (load + files[position].bytes, count + 1, index))
    ordered = sorted((sorted(batch) for batch in members if batch), key=lambda batch: batch[0])
    return [[files[position] for position in batch] for batch in ordered]


def decode_features(
    path: str, *, features: FeatureConfig, min_peak_db: float = -60.0
) -> tuple[np.ndarray, float, int]:
    """Decode one local file to feature blocks.

    Returns ``(features [n_blocks, n_features] float32, seconds, channels)``;
    raises :class:`DecodeError` for undecodable, too short or silent audio.
    """
    transform = get_transform(features)
    audio = decode_audio(path, sample_rate=features.sample_rate)
    if audio.samples.shape[0] < transform.min_samples:
        raise DecodeError(
            f"too short: {audio.seconds:.3f} s is less than one block "
            f"({transform.min_samples / features.sample_rate:.3f} s)"
        )
    peak = float(np.abs(audio.samples).max())
    if peak <= 10 ** (min_peak_db / 20):
        level = f"{20 * math.log10(peak):.1f} dBFS" if peak > 0 else "-inf dBFS"
        raise DecodeError(f"silent: peak level {level} is below {min_peak_db:g} dBFS")
    return transform.forward(audio.samples), audio.seconds, audio.channels


def ingest_batch(
    files: list[SourceFile], *, store_url: str, dataset_id: str, config: IngestConfig
) -> BatchResult:
    """Decode, featurise and write one batch of files into one new shard.

    Bad songs become ``failed`` rows with their error; storage errors raise
    (the caller retries the whole batch into a fresh shard). Nothing is
    committed here: the returned rows are committed by :func:`commit_batch`.
    """
    started = time.perf_counter()
    store = open_store(store_url)
    directory = dataset_dir(dataset_id)
    rows: list[CatalogRow] = []
    audio_seconds = 0.0
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    with ShardWriter(
        store, directory, n_features=config.features.n_features, shard_format=config.shard_format
    ) as writer:
        for item in files:
            song_id, seconds, channels, n_blocks, offset, error = (
                item.song_id or "",
                0.0,
                0,
                0,
                -1,
                None,
            )
            try:
                with _local_copy(item.uri) as (path, content_hash):
                    song_id = content_hash
                    feats, seconds, channels = decode_features(
                        path, features=config.features, min_peak_db=config.min_peak_db
                    )
                offset, n_blocks = writer.add(feats), feats.shape[0]
                audio_seconds += seconds
            except DecodeError as failure:
                error = str(failure)
            except FileNotFoundError:
                error = "file disappeared before it was decoded"
            rows.append(
                CatalogRow(
                    song_id=song_id,
                    source=item.uri,
                    bytes=item.bytes,
                    mtime=item.mtime,
                    seconds=round(seconds, 6),
                    channels=channels,
                    n_blocks=n_blocks,
                    shard=None if error else writer.shard,
                    offset=offset,
                    status=STATUS_FAILED if error else STATUS_OK,
                    error=error,
                    ingested_at=now,
                )
            )
    return BatchResult(
        rows=rows,
        shard=writer.shard,
        audio_seconds=audio_seconds,
        task_seconds=time.perf_counter() - started,
        peak_rss_mb=peak_rss_mb(),
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux's ``VmHWM`` is the process's own high-water mark; ``ru_maxrss`` is
    not, for a worker spawned by a process that was already big (it inherits
    the parent's peak), so it is only the fallback elsewhere.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _local_copy:
    """Context manager giving ``(local path, sha256)`` of a URI, downloading remote files.

    Hashing the bytes actually decoded makes ``song_id`` the content that was
    ingested, even if the file changed since it was listed.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._temporary: tempfile._TemporaryFileWrapper[bytes] | None = None

    def __enter__(self) -> tuple[str, str]:
        fs, path = url_to_fs(self.uri)
        if is_local_fs(fs):
            return path, sha256_of(path)
        data = fs.cat_file(path)
        suffix = os.path.splitext(path)[1]
        self._temporary = tempfile.NamedTemporaryFile(suffix=suffix)
        self._temporary.write(data)
        self._temporary.flush()
        return self._temporary.name, hashlib.sha256(data).hexdigest()

    def __exit__(self, *exc_info: object) -> None:
        if self._temporary is not None:
            self._temporary.close()


def _mtime(info: dict[str, object]) -> float | None:
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None
