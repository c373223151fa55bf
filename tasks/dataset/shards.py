"""Tensor shards: many songs' feature blocks in one Zarr v3 group or Parquet file.

A shard holds a ``[n_blocks, n_features]`` float32 matrix, songs one after the
other; the catalog says where each song starts (``offset``) and how many blocks
it has. :class:`ShardWriter` writes one shard and commits it atomically on a
local disk (temporary name, then rename); on object stores the shard is simply
never referenced until its catalog rows are committed.

Other tools can read a shard without musicflow (``docs/data-format.md``, schema 2):

- Zarr: a group whose array ``features`` has ``dimension_names`` ``("frame", "feature")``;
  the group's attributes (``musicflow``) hold the shard's schema version, the feature
  config and its songs (``song_id``, ``offset``, ``n_frames``), and its metadata is
  consolidated, so ``xarray.open_zarr(shard)`` gives a dataset with named dimensions.
- Parquet: columns ``song_id``, ``frame`` (the row's index in its song) and ``features``;
  the same ``musicflow`` record is the file's key-value metadata.

Shards of schema 1 (a bare Zarr array; Parquet with ``features`` only) read as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import posixpath
import uuid
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
import zarr.storage

from tasks.config import SHARD_FORMATS, check_choice
from tasks.dataset.stats import FeatureStats
from tasks.errors import MusicflowError, StoreError, as_infrastructure
from tasks.store import direct
from tasks.store.store import Store

SHARDS_DIR = "shards"
# Rows per Zarr chunk / Parquet row group: at least CHUNK_BLOCKS (64 rfft blocks of 11026 float32
# = 2.8 MB, 16 s of audio), and about CHUNK_BYTES for narrower rows (4096 stft rows of 128 mel bands,
# 24 s): with 64 such rows a chunk was 32 kB, and a worker spent more time creating chunk files than
# computing FFTs.
CHUNK_BLOCKS = 64
CHUNK_BYTES = 2 << 20
# Chunks written per call: zarr writes the chunks of one call concurrently (2.5x faster than one
# by one); 4 chunks of rfft rows are 11 MB, what a worker buffers at most.
FLUSH_CHUNKS = 4


def default_chunk_rows(n_features: int) -> int:
    """Rows per chunk (Zarr) or row group (Parquet) of a new shard of ``n_features``-wide rows."""
    return max(CHUNK_BLOCKS, CHUNK_BYTES // (4 * max(1, n_features)))


_EXTENSIONS = {"zarr": ".zarr", "parquet": ".parquet"}
# The data format this code writes (docs/data-format.md), in a dataset's config.json and in each
# shard; 1 (files without it): a bare Zarr array, Parquet with the features column only.
SCHEMA_VERSION = 2
FEATURES_ARRAY = "features"  # the array inside a Zarr shard's group
DIMENSION_NAMES = ("frame", "feature")
METADATA_KEY = "musicflow"  # Zarr group attribute and Parquet key-value metadata key
# A song's id, or how to get it once known (the worker hashes a song while decoding it).
SongId = str | Callable[[], str | None] | None


def shard_format(shard: str) -> str:
    """Format of a shard from its name (``....zarr`` or ``....parquet``)."""
    for name, extension in _EXTENSIONS.items():
        if shard.endswith(extension):
            return name
    raise StoreError(f"unknown shard format for {shard!r}")


def stats_name(shard: str) -> str:
    """Name of the statistics sidecar of ``shard`` (in the same folder)."""
    return f"{shard}.stats.npz"


@contextlib.contextmanager
def _store_writes() -> Iterator[None]:
    """Any failure of a shard's own writes is the store's, whichever song was being written when it
    came (a flush happens in the middle of a song): an :class:`~tasks.errors.InfrastructureError`."""
    try:
        yield
    except MusicflowError:
        raise
    except Exception as error:
        raise as_infrastructure(error, "store write") from error


class _DirectLocalStore(zarr.storage.LocalStore):
    """A local Zarr store whose large values (the chunks) are written past the page cache, where
    the file system allows it (:mod:`tasks.store.direct`); the rest is zarr's own ``LocalStore``."""

    async def set(self, key: str, value: Any) -> None:
        data = value.as_buffer_like() if isinstance(value, zarr.core.buffer.Buffer) else None
        if self.read_only or data is None or not direct.eligible(memoryview(data).nbytes):
            await super().set(key, value)
            return
        await asyncio.to_thread(direct.write_file, self.root / key, data)


def _zarr_store(store: Store, path: str, *, read_only: bool) -> Any:
    if store.is_local:
        return (zarr.storage.LocalStore if read_only else _DirectLocalStore)(path, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(
        store.fs.unstrip_protocol(path),
        storage_options=store.fs.storage_options,
        read_only=read_only,
    )


class ShardWriter:
    """Write songs' feature blocks into one new shard.

    Use as a context manager::

        with ShardWriter(store, dataset_dir, n_features=11026, shard_format="zarr") as writer:
            offset = writer.add(features)   # [n_blocks, n_features]
        writer.shard                        # "shards/<name>.zarr", committed
                                            # (None when nothing was added)

    A song can also be written as its rows come, without ever holding it whole::

        writer.begin_song()
        writer.add_rows(rows)               # as many times as needed
        offset, n_blocks = writer.end_song(keep=True)   # keep=False: a song that failed

    Leaving the block with an exception removes what was written, and so does
    leaving it with no song kept. The writer also accumulates
    :class:`FeatureStats` of the songs kept and saves them next to the shard,
    so dataset statistics can always be rebuilt from the shards the catalog
    references.
    """

    def __init__(
        self,
        store: Store,
        dataset_dir: str,
        *,
        n_features: int,
        shard_format: str = "zarr",
        chunk_rows: int | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """``attributes``: what the shard records about itself besides its songs (the ingest
        writes the feature config under ``features``)."""
        check_choice("format", shard_format, SHARD_FORMATS)
        self.store = store
        self.dataset_dir = dataset_dir
        self.n_features = n_features
        self.chunk_rows = chunk_rows or default_chunk_rows(n_features)
        self.format = shard_format
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{uuid.uuid4().hex[:12]}{_EXTENSIONS[shard_format]}"
        self.shard: str | None = posixpath.join(SHARDS_DIR, name)
        self.stats = FeatureStats.empty(n_features)
        self.n_blocks = 0
        final = store.path(dataset_dir, self.shard)
        # Local disks get a temporary name and a rename; object stores write in place.
        self._write_path = final + ".partial" if store.is_local else final
        self._final_path = final
        self._pending: list[np.ndarray] = []
        # Per pending block, per row: its song's ordinal and its frame in that song.
        self._pending_labels: list[tuple[np.ndarray, np.ndarray]] = []
        self._n_pending = 0
        self._attributes = {"schema_version": SCHEMA_VERSION, **(attributes or {})}
        self._song_ids: list[SongId] = []  # by song ordinal (every begin_song)
        self._resolved: dict[int, str | None] = {}
        self._songs: list[dict[str, Any]] = []  # the songs kept: song_id, offset, n_frames
        self._array: Any = None
        self._parquet: pq.ParquetWriter | None = None
        self._parquet_file: Any = None
        self._capacity = 0  # rows the Zarr array is sized for (>= the rows written)
        self._song_start: int | None = None
        self._song_stats = FeatureStats.empty(n_features)
        self.n_songs = 0
        self._stats_path: str | None = None

    def __enter__(self) -> ShardWriter:
        try:
            with _store_writes():
                self._open()
        except BaseException:
            self._abandon()
            raise
        return self

    def _open(self) -> None:
        self.store.fs.makedirs(posixpath.dirname(self._write_path), exist_ok=True)
        if self.format == "zarr":
            # The array first, on its own (the group's zarr.json is written once, at the end).
            self._array = zarr.create_array(
                store=_zarr_store(
                    self.store, posixpath.join(self._write_path, FEATURES_ARRAY), read_only=False
                ),
                shape=(0, self.n_features),
                chunks=(self.chunk_rows, self.n_features),
                dtype="float32",
                compressors=None,  # FFT features of music barely compress; speed wins
                fill_value=0.0,
                dimension_names=DIMENSION_NAMES,
                overwrite=True,
            )
        else:
            schema = pa.schema(
                [
                    ("song_id", pa.dictionary(pa.int32(), pa.string())),
                    ("frame", pa.int32()),
                    ("features", pa.list_(pa.float32(), self.n_features)),
                ]
            )
            self._parquet_file = self.store.fs.open(self._write_path, "wb")
            self._parquet = pq.ParquetWriter(self._parquet_file, schema, compression="none")

    def add(self, features: np.ndarray, *, song_id: SongId = None) -> int:
        """Append one whole song's blocks (shape [n_blocks, n_features]); returns its offset."""
        self.begin_song(song_id)
        try:
            self.add_rows(features)
        except BaseException:
            self.end_song(keep=False)
            raise
        return self.end_song(keep=True)[0]

    def begin_song(self, song_id: SongId = None) -> None:
        """Start a song that is written as its rows come (:meth:`add_rows`), then :meth:`end_song`.

        ``song_id`` labels the song's rows (Parquet) and its entry in the shard's song list:
        the id, or a callable that gives it, called when the first rows are written or the
        song ends (a song is hashed while it decodes).
        """
        if self._song_start is not None:
            raise StoreError("begin_song() while a song is being written: end_song() first")
        self._song_ids.append(song_id)
        self._song_start = self.n_blocks
        self._song_stats = FeatureStats.empty(self.n_features)

    def add_rows(self, rows: np.ndarray) -> None:
        """Append rows (shape [k, n_features]) of the song begun with :meth:`begin_song`."""
        if self._song_start is None:
            raise StoreError("add_rows() outside a song: begin_song() first")
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise StoreError(
                f"features of shape {rows.shape} do not fit a shard of {self.n_features} features"
            )
        if rows.shape[0] == 0:
            return
        block = np.ascontiguousarray(rows, dtype=np.float32)
        self._song_stats = self._song_stats.merge(FeatureStats.from_features(block))
        first = self.n_blocks - self._song_start
        self._pending_labels.append(
            (
                np.full(block.shape[0], len(self._song_ids) - 1, dtype=np.int32),
                np.arange(first, first + block.shape[0], dtype=np.int32),
            )
        )
        self._pending.append(block)
        self._n_pending += block.shape[0]
        self.n_blocks += block.shape[0]
        if self._n_pending >= self.chunk_rows * FLUSH_CHUNKS:
            self._flush(final=False)

    def end_song(self, *, keep: bool) -> tuple[int, int]:
        """Finish the current song: ``(offset, n_blocks)`` when kept.

        A song that is not kept (it failed after some rows were written) counts
        in no statistics; its rows are dropped when they are still buffered,
        and otherwise stay as unreferenced space in the shard.
        """
        start = self._song_start
        if start is None:
            raise StoreError("end_song() outside a song: begin_song() first")
        self._song_start = None
        if keep:
            self.stats = self.stats.merge(self._song_stats)
            self.n_songs += 1
            song_id = self._song_id(len(self._song_ids) - 1)
            self._songs.append({"song_id": song_id, "offset": start, "n_frames": self.n_blocks - start})
            return start, self.n_blocks - start
        written = self.n_blocks - self._n_pending
        if start >= written:  # all of it still buffered: forget it
            keep_rows = start - written
            if self._pending and keep_rows:
                pending = np.concatenate(self._pending)[:keep_rows]
                songs = np.concatenate([songs for songs, _ in self._pending_labels])[:keep_rows]
                frames = np.concatenate([frames for _, frames in self._pending_labels])[:keep_rows]
                self._pending, self._pending_labels = [pending], [(songs, frames)]
            else:
                self._pending, self._pending_labels = [], []
            self._n_pending = keep_rows
            self.n_blocks = start
        return start, 0

    def _song_id(self, ordinal: int) -> str | None:
        if ordinal not in self._resolved:
            given = self._song_ids[ordinal]
            try:
                self._resolved[ordinal] = given() if callable(given) else given
            except Exception:  # a song whose bytes could not be hashed: its own caller records
                self._resolved[ordinal] = None  # why; its rows here are never referenced
        return self._resolved[ordinal]

    def _write_group(self) -> None:
        """The Zarr group's ``zarr.json`` in one write: the ``musicflow`` attribute and the
        array's metadata consolidated (what ``zarr.consolidate_metadata`` writes after an
        attributes update: two writes more for each shard, each one a chance to fail on a bad
        network), so ``xarray.open_zarr`` reads one file."""
        array_json = self.store.fs.cat_file(posixpath.join(self._write_path, FEATURES_ARRAY, "zarr.json"))
        group = {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {METADATA_KEY: self._record()},
            "consolidated_metadata": {
                "kind": "inline",
                "must_understand": False,
                "metadata": {FEATURES_ARRAY: json.loads(array_json)},
            },
        }
        self.store.fs.pipe_file(posixpath.join(self._write_path, "zarr.json"), json.dumps(group).encode())

    def _record(self) -> dict[str, Any]:
        """What the shard says of itself: schema version, the writer's attributes, its songs."""
        return {**self._attributes, "songs": self._songs}

    def _flush(self, *, final: bool) -> None:
        if not self._pending:
            return
        with _store_writes():
            self._write_pending(final=final)

    def _write_pending(self, *, final: bool) -> None:
        pending = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        labels = (  # per row: its song's ordinal and its frame in that song
            np.concatenate([songs for songs, _ in self._pending_labels]),
            np.concatenate([frames for _, frames in self._pending_labels]),
        )
        # Write whole chunks only, so no chunk is ever read back and rewritten.
        n_write = pending.shape[0] if final else pending.shape[0] - pending.shape[0] % self.chunk_rows
        rows, rest = pending[:n_write], pending[n_write:]
        start = self.n_blocks - self._n_pending
        if self.format == "zarr":
            if start + n_write > self._capacity:  # grow by doubling: a resize rewrites the metadata
                self._capacity = max(start + n_write, 2 * self._capacity)
                self._array.resize((self._capacity, self.n_features))
            self._array[start : start + n_write] = rows
        else:
            assert self._parquet is not None
            ordinals, indices = np.unique(labels[0][:n_write], return_inverse=True)
            ids = [self._song_id(int(ordinal)) for ordinal in ordinals]
            unknown = np.array([song_id is None for song_id in ids])[indices]  # a null, not in the dictionary
            songs = pa.DictionaryArray.from_arrays(
                pa.array(indices.astype(np.int32), type=pa.int32(), mask=unknown),
                pa.array([song_id or "" for song_id in ids], pa.string()),
            )
            frames = pa.array(labels[1][:n_write], type=pa.int32())
            flat = pa.array(rows.reshape(-1), type=pa.float32())
            column = pa.FixedSizeListArray.from_arrays(flat, self.n_features)
            table = pa.Table.from_arrays([songs, frames, column], names=["song_id", "frame", "features"])
            self._parquet.write_table(table, row_group_size=self.chunk_rows)
        self._pending = [rest] if rest.shape[0] else []
        self._pending_labels = [(labels[0][n_write:], labels[1][n_write:])] if rest.shape[0] else []
        self._n_pending = rest.shape[0]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None and self.n_songs:
            try:
                with _store_writes():
                    self._complete()
            except BaseException:
                self._abandon()
                raise
            return
        self._abandon()

    def _complete(self) -> None:
        self._flush(final=True)
        if self._array is not None and self._capacity != self.n_blocks:
            self._array.resize((self.n_blocks, self.n_features))
        if self._array is not None:
            self._write_group()
        if self._parquet is not None:
            self._parquet.add_key_value_metadata({METADATA_KEY: json.dumps(self._record())})
        self._close()
        assert self.shard is not None
        self._stats_path = self.store.path(self.dataset_dir, stats_name(self.shard))
        self.store.write_bytes(self.stats.to_npz(), self.dataset_dir, stats_name(self.shard))
        if self._write_path != self._final_path:
            self.store.fs.mv(self._write_path, self._final_path, recursive=True)

    def _close(self) -> None:
        parquet, self._parquet = self._parquet, None
        if parquet is not None:
            parquet.close()
            self._parquet_file.close()

    def _abandon(self) -> None:
        """Remove what was written (a failure, or no song kept): nothing will reference it."""
        with contextlib.suppress(Exception):  # closing a Parquet file writes its footer: on a full disk...
            self._close()
        self._discard()
        if self._stats_path is not None:  # the final rename failed after the statistics were written
            with contextlib.suppress(OSError):
                self.store.fs.rm(self._stats_path)
        self.shard = None

    def _discard(self) -> None:
        try:
            if self.store.fs.exists(self._write_path):
                self.store.fs.rm(self._write_path, recursive=True)
        except OSError:
            pass  # an orphan is harmless: the catalog never references it


def read_blocks(store: Store, dataset_dir: str, shard: str, *, offset: int, n_blocks: int) -> np.ndarray:
    """Read ``n_blocks`` rows starting at ``offset`` from a shard.

    Returns
    -------
    np.ndarray, shape [n_blocks, n_features], float32
    """
    path = store.path(dataset_dir, shard)
    if shard_format(shard) == "zarr":
        array = _open_features(store, path)
        return np.asarray(array[offset : offset + n_blocks], dtype=np.float32)
    with store.fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle, pre_buffer=False)  # reads stay on this thread (see catalog)
        metadata = parquet.metadata
        groups, first_row, row = [], None, 0
        for index in range(metadata.num_row_groups):
            group_rows = metadata.row_group(index).num_rows
            if row + group_rows > offset and row < offset + n_blocks:
                groups.append(index)
                first_row = row if first_row is None else first_row
            row += group_rows
        if not groups:
            return np.zeros((0, parquet.schema_arrow.field("features").type.list_size), dtype=np.float32)
        column = (
            parquet.read_row_groups(groups, columns=["features"], use_threads=False)
            .column("features")
            .combine_chunks()
        )
        n_features = column.type.list_size
        values = column.values.to_numpy(zero_copy_only=False).reshape(-1, n_features)
        start = offset - (first_row or 0)
        return np.asarray(values[start : start + n_blocks], dtype=np.float32)


def _open_features(store: Store, path: str) -> Any:
    """The features array of a Zarr shard: the group's ``features`` (schema 2) or the bare array (1)."""
    opened = zarr.open(store=_zarr_store(store, path, read_only=True), mode="r")
    return opened[FEATURES_ARRAY] if isinstance(opened, zarr.Group) else opened


def read_shard_record(store: Store, dataset_dir: str, shard: str) -> dict[str, Any]:
    """What a shard says of itself (``schema_version``, ``features``, ``songs``); ``{"schema_version":
    1}`` for a shard written before shards described themselves."""
    path = store.path(dataset_dir, shard)
    if shard_format(shard) == "zarr":
        opened = zarr.open(store=_zarr_store(store, path, read_only=True), mode="r")
        record = opened.attrs.get(METADATA_KEY) if isinstance(opened, zarr.Group) else None
    else:
        with store.fs.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle, pre_buffer=False).metadata.metadata or {}
        raw = metadata.get(METADATA_KEY.encode())
        record = json.loads(raw) if raw else None
    return dict(record) if isinstance(record, dict) else {"schema_version": 1}


def read_shard_stats(store: Store, dataset_dir: str, shard: str) -> FeatureStats:
    return FeatureStats.from_npz(store.read_bytes(dataset_dir, stats_name(shard)))
