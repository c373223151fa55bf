"""``musicflow.open_dataset``: a dataset of a store from Python, without reading musicflow's source.

::

    import musicflow

    data = musicflow.open_dataset("s3://bucket/store", storage_options={"anon": False})
    data.songs[0]                          # {"song_id": ..., "source": ..., "seconds": ..., ...}
    frames = data.frames(data.songs[0]["song_id"])   # numpy [n_frames, n_features] float32
    for inputs, targets in data.windows(seq_len=64):  # numpy [64, n_features] each
        ...
    data.to_tf_dataset(seq_len=64, batch_size=32)     # tf.data.Dataset of (inputs, targets) batches

Everything reads through the dataset repository (:mod:`tasks.dataset.repository`), the training
windows are :class:`tasks.model.windows.SongWindows`: what training sees, not a copy of its rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.config import FeatureConfig
from tasks.dataset.catalog import CatalogRow
from tasks.dataset.repository import (
    catalog_view,
    read_config,
    read_rows,
    read_song,
    read_stats,
    resolve_dataset,
    schema_version,
)
from tasks.errors import ConfigError
from tasks.model.windows import Normalizer, SongWindows, make_tf_dataset
from tasks.store.store import Store, open_existing_store, register_storage_options

# The shortest song-id prefix frames() accepts (the CLI's tables show 12 characters).
MIN_ID_PREFIX = 8


class Dataset:
    """One dataset of a store: its songs (the catalog as musicflow reads it), their frames, windows.

    Attributes
    ----------
    dataset_id : str
    features : FeatureConfig
        What a frame is (transform, sample rate, hop or block size, ``n_features``).
    schema_version : int
        The data format the dataset was created with (``docs/data-format.md``).
    """

    def __init__(self, store: Store, dataset_id: str) -> None:
        self.store = store
        self.dataset_id = dataset_id
        self.config = read_config(store, dataset_id)
        self.features = FeatureConfig.from_dict(self.config["features"])
        self.schema_version = schema_version(self.config)
        self._rows = read_rows(store, dataset_id)  # one view of the catalog for this object's life

    def __repr__(self) -> str:
        return f"Dataset({self.dataset_id!r}, {len(self.songs)} songs, {len(self.failed)} failed)"

    @property
    def n_features(self) -> int:
        return self.features.n_features

    @property
    def catalog(self) -> pa.Table:
        """Every song of the catalog, ``ok`` and ``failed``, as an Arrow table (``.to_pandas()``)."""
        return catalog_view(self.store, self.dataset_id)

    @property
    def songs(self) -> list[dict[str, Any]]:
        """The ``ok`` songs, in commit order: their catalog rows as dicts (song_id, source, seconds,
        n_blocks = frames, shard, offset, warnings...)."""
        return [_as_dict(row) for row in self._rows if row.ok]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The songs that could not be ingested, with their ``error``."""
        return [_as_dict(row) for row in self._rows if not row.ok]

    def frames(self, song_id: str) -> np.ndarray:
        """A song's frames, shape [n_frames, n_features] float32, as stored (not normalised).

        ``song_id`` is the full id or a unique prefix of at least 8 characters.
        """
        return read_song(self.store, self.dataset_id, self._row(song_id))

    def iter_songs(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(song_id, frames)`` of every ``ok`` song in commit order, one song in memory at a time."""
        for row in self._rows:
            if row.ok:
                yield row.song_id, read_song(self.store, self.dataset_id, row)

    def normalizer(self) -> Normalizer:
        """Per-feature ``(x - mean) / std`` with the dataset's statistics (``stats.json``), as training."""
        return Normalizer.from_dataset(self.store, self.dataset_id)

    def stats(self) -> dict[str, np.ndarray]:
        """Per-feature ``count``, ``mean`` and ``std`` of every referenced frame."""
        stats = read_stats(self.store, self.dataset_id)
        return {"count": np.asarray(stats.count), "mean": stats.mean, "std": stats.std}

    def song_windows(
        self,
        *,
        seq_len: int,
        hop: int | None = None,
        normalize: bool = True,
        songs: list[str] | None = None,
        frames_per_step: int = 1,
    ) -> SongWindows:
        """The training windows of the songs (all ``ok`` songs, or those of ``songs``): each window
        is ``seq_len + 1`` steps, inputs ``[:-1]`` and targets ``[1:]``, every ``hop`` steps."""
        if seq_len < 1 or (hop is not None and hop < 1):
            raise ConfigError(f"invalid windows: seq_len {seq_len!r}, hop {hop!r} must be at least 1")
        rows = [row for row in self._rows if row.ok] if songs is None else [self._row(i) for i in songs]
        return SongWindows(
            self.store.url,
            self.dataset_id,
            rows,
            seq_len=seq_len,
            hop=hop or seq_len,
            normalizer=self.normalizer() if normalize else None,
            frames_per_step=frames_per_step,
        )

    def windows(
        self, *, seq_len: int, hop: int | None = None, normalize: bool = True, seed: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(inputs, targets)`` numpy windows, [seq_len, n_features] each: any framework's input.

        Songs in commit order, or shuffled by ``seed``. ``targets`` is ``inputs`` one frame later.
        """
        yield from self.song_windows(seq_len=seq_len, hop=hop, normalize=normalize).iter_windows(seed=seed)

    def to_tf_dataset(
        self,
        *,
        seq_len: int,
        hop: int | None = None,
        batch_size: int = 32,
        normalize: bool = True,
        shuffle_buffer: int = 0,
        seed: int | None = None,
    ) -> Any:
        """A ``tf.data.Dataset`` of ``(inputs, targets)`` batches, [batch, seq_len, n_features]: the
        training flow's own input pipeline (:func:`tasks.model.windows.make_tf_dataset`)."""
        windows = self.song_windows(seq_len=seq_len, hop=hop, normalize=normalize)
        return make_tf_dataset(
            windows,
            n_features=self.n_features,
            batch_size=batch_size,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
        )

    def _row(self, song_id: str) -> CatalogRow:
        matches = [row for row in self._rows if row.song_id == song_id]
        if not matches and len(song_id) >= MIN_ID_PREFIX:
            matches = [row for row in self._rows if row.song_id.startswith(song_id)]
        if len(matches) != 1:
            found = "is ambiguous" if matches else "is not in the catalog"
            raise ConfigError(f"song {song_id!r} {found} of dataset {self.dataset_id!r}")
        return matches[0]


def _as_dict(row: CatalogRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__dataclass_fields__}


def open_dataset(
    store: str, dataset_id: str | None = None, storage_options: dict[str, Any] | None = None
) -> Dataset:
    """Open a dataset of a store (the store's only one when ``dataset_id`` is None).

    ``storage_options`` are the store's fsspec options (credentials, ``endpoint_url``), registered
    for ``store`` in this process. :class:`ConfigError` names a missing store, dataset or song.
    """
    if storage_options:
        register_storage_options(store, storage_options)
    opened = open_existing_store(store)
    return Dataset(opened, resolve_dataset(opened, dataset_id))
