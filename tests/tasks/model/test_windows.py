"""The training input pipeline: window arithmetic, the split by song, normalisation, and the
streamed windows equal to an in-memory reference, for zarr and parquet shards."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BLOCK
from helpers import ingest_direct, write_periodic_songs
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.config import FeatureConfig, IngestConfig
from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import dataset_dir, read_stats
from tasks.dataset.shards import read_blocks, shard_format
from tasks.errors import ConfigError
from tasks.model.windows import (
    MIN_STD,
    Normalizer,
    SongWindows,
    count_windows,
    cut_windows,
    load_split,
    make_tf_dataset,
    split_songs,
    steps_per_epoch,
    window_starts,
)
from tasks.store.store import open_store

# ---------------------------------------------------------------------------------------------
# Window arithmetic


@settings(max_examples=150, deadline=None)
@given(
    n_blocks=st.integers(0, 60),
    seq_len=st.integers(1, 20),
    hop=st.integers(1, 20),
    n_features=st.integers(1, 3),
)
def test_windows_are_shifted_by_one_block(n_blocks: int, seq_len: int, hop: int, n_features: int) -> None:
    blocks = np.arange(n_blocks * n_features, dtype=np.float32).reshape(n_blocks, n_features)
    expected_starts = [t for t in range(0, n_blocks, hop) if t + seq_len + 1 <= n_blocks]

    starts = window_starts(n_blocks, seq_len=seq_len, hop=hop)
    inputs, targets = cut_windows(blocks, seq_len=seq_len, hop=hop)

    assert starts.tolist() == expected_starts
    assert count_windows(n_blocks, seq_len=seq_len, hop=hop) == len(expected_starts)
    assert inputs.shape == targets.shape == (len(expected_starts), seq_len, n_features)
    for i, t in enumerate(expected_starts):
        np.testing.assert_array_equal(inputs[i], blocks[t : t + seq_len])
        np.testing.assert_array_equal(targets[i], blocks[t + 1 : t + seq_len + 1])


def test_window_examples() -> None:
    blocks = np.arange(10, dtype=np.float32)[:, None]
    inputs, targets = cut_windows(blocks, seq_len=3, hop=2)
    assert inputs[..., 0].tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8]]
    assert targets[..., 0].tolist() == [[1, 2, 3], [3, 4, 5], [5, 6, 7], [7, 8, 9]]
    # exactly seq_len + 1 blocks: one window; one block fewer: none
    assert count_windows(4, seq_len=3, hop=5) == 1
    assert count_windows(3, seq_len=3, hop=1) == 0
    assert window_starts(3, seq_len=3, hop=1).size == 0
    assert cut_windows(blocks[:3], seq_len=3, hop=1)[0].shape == (0, 3, 1)


# ---------------------------------------------------------------------------------------------
# Train / validation split by song


song_lists = st.lists(
    st.text("abcdefghij0123456789", min_size=1, max_size=6), min_size=2, max_size=30, unique=True
)


@settings(max_examples=150, deadline=None)
@given(
    songs=song_lists,
    val_fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31 - 1),
    order=st.randoms(use_true_random=False),
)
def test_split_is_by_song_disjoint_covering_and_deterministic(
    songs: list[str], val_fraction: float, seed: int, order: object
) -> None:
    train, val = split_songs(songs, val_fraction=val_fraction, seed=seed)

    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(songs)
    assert len(val) >= 1 and len(train) >= 1
    assert len(val) == min(len(songs) - 1, max(1, math.ceil(val_fraction * len(songs))))
    shuffled = list(songs)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    assert split_songs(shuffled + songs[:1], val_fraction=val_fraction, seed=seed) == (train, val)


def test_split_depends_on_the_seed() -> None:
    songs = [f"song-{i:02d}" for i in range(12)]
    splits = {tuple(split_songs(songs, val_fraction=0.25, seed=seed)[1]) for seed in range(10)}
    assert len(splits) > 1
    assert split_songs(songs, val_fraction=0.25, seed=3) == split_songs(songs, val_fraction=0.25, seed=3)


@pytest.mark.parametrize("songs", [[], ["only"], ["same", "same"]])
def test_split_needs_two_songs(songs: list[str]) -> None:
    with pytest.raises(ConfigError, match=f"at least 2 songs, the dataset has {len(set(songs))}"):
        split_songs(songs, val_fraction=0.5, seed=0)


# ---------------------------------------------------------------------------------------------
# Normalizer


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(st.floats(-1e3, 1e3, width=32), min_size=12, max_size=12),
    mean=st.lists(st.floats(-10, 10, width=32), min_size=4, max_size=4),
    std=st.lists(st.floats(0.125, 100, width=32), min_size=4, max_size=4),
)
def test_normalizer_round_trip(data: list[float], mean: list[float], std: list[float]) -> None:
    features = np.array(data, np.float32).reshape(3, 4)
    normalizer = Normalizer(np.array(mean, np.float32), np.array(std, np.float32))
    scaled = normalizer.apply(features)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, (features - normalizer.mean) / normalizer.std, rtol=1e-6)
    np.testing.assert_allclose(normalizer.invert(scaled), features, rtol=1e-4, atol=1e-3)


def test_identity_normalizer_changes_nothing() -> None:
    features = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    identity = Normalizer.identity(6)
    np.testing.assert_array_equal(identity.apply(features), features)
    np.testing.assert_array_equal(identity.invert(features), features)


def test_normalizer_from_dataset(tiny_dataset: tuple[str, str]) -> None:
    store_url, dataset_id = tiny_dataset
    store = open_store(store_url)
    stats = read_stats(store, dataset_id)
    normalizer = Normalizer.from_dataset(store, dataset_id)
    n_features = FeatureConfig(block_size=TINY_BLOCK).n_features
    assert normalizer.mean.shape == normalizer.std.shape == (n_features,)
    np.testing.assert_allclose(normalizer.mean, stats.mean, rtol=1e-6)
    constant = stats.std < MIN_STD
    # the imaginary parts of the DC and Nyquist bins never vary: they keep scale 1
    n_bins = TINY_BLOCK // 2 + 1
    assert constant[n_bins] and constant[-1]
    assert (normalizer.std[constant] == 1.0).all()
    np.testing.assert_allclose(normalizer.std[~constant], stats.std[~constant], rtol=1e-6)
    # over the whole dataset the scaled features have mean ~0 and std ~1 where they vary
    rows = [row for row in read_catalog(store, dataset_dir(dataset_id)) if row.ok]
    everything = np.concatenate([_song_blocks(store_url, dataset_id, row) for row in rows])
    scaled = normalizer.apply(everything)
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(scaled[:, ~constant].std(axis=0), 1.0, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Streaming windows == in-memory reference


@pytest.fixture(scope="module")
def tiny_parquet(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The tiny songs (plus a short one) ingested into parquet shards; returns (store_url, dataset_id)."""
    root = tmp_path_factory.mktemp("tiny-parquet")
    write_periodic_songs(root / "songs", n_songs=4, seconds=3.0, block_size=TINY_BLOCK)
    # a song of 6 blocks: no window of seq_len 8, so the stream must skip it
    short = write_periodic_songs(
        root / "short", n_songs=1, seconds=6 * TINY_BLOCK / 44100, block_size=TINY_BLOCK
    )
    short[0].rename(root / "songs" / "short.wav")
    config = IngestConfig(features=FeatureConfig(block_size=TINY_BLOCK), shard_format="parquet")
    store = str(root / "store")
    return store, ingest_direct(root / "songs", store, config)


@pytest.fixture(params=["zarr", "parquet"])
def any_store(request: pytest.FixtureRequest, tiny_dataset: tuple[str, str]) -> tuple[str, str]:
    if request.param == "zarr":
        return tiny_dataset
    return request.getfixturevalue("tiny_parquet")


def _song_blocks(store_url: str, dataset_id: str, row: object) -> np.ndarray:
    store = open_store(store_url)
    return read_blocks(store, dataset_dir(dataset_id), row.shard, offset=row.offset, n_blocks=row.n_blocks)  # type: ignore[attr-defined]


def reference_windows(
    store_url: str, dataset_id: str, rows: list, *, seq_len: int, hop: int, normalizer: Normalizer | None
) -> tuple[np.ndarray, np.ndarray]:
    """Every song's blocks in memory, windows cut with plain loops."""
    inputs, targets = [], []
    for row in rows:
        blocks = _song_blocks(store_url, dataset_id, row)
        assert blocks.shape[0] == row.n_blocks
        if normalizer is not None:
            blocks = ((blocks - normalizer.mean) / normalizer.std).astype(np.float32)
        t = 0
        while t + seq_len < blocks.shape[0]:
            inputs.append(blocks[t : t + seq_len])
            targets.append(blocks[t + 1 : t + 1 + seq_len])
            t += hop
    n_features = int(_song_blocks(store_url, dataset_id, rows[0]).shape[1])
    if not inputs:
        return np.zeros((0, seq_len, n_features), np.float32), np.zeros((0, seq_len, n_features), np.float32)
    return np.stack(inputs), np.stack(targets)


def _streamed(dataset: object) -> tuple[np.ndarray, np.ndarray]:
    batches = list(dataset.as_numpy_iterator())  # type: ignore[attr-defined]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


@pytest.mark.parametrize(("seq_len", "hop"), [(8, 4), (5, 7), (8, 8)])
@pytest.mark.parametrize("normalize", [False, True])
def test_streamed_windows_equal_in_memory_reference(
    any_store: tuple[str, str], seq_len: int, hop: int, normalize: bool
) -> None:
    store_url, dataset_id = any_store
    store = open_store(store_url)
    rows = [row for row in read_catalog(store, dataset_dir(dataset_id)) if row.ok]
    assert len(rows) >= 4
    # several songs share a shard: their offsets must be honoured
    assert len({row.shard for row in rows}) < len(rows) and any(row.offset > 0 for row in rows)
    n_features = FeatureConfig(block_size=TINY_BLOCK).n_features
    normalizer = Normalizer.from_dataset(store, dataset_id) if normalize else None
    expected_inputs, expected_targets = reference_windows(
        store_url, dataset_id, rows, seq_len=seq_len, hop=hop, normalizer=normalizer
    )
    assert expected_inputs.shape[0] > 50

    windows = SongWindows(store_url, dataset_id, rows, seq_len=seq_len, hop=hop, normalizer=normalizer)
    assert windows.n_windows == expected_inputs.shape[0]
    pairs = list(windows.iter_windows())
    np.testing.assert_array_equal(np.stack([p[0] for p in pairs]), expected_inputs)
    np.testing.assert_array_equal(np.stack([p[1] for p in pairs]), expected_targets)

    dataset = make_tf_dataset(windows, n_features=n_features, batch_size=8)
    assert int(dataset.cardinality()) == math.ceil(expected_inputs.shape[0] / 8)  # type: ignore[attr-defined]
    inputs, targets = _streamed(dataset)
    assert inputs.dtype == np.float32
    np.testing.assert_array_equal(inputs, expected_inputs)
    np.testing.assert_array_equal(targets, expected_targets)
    # a second epoch streams the same windows again
    again_inputs, again_targets = _streamed(dataset)
    np.testing.assert_array_equal(again_inputs, expected_inputs)
    np.testing.assert_array_equal(again_targets, expected_targets)


def test_parquet_and_zarr_shards_hold_the_same_blocks(
    tiny_dataset: tuple[str, str], tiny_parquet: tuple[str, str]
) -> None:
    zarr_url, zarr_id = tiny_dataset
    parquet_url, parquet_id = tiny_parquet
    assert zarr_id == parquet_id  # the dataset id depends on the features, not on the format
    zarr_rows = {Path(r.source).name: r for r in read_catalog(open_store(zarr_url), dataset_dir(zarr_id))}
    parquet_rows = {
        Path(r.source).name: r for r in read_catalog(open_store(parquet_url), dataset_dir(parquet_id))
    }
    assert {shard_format(r.shard) for r in parquet_rows.values() if r.shard} == {"parquet"}
    assert set(zarr_rows) < set(parquet_rows)
    for name, row in zarr_rows.items():
        np.testing.assert_array_equal(
            _song_blocks(zarr_url, zarr_id, row), _song_blocks(parquet_url, parquet_id, parquet_rows[name])
        )


def _pairs(inputs: np.ndarray, targets: np.ndarray) -> list[bytes]:
    return sorted(x.tobytes() + y.tobytes() for x, y in zip(inputs, targets, strict=True))


def test_shuffled_stream_holds_the_same_windows(tiny_dataset: tuple[str, str]) -> None:
    store_url, dataset_id = tiny_dataset
    store = open_store(store_url)
    rows = [row for row in read_catalog(store, dataset_dir(dataset_id)) if row.ok]
    expected_inputs, expected_targets = reference_windows(
        store_url, dataset_id, rows, seq_len=8, hop=4, normalizer=None
    )
    windows = SongWindows(store_url, dataset_id, rows, seq_len=8, hop=4)
    n_features = expected_inputs.shape[-1]

    def shuffled(seed: int) -> tuple[np.ndarray, np.ndarray]:
        return _streamed(
            make_tf_dataset(windows, n_features=n_features, batch_size=8, shuffle_buffer=16, seed=seed)
        )

    inputs, targets = shuffled(7)
    assert not np.array_equal(inputs, expected_inputs)  # the order changed
    # the same (input, target) pairs, in another order
    assert _pairs(inputs, targets) == _pairs(expected_inputs, expected_targets)
    # songs are shuffled too: the song order of the stream follows the seed
    song_order = [r.song_id for r in np.array(rows)[np.random.default_rng(7).permutation(len(rows))]]
    first_song = next(r for r in rows if r.song_id == song_order[0])
    first_blocks = _song_blocks(store_url, dataset_id, first_song)
    first_windows = cut_windows(first_blocks, seq_len=8, hop=4)[0]
    head = {x.tobytes() for x in inputs[:8]}
    assert head & {x.tobytes() for x in first_windows}


def test_each_epoch_has_its_own_order_and_resuming_repeats_it(tiny_dataset: tuple[str, str]) -> None:
    store_url, dataset_id = tiny_dataset
    rows = [row for row in read_catalog(open_store(store_url), dataset_dir(dataset_id)) if row.ok]
    windows = SongWindows(store_url, dataset_id, rows, seq_len=8, hop=4)
    options = {"n_features": 1026, "batch_size": 8, "shuffle_buffer": 16, "seed": 3}

    dataset = make_tf_dataset(windows, **options)
    epochs = [_streamed(dataset)[0] for _ in range(3)]
    assert not np.array_equal(epochs[1], epochs[2])  # reshuffled each epoch
    np.testing.assert_array_equal(_streamed(make_tf_dataset(windows, **options))[0], epochs[0])
    # a run resumed after 2 epochs streams what epoch 3 of an uninterrupted run streamed
    resumed = make_tf_dataset(windows, **options, first_epoch=2)
    np.testing.assert_array_equal(_streamed(resumed)[0], epochs[2])


def test_the_endless_dataset_holds_the_epochs_in_turn(tiny_dataset: tuple[str, str]) -> None:
    """``repeat=True`` (what training uses): batch k of epoch e is batch k of the e-th pass of the
    one-epoch dataset, epoch boundaries included (each epoch ends on its own partial batch)."""
    store_url, dataset_id = tiny_dataset
    rows = [row for row in read_catalog(open_store(store_url), dataset_dir(dataset_id)) if row.ok]
    windows = SongWindows(store_url, dataset_id, rows, seq_len=8, hop=4)
    options = {"n_features": 1026, "batch_size": 8, "shuffle_buffer": 16, "seed": 5, "first_epoch": 1}
    steps = steps_per_epoch(windows, 8)
    assert windows.n_windows % 8 != 0  # so every epoch ends on a partial batch

    one_epoch = make_tf_dataset(windows, **options)
    expected = [list(one_epoch.as_numpy_iterator()) for _ in range(3)]  # type: ignore[attr-defined]
    endless = make_tf_dataset(windows, **options, repeat=True)
    batches = list(endless.take(3 * steps).as_numpy_iterator())  # type: ignore[attr-defined]

    assert [len(epoch) for epoch in expected] == [steps] * 3
    for index, (inputs, targets) in enumerate(batches):
        expected_inputs, expected_targets = expected[index // steps][index % steps]
        np.testing.assert_array_equal(inputs, expected_inputs)
        np.testing.assert_array_equal(targets, expected_targets)
    first, second = (np.concatenate([b[0] for b in batches[e * steps : (e + 1) * steps]]) for e in (0, 1))
    assert not np.array_equal(first, second)  # a new order each epoch


def test_load_split_rows_match_split_songs(tiny_dataset: tuple[str, str]) -> None:
    store_url, dataset_id = tiny_dataset
    store = open_store(store_url)
    train, val = load_split(store, dataset_id, val_fraction=0.25, seed=0)
    ids = [row.song_id for row in read_catalog(store, dataset_dir(dataset_id)) if row.ok]
    assert ([r.song_id for r in train], [r.song_id for r in val]) == split_songs(
        ids, val_fraction=0.25, seed=0
    )
    assert len(val) == 1 and len(train) == 3


@pytest.mark.parametrize(("seq_len", "hop", "frames_per_step"), [(8, 4, 1), (5, 7, 1), (4, 3, 2)])
def test_a_song_is_read_a_few_windows_at_a_time_and_the_batches_are_unchanged(
    any_store: tuple[str, str], monkeypatch: pytest.MonkeyPatch, seq_len: int, hop: int, frames_per_step: int
) -> None:
    """Training reads a song by runs of windows, at most ``read_bytes`` of steps at a time (a 4-hour
    song is never held whole), and the shuffled batches are those of a whole-song read."""
    store_url, dataset_id = any_store
    store = open_store(store_url)
    rows = [row for row in read_catalog(store, dataset_dir(dataset_id)) if row.ok]
    n_features = FeatureConfig(block_size=TINY_BLOCK).n_features
    normalizer = Normalizer.from_dataset(store, dataset_id)
    step_bytes = 4 * n_features * frames_per_step
    piece = seq_len + 1 + 2 * hop  # steps per read: three windows' starts
    longest = max(row.n_blocks for row in rows)
    assert longest > 4 * piece * frames_per_step  # each song takes several reads

    def windows(read_bytes: int) -> SongWindows:
        return SongWindows(store_url, dataset_id, rows, seq_len=seq_len, hop=hop, normalizer=normalizer,
                           frames_per_step=frames_per_step, read_bytes=read_bytes)  # fmt: skip

    def batches(song_windows: SongWindows) -> tuple[np.ndarray, np.ndarray]:
        return _streamed(make_tf_dataset(song_windows, n_features=n_features * frames_per_step,
                                         batch_size=8, shuffle_buffer=16, seed=3))  # fmt: skip

    whole = batches(windows(read_bytes=longest * n_features * 4))
    reads = _count_block_reads(monkeypatch)
    in_pieces = batches(windows(read_bytes=piece * step_bytes))
    np.testing.assert_array_equal(in_pieces[0], whole[0])
    np.testing.assert_array_equal(in_pieces[1], whole[1])
    assert max(reads) <= piece * frames_per_step, reads
    assert len(reads) > 4 * len(rows)


def test_the_steps_a_codebook_fit_draws_are_read_a_piece_at_a_time(
    any_store: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``units`` model's k-means draws its steps from every training song: only the pieces
    holding drawn steps are read, each at most ``read_bytes``, and the steps are those of the
    songs read whole and concatenated."""
    store_url, dataset_id = any_store
    rows = [row for row in read_catalog(open_store(store_url), dataset_dir(dataset_id)) if row.ok]
    n_features = FeatureConfig(block_size=TINY_BLOCK).n_features
    windows = SongWindows(store_url, dataset_id, rows, seq_len=4, hop=4, frames_per_step=2,
                          read_bytes=16 * 2 * n_features * 4)  # fmt: skip
    every = np.concatenate([windows.song_blocks(row) for row in rows])
    picked = np.sort(np.random.default_rng(5).choice(every.shape[0], every.shape[0] // 3, replace=False))
    reads = _count_block_reads(monkeypatch)
    np.testing.assert_array_equal(windows.gather_steps(picked), every[picked])
    assert max(reads) <= 16 * 2, reads
    assert sum(reads) < 2 * every.shape[0]


def _count_block_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the rows each read of a shard by :class:`SongWindows` asks for."""
    import tasks.model.windows as module

    reads: list[int] = []

    def counted(*args: object, n_blocks: int, **kwargs: object) -> np.ndarray:
        reads.append(n_blocks)
        return read_blocks(*args, n_blocks=n_blocks, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "read_blocks", counted)
    return reads
