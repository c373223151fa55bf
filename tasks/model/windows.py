"""Training windows streamed from the shards, never the whole dataset in memory.

A window of a song is ``inputs = blocks[t : t+L]`` and ``targets =
blocks[t+1 : t+L+1]`` (L = ``seq_len``), for ``t = 0, hop, 2*hop, ...`` while
the target fits in the song, so the store keeps whole songs and no song is
cut at ingest time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from tasks.dataset.catalog import CatalogRow, read_catalog
from tasks.dataset.repository import dataset_dir, read_features, read_stats
from tasks.dataset.shards import read_blocks
from tasks.errors import ConfigError
from tasks.model.tfload import load_tensorflow
from tasks.store.store import Store, open_store

# A feature that never varies (the imaginary part of the DC and Nyquist bins) keeps scale 1.
MIN_STD = 1e-6
# The most bytes of one song's steps that training reads at once: a song is read a run of windows
# at a time, so a 4-hour song (1.2M log-mel frames, 640 MB) is not held whole. 64 MB is 25 min of
# log-mel frames and 760 rfft blocks; one window's span is read whole whatever its size.
WINDOW_READ_BYTES = 64 * 2**20

_T = TypeVar("_T")


def window_starts(n_blocks: int, *, seq_len: int, hop: int) -> np.ndarray:
    """Start blocks of the windows of a song of ``n_blocks`` blocks (empty when it is too short)."""
    last = n_blocks - seq_len - 1
    return np.arange(0, last + 1, hop) if last >= 0 else np.zeros(0, dtype=np.int64)


def count_windows(n_blocks: int, *, seq_len: int, hop: int) -> int:
    return 0 if n_blocks < seq_len + 1 else (n_blocks - seq_len - 1) // hop + 1


def cut_windows(blocks: np.ndarray, *, seq_len: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """All windows of one song.

    Parameters
    ----------
    blocks : np.ndarray, shape [n_blocks, n_features]

    Returns
    -------
    inputs, targets : np.ndarray, shape [n_windows, seq_len, n_features] each
        ``targets[i]`` is ``inputs[i]`` shifted one block later.
    """
    starts = window_starts(blocks.shape[0], seq_len=seq_len, hop=hop)
    index = starts[:, None] + np.arange(seq_len)[None, :]
    return blocks[index], blocks[index + 1]


def split_songs(song_ids: list[str], *, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split by song: at least one song in each part.

    The same songs, fraction and seed always give the same split, whatever
    the order they are listed in.
    """
    ordered = sorted(set(song_ids))
    if len(ordered) < 2:
        raise ConfigError(
            f"a validation split needs at least 2 songs, the dataset has {len(ordered)}: ingest more songs"
        )
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    n_val = min(len(ordered) - 1, max(1, math.ceil(val_fraction * len(ordered))))
    val = sorted(ordered[i] for i in permutation[:n_val])
    train = sorted(ordered[i] for i in permutation[n_val:])
    return train, val


@dataclass(frozen=True)
class Normalizer:
    """Per-feature standardisation with the dataset's statistics: ``(x - mean) / std``."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def identity(cls, n_features: int) -> Normalizer:
        return cls(np.zeros(n_features, np.float32), np.ones(n_features, np.float32))

    @classmethod
    def from_dataset(cls, store: Store, dataset_id: str) -> Normalizer:
        stats = read_stats(store, dataset_id)
        std = np.where(stats.std < MIN_STD, 1.0, stats.std)
        return cls(stats.mean.astype(np.float32), std.astype(np.float32))

    def apply(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.std).astype(np.float32)

    def apply_in_place(self, features: np.ndarray) -> np.ndarray:
        """:meth:`apply` into ``features`` itself when it is a writable float32 array (no new
        song-sized array), else into a new array (a read-only view of an Arrow buffer)."""
        if features.dtype != np.float32 or not features.flags.writeable:
            return self.apply(features)
        np.subtract(features, self.mean, out=features)
        np.divide(features, self.std, out=features)
        return features

    def invert(self, features: np.ndarray) -> np.ndarray:
        return (features * self.std + self.mean).astype(np.float32)


class SongWindows:
    """The windows of a set of songs of one dataset, read song by song from the store.

    Picklable (holds the store URL, not open files), so it can travel to a worker.
    """

    def __init__(
        self,
        store_url: str,
        dataset_id: str,
        rows: list[CatalogRow],
        *,
        seq_len: int,
        hop: int,
        normalizer: Normalizer | None = None,
        frames_per_step: int = 1,
        read_bytes: int = WINDOW_READ_BYTES,
    ) -> None:
        self.store_url = store_url
        self.dataset_id = dataset_id
        self.rows = [row for row in rows if row.ok]
        self.seq_len = seq_len
        self.hop = hop
        self.normalizer = normalizer
        self.frames_per_step = frames_per_step
        self.read_bytes = read_bytes
        self._step_bytes: int | None = None

    def n_steps(self, row: CatalogRow) -> int:
        """Model steps of a song: its rows, ``frames_per_step`` at a time (a shorter tail is left out)."""
        return row.n_blocks // self.frames_per_step

    @property
    def n_windows(self) -> int:
        return sum(count_windows(self.n_steps(row), seq_len=self.seq_len, hop=self.hop) for row in self.rows)

    def song_blocks(self, row: CatalogRow) -> np.ndarray:
        """A song's (normalised) steps, shape [n_steps, frames_per_step * n_features] (its blocks,
        [n_blocks, n_features], with one frame per step). The whole song: training reads it by
        windows instead (:meth:`iter_spans`)."""
        return self.read_steps(row, 0, self.n_steps(row))

    def read_steps(self, row: CatalogRow, first: int, stop: int) -> np.ndarray:
        """Steps ``first`` to ``stop`` (excluded) of a song, normalised, shape [stop - first,
        frames_per_step * n_features]: only their rows are read from the shard."""
        assert row.shard is not None
        store = open_store(self.store_url)
        blocks = read_blocks(
            store,
            dataset_dir(self.dataset_id),
            row.shard,
            offset=row.offset + first * self.frames_per_step,
            n_blocks=(stop - first) * self.frames_per_step,
        )
        if self.normalizer is not None:
            blocks = self.normalizer.apply_in_place(blocks)
        if self.frames_per_step == 1:
            return blocks
        return blocks.reshape(-1, self.frames_per_step * blocks.shape[1])

    def piece_steps(self) -> int:
        """Steps read at once (:data:`WINDOW_READ_BYTES` of them), never less than one window's span."""
        if self._step_bytes is None:
            n_features = read_features(open_store(self.store_url), self.dataset_id).n_features
            self._step_bytes = 4 * n_features * self.frames_per_step
        return max(self.seq_len + 1, self.read_bytes // self._step_bytes)

    def song_pieces(self, row: CatalogRow) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """A song's windows a run at a time: ``(starts, steps)``, the window starts (relative to
        ``steps``) and the steps they span, at most :meth:`piece_steps` of them, in song order."""
        starts = window_starts(self.n_steps(row), seq_len=self.seq_len, hop=self.hop)
        if starts.size == 0:
            return
        span = self.seq_len + 1
        # the windows of a piece start within piece_steps - span steps of its first one
        reach = self.piece_steps() - span
        index = 0
        while index < starts.size:
            first = int(starts[index])
            end = index + int(np.searchsorted(starts[index:], first + reach, side="right"))
            last = int(starts[end - 1])
            yield starts[index:end] - first, self.read_steps(row, first, last + span)
            index = end

    def gather_steps(self, picked: np.ndarray) -> np.ndarray:
        """Steps ``picked`` (sorted indices into every song's steps, in ``rows`` order, as if
        they were concatenated), [len(picked), frames_per_step * n_features]: each song is read
        a piece of at most :meth:`piece_steps` at a time, only where a picked step lies."""
        gathered: list[np.ndarray] = []
        first = 0  # the song's first step in the concatenation
        for row in self.rows:
            n_steps = self.n_steps(row)
            low, high = np.searchsorted(picked, [first, first + n_steps])
            local = picked[low:high] - first
            index = 0
            while index < local.size:
                begin = int(local[index])
                end = index + int(np.searchsorted(local[index:], begin + self.piece_steps()))
                steps = self.read_steps(row, begin, int(local[end - 1]) + 1)
                gathered.append(steps[local[index:end] - begin])
                index = end
            first += n_steps
        if not gathered:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(gathered)

    def iter_spans(self, *, seed: int | None = None) -> Iterator[np.ndarray]:
        """Yield each window as its span of ``seq_len + 1`` blocks, [seq_len + 1, n_features]:
        the inputs are ``span[:-1]``, the targets ``span[1:]``.

        Songs come in catalog order, or shuffled by ``seed``; one piece of one song is in memory
        at a time (:meth:`song_pieces`, at most ``read_bytes`` of it), so a long song is never
        read whole. Each span is a copy, so a span held in a shuffle buffer does not keep its
        piece alive, and the inputs and targets share it (half the bytes of two separate arrays).
        """
        order = np.arange(len(self.rows))
        if seed is not None:
            order = np.random.default_rng(seed).permutation(len(self.rows))
        for index in order:
            for starts, steps in self.song_pieces(self.rows[index]):
                for start in starts:
                    yield steps[start : start + self.seq_len + 1].copy()

    def iter_windows(self, *, seed: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(inputs, targets)`` windows, [seq_len, n_features] each (views of one span,
        see :meth:`iter_spans`)."""
        for span in self.iter_spans(seed=seed):
            yield span[:-1], span[1:]


def load_split(
    store: Store, dataset_id: str, *, val_fraction: float, seed: int
) -> tuple[list[CatalogRow], list[CatalogRow]]:
    """The dataset's ok songs, split by song into train and validation rows."""
    rows = [row for row in read_catalog(store, dataset_dir(dataset_id)) if row.ok]
    train_ids, val_ids = split_songs([row.song_id for row in rows], val_fraction=val_fraction, seed=seed)
    by_id = {row.song_id: row for row in rows}
    return [by_id[i] for i in train_ids], [by_id[i] for i in val_ids]


def steps_per_epoch(windows: SongWindows, batch_size: int) -> int:
    """Batches in one epoch of :func:`make_tf_dataset` (the last one may be partial)."""
    return math.ceil(windows.n_windows / batch_size)


def make_tf_dataset(
    windows: SongWindows,
    *,
    n_features: int,
    batch_size: int,
    shuffle_buffer: int = 0,
    seed: int | None = None,
    first_epoch: int = 0,
    repeat: bool = False,
    codebook: np.ndarray | None = None,
) -> object:
    """A ``tf.data.Dataset`` of ``(inputs, targets)`` batches streamed from ``windows``.

    With ``seed`` set, songs are shuffled anew each epoch and windows pass a
    bounded shuffle buffer (``shuffle_buffer`` windows); without it, the order
    is the catalog's, as :meth:`SongWindows.iter_windows`. Epoch ``k``'s order
    depends only on ``seed`` and ``k`` (the first epoch is ``first_epoch``),
    so a run resumed at epoch ``k`` sees the data an uninterrupted run would.

    Each epoch is :func:`steps_per_epoch` batches, its last one partial. Without
    ``repeat`` each iteration of the dataset is the next epoch; with it, one
    endless iteration holds every epoch in turn (give ``model.fit`` the
    ``steps_per_epoch``), so the next epoch's songs are read while this epoch's
    last batches train instead of after them.

    With a ``codebook`` [units, n_features] (a ``units`` model), every step becomes the id of its
    nearest unit, and a batch is ``(unit ids [:, :-1], unit ids [:, 1:])``.
    """
    tf = load_tensorflow()

    epoch = {"count": first_epoch}

    def epoch_spans(epoch_index: int) -> Iterator[np.ndarray]:
        epoch_seed = None if seed is None else seed + epoch_index
        spans = windows.iter_spans(seed=epoch_seed)
        if epoch_seed is not None and shuffle_buffer > 1:
            spans = _shuffle_buffer(spans, shuffle_buffer, np.random.default_rng([epoch_seed, 1]))
        return spans

    def generate() -> Iterator[np.ndarray]:
        while True:
            yield from _batches(epoch_spans(epoch["count"]), batch_size)
            epoch["count"] += 1
            if not repeat:
                return

    spec = tf.TensorSpec(shape=(None, windows.seq_len + 1, n_features), dtype=tf.float32)
    dataset = tf.data.Dataset.from_generator(generate, output_signature=spec)
    if not repeat:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps_per_epoch(windows, batch_size)))
    if codebook is not None:
        centroids = tf.constant(codebook, dtype=tf.float32)
        squared = tf.reduce_sum(tf.square(centroids), axis=1)

        def to_units(spans: object) -> object:
            # The nearest centroid of each step: argmin of |c|^2 - 2 x.c (|x|^2 is the same for all).
            distances = squared - 2.0 * tf.einsum("btd,kd->btk", spans, centroids)
            return tf.cast(tf.argmin(distances, axis=-1), tf.int32)

        dataset = dataset.map(to_units, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(lambda spans: (spans[:, :-1], spans[:, 1:]), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _batches(spans: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Consecutive spans stacked ``size`` at a time, the last stack possibly smaller."""
    batch: list[np.ndarray] = []
    for span in spans:
        batch.append(span)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _shuffle_buffer(items: Iterator[_T], size: int, rng: np.random.Generator) -> Iterator[_T]:
    """Items in a random order, holding at most ``size`` of them (as ``tf.data``'s shuffle)."""
    buffer: list[_T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = int(rng.integers(size))
        yield buffer[index]
        buffer[index] = item
    for index in rng.permutation(len(buffer)):
        yield buffer[index]
