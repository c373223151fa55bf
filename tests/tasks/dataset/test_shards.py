"""Unit tests of tasks/dataset/shards.py: ShardWriter and read_blocks for Zarr and Parquet shards.

Small feature widths keep this fast; song lengths straddle CHUNK_BLOCKS so that partial
flushes, several chunks / row groups and reads across their borders are all exercised (chunks
are CHUNK_BLOCKS rows here whatever the width: ``CHUNK_BYTES`` is patched to 0, see
``test_chunks_are_about_chunk_bytes`` for the sizes a real shard gets).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import native_threads_started_by
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tasks.dataset.shards as shards
from tasks.dataset.shards import (
    CHUNK_BLOCKS,
    CHUNK_BYTES,
    SHARDS_DIR,
    ShardWriter,
    default_chunk_rows,
    read_blocks,
    read_shard_record,
    read_shard_stats,
    shard_format,
    stats_name,
)
from tasks.dataset.stats import FeatureStats
from tasks.errors import ConfigError, StoreError
from tasks.store.store import Store, open_store

FORMATS = ["zarr", "parquet"]
DATASET = "datasets/d1"
N_FEATURES = 6


@pytest.fixture(autouse=True)
def _chunks_of_chunk_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "CHUNK_BYTES", 0)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        yield open_store(str(tmp_path / "store"))
        return
    opened = open_store(f"memory://musicflow-shards-{uuid.uuid4().hex[:8]}")
    yield opened
    opened.rm()


def _songs(lengths: list[int], n_features: int = N_FEATURES, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, n_features)).astype(np.float32) * (i + 1) for i, n in enumerate(lengths)]


def _write(store: Store, songs: list[np.ndarray], shard_format: str) -> tuple[ShardWriter, list[int]]:
    with ShardWriter(store, DATASET, n_features=songs[0].shape[1], shard_format=shard_format) as writer:
        offsets = [writer.add(song) for song in songs]
    return writer, offsets


def _files(store: Store) -> list[str]:
    """Every file under the dataset, relative to it."""
    base = store.path(DATASET)
    if not store.fs.exists(base):
        return []
    return sorted(os.path.relpath(path, base) for path in store.fs.find(base))


def _assert_round_trip(store: Store, songs: list[np.ndarray], fmt: str) -> str:
    """Write ``songs`` into one shard, check everything read back; returns the shard."""
    writer, offsets = _write(store, songs, fmt)
    lengths = [song.shape[0] for song in songs]
    assert offsets == [sum(lengths[:i]) for i in range(len(lengths))]  # contiguous, in order
    assert writer.n_blocks == sum(lengths)
    assert writer.shard is not None
    assert writer.shard.startswith(SHARDS_DIR + "/")
    assert shard_format(writer.shard) == fmt
    assert store.exists(DATASET, writer.shard)
    for song, offset in zip(songs, offsets, strict=True):
        blocks = read_blocks(store, DATASET, writer.shard, offset=offset, n_blocks=song.shape[0])
        assert blocks.dtype == np.float32
        np.testing.assert_array_equal(blocks, song)
    everything = np.concatenate(songs)
    whole = read_blocks(store, DATASET, writer.shard, offset=0, n_blocks=everything.shape[0])
    np.testing.assert_array_equal(whole, everything)
    stats = read_shard_stats(store, DATASET, writer.shard)
    expected = FeatureStats.from_features(everything)
    assert stats.count == expected.count == everything.shape[0]
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.m2, expected.m2, rtol=1e-9, atol=1e-9)
    return writer.shard


@pytest.mark.parametrize("shard_format", FORMATS)
def test_several_songs_round_trip(store: Store, shard_format: str) -> None:
    # 3 + 70 crosses a chunk mid-song; 64 fills one exactly; 130 spans three.
    songs = _songs([3, 70, CHUNK_BLOCKS, 1, 130])
    shard = _assert_round_trip(store, songs, shard_format)
    files = _files(store)
    # Only the shard under its final name (no ".partial") and its statistics sidecar.
    assert stats_name(shard) in files
    rest = [name for name in files if name != stats_name(shard)]
    assert rest and all(name == shard or name.startswith(shard + "/") for name in rest)


@pytest.mark.parametrize("shard_format", FORMATS)
def test_reads_across_chunk_borders(store: Store, shard_format: str) -> None:
    (data,) = _songs([3 * CHUNK_BLOCKS + 5])
    writer, _ = _write(store, [data], shard_format)
    assert writer.shard is not None
    for offset, n in [(0, 1), (CHUNK_BLOCKS - 1, 2), (CHUNK_BLOCKS, CHUNK_BLOCKS), (10, 150), (190, 5)]:
        blocks = read_blocks(store, DATASET, writer.shard, offset=offset, n_blocks=n)
        np.testing.assert_array_equal(blocks, data[offset : offset + n])
    # Past the end: empty, with the right width.
    past = read_blocks(store, DATASET, writer.shard, offset=data.shape[0], n_blocks=4)
    assert past.shape == (0, N_FEATURES)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    shard_format=st.sampled_from(FORMATS),
    n_features=st.integers(1, 9),
    lengths=st.lists(st.integers(1, 2 * CHUNK_BLOCKS + 3), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_round_trip_any_shape(shard_format: str, n_features: int, lengths: list[int], seed: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        _assert_round_trip(open_store(directory), _songs(lengths, n_features, seed), shard_format)


@pytest.mark.parametrize("shard_format", FORMATS)
def test_float64_input_is_stored_as_float32(tmp_path: Path, shard_format: str) -> None:
    store = open_store(str(tmp_path))
    data = np.linspace(-1, 1, 5 * N_FEATURES, dtype=np.float64).reshape(5, N_FEATURES) / 3
    writer, _ = _write(store, [data], shard_format)
    assert writer.shard is not None
    blocks = read_blocks(store, DATASET, writer.shard, offset=0, n_blocks=5)
    np.testing.assert_array_equal(blocks, data.astype(np.float32))


@pytest.mark.parametrize("shard_format", FORMATS)
@pytest.mark.parametrize(
    "shape", [(4, N_FEATURES + 1), (4, N_FEATURES - 1), (N_FEATURES,), (2, 3, N_FEATURES)]
)
def test_wrong_shape_is_rejected(tmp_path: Path, shard_format: str, shape: tuple[int, ...]) -> None:
    store = open_store(str(tmp_path))
    good = _songs([5])[0]
    with ShardWriter(store, DATASET, n_features=N_FEATURES, shard_format=shard_format) as writer:
        writer.add(good)
        with pytest.raises(StoreError, match=str(N_FEATURES)):
            writer.add(np.zeros(shape, dtype=np.float32))
        assert writer.n_blocks == 5  # the rejected song changed nothing
    assert writer.shard is not None
    np.testing.assert_array_equal(read_blocks(store, DATASET, writer.shard, offset=0, n_blocks=10), good)
    assert read_shard_stats(store, DATASET, writer.shard).count == 5


@pytest.mark.parametrize("shard_format", FORMATS)
@pytest.mark.parametrize("n_songs_before", [0, 1, 3])
def test_a_failed_writer_leaves_nothing(store: Store, shard_format: str, n_songs_before: int) -> None:
    songs = _songs([40, CHUNK_BLOCKS + 7, 2])[:n_songs_before]  # some flushed, some pending
    with (
        pytest.raises(RuntimeError, match="decoder crashed"),
        ShardWriter(store, DATASET, n_features=N_FEATURES, shard_format=shard_format) as writer,
    ):
        for song in songs:
            writer.add(song)
        raise RuntimeError("decoder crashed")
    assert writer.shard is None  # nothing a catalog row could reference
    assert _files(store) == []  # no shard, partial shard or statistics sidecar left


@pytest.mark.parametrize("shard_format", FORMATS)
def test_an_empty_writer_commits_nothing(store: Store, shard_format: str) -> None:
    with ShardWriter(store, DATASET, n_features=N_FEATURES, shard_format=shard_format) as writer:
        pass
    assert writer.shard is None
    assert writer.n_blocks == 0
    assert _files(store) == []


def test_each_writer_makes_a_new_shard(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    first, _ = _write(store, _songs([3], seed=1), "zarr")
    second, _ = _write(store, _songs([3], seed=2), "zarr")
    assert first.shard != second.shard
    assert first.shard is not None and second.shard is not None
    a = read_blocks(store, DATASET, first.shard, offset=0, n_blocks=3)
    b = read_blocks(store, DATASET, second.shard, offset=0, n_blocks=3)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("shard_format", FORMATS)
def test_chunks_are_about_chunk_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard_format: str
) -> None:
    """Narrow rows (128 mel bands) get chunks of ~2 MB, not of 64 rows (32 kB files, one per 0.4 s
    of audio); wide rfft rows keep 64 blocks a chunk."""
    monkeypatch.setattr(shards, "CHUNK_BYTES", CHUNK_BYTES)
    assert CHUNK_BYTES == 2 << 20
    assert default_chunk_rows(11026) == CHUNK_BLOCKS
    assert default_chunk_rows(128) == 4096
    store = open_store(str(tmp_path))
    (song,) = _songs([4096 * 2 + 10], n_features=128)
    with ShardWriter(store, DATASET, n_features=128, shard_format=shard_format) as writer:
        writer.add(song)
    assert writer.shard is not None and writer.chunk_rows == 4096
    np.testing.assert_array_equal(
        read_blocks(store, DATASET, writer.shard, offset=0, n_blocks=len(song)), song
    )
    np.testing.assert_array_equal(
        read_blocks(store, DATASET, writer.shard, offset=4090, n_blocks=20), song[4090:4110]
    )
    path = store.path(DATASET, writer.shard)
    if shard_format == "zarr":
        import zarr

        assert zarr.open_group(path, mode="r")["features"].chunks == (4096, 128)
    else:
        import pyarrow.parquet as pq

        metadata = pq.ParquetFile(path).metadata
        assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [4096, 4096, 10]


def test_bad_format_and_names() -> None:
    store = open_store("memory://unused")
    with pytest.raises(ConfigError, match="'csv'"):
        ShardWriter(store, DATASET, n_features=3, shard_format="csv")
    assert shard_format("shards/x.zarr") == "zarr"
    assert shard_format("shards/x.parquet") == "parquet"
    with pytest.raises(StoreError, match=r"x\.npy"):
        shard_format("shards/x.npy")
    assert stats_name("shards/x.zarr") == "shards/x.zarr.stats.npz"


@pytest.mark.parametrize("shard_format", FORMATS)
def test_round_trip_on_s3(s3_bucket: str, shard_format: str) -> None:
    store = open_store(f"{s3_bucket}/store")
    songs = _songs([5, CHUNK_BLOCKS + 1, 2], seed=7)
    _assert_round_trip(store, songs, shard_format)
    with (
        pytest.raises(RuntimeError),
        ShardWriter(store, "datasets/other", n_features=N_FEATURES, shard_format=shard_format) as writer,
    ):
        writer.add(songs[1])
        raise RuntimeError
    assert writer.shard is None
    assert store.fs.find(store.path("datasets", "other")) == []


def test_reading_a_parquet_shard_leaves_no_native_thread(tmp_path: Path) -> None:
    """Arrow threads alive at exit abort the process now and then (see the catalog's test)."""
    writer, _ = _write(open_store(str(tmp_path)), _songs([40]), "parquet")
    setup = "from tasks.dataset.shards import read_blocks; from tasks.store.store import open_store"
    action = (
        f"store = open_store({str(tmp_path)!r})\n"
        f"blocks = read_blocks(store, {DATASET!r}, {writer.shard!r}, offset=3, n_blocks=10)\n"
        "assert blocks.shape[0] == 10"
    )
    assert native_threads_started_by(setup, action) == []


@pytest.mark.parametrize("shard_format", FORMATS)
def test_a_shard_names_its_songs_and_parquet_rows_their_song_and_frame(
    store: Store, shard_format: str
) -> None:
    """Schema 2: the shard lists its kept songs (id, offset, frames); a Parquet row says its song and
    its frame in that song, across flushes, and a song dropped while buffered leaves no label."""
    import pyarrow.parquet as pq

    first, dropped, last = _songs([CHUNK_BLOCKS * 5 + 3, 10, CHUNK_BLOCKS * 2])
    with ShardWriter(
        store, DATASET, n_features=N_FEATURES, shard_format=shard_format, attributes={"features": {"n": 6}}
    ) as writer:
        writer.add(first, song_id="a" * 64)
        writer.begin_song(lambda: "b" * 64)  # an id known only later, as the worker's hash
        writer.add_rows(dropped)
        writer.end_song(keep=False)
        writer.add(last, song_id=lambda: "c" * 64)
    assert writer.shard is not None
    record = read_shard_record(store, DATASET, writer.shard)
    assert record == {
        "schema_version": shards.SCHEMA_VERSION,
        "features": {"n": 6},
        "songs": [
            {"song_id": "a" * 64, "offset": 0, "n_frames": len(first)},
            {"song_id": "c" * 64, "offset": len(first), "n_frames": len(last)},
        ],
    }
    if shard_format == "parquet":
        with store.fs.open(store.path(DATASET, writer.shard), "rb") as handle:
            table = pq.read_table(handle)
        assert table.column("song_id").to_pylist() == ["a" * 64] * len(first) + ["c" * 64] * len(last)
        assert table.column("frame").to_pylist() == [*range(len(first)), *range(len(last))]
