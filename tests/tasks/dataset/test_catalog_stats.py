"""Unit tests of the catalog (tasks/dataset/catalog.py), FeatureStats (tasks/dataset/stats.py) and the
planning half of ingest (tasks/ingest/sources.py, plan.py: list_audio_files, plan_ingest, make_batches,
refresh_stats) — plain functions, no Prefect, no Dask, no decoding."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import native_threads_started_by
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tasks.config import FeatureConfig, IngestConfig
from tasks.dataset.catalog import (
    CATALOG_DIR,
    CATALOG_SCHEMA,
    SOURCE_BYTES,
    STATUS_FAILED,
    STATUS_OK,
    CatalogRow,
    append_rows,
    new_rows,
    read_catalog,
    rows_to_table,
    table_to_rows,
    write_catalog,
)
from tasks.dataset.repository import STATS_FILE, dataset_dir, prepare_dataset, read_stats, refresh_stats
from tasks.dataset.shards import ShardWriter
from tasks.dataset.stats import FeatureStats, merge_all
from tasks.errors import ConfigError
from tasks.ingest import plan as planning
from tasks.ingest.plan import make_batches, plan_ingest
from tasks.ingest.sources import SourceFile, list_audio_files
from tasks.store.store import open_store

DIR = "datasets/d1"


def row(song_id: str, status: str = STATUS_OK, **overrides: object) -> CatalogRow:
    ok = status == STATUS_OK
    values: dict[str, object] = {
        "song_id": song_id,
        "source": f"/songs/{song_id}.mp3",
        "bytes": 1000 + len(song_id),
        "mtime": 1.7e9,
        "seconds": 3.5,
        "channels": 2,
        "n_blocks": 14 if ok else 0,
        "shard": "shards/a.zarr" if ok else None,
        "offset": 0 if ok else -1,
        "status": status,
        "error": None if ok else "truncated file",
        "ingested_at": "2025-01-01T00:00:00+00:00",
    }
    values.update(overrides)
    return CatalogRow(**values)  # type: ignore[arg-type]


# =========================================================================== catalog


def test_rows_round_trip_through_parquet() -> None:
    rows = [
        row("a" * 64, bytes=2**40, mtime=1712345678.123456, seconds=183.25, offset=2**33),
        row("b" * 64, STATUS_FAILED, mtime=None, error="not audio: ünïcode"),
    ]
    table = rows_to_table(rows)
    assert table.schema == CATALOG_SCHEMA.append(SOURCE_BYTES)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    back = pq.read_table(io.BytesIO(buffer.getvalue()))
    assert back.schema.names == [
        "song_id",
        "source",
        "bytes",
        "mtime",
        "seconds",
        "channels",
        "n_blocks",
        "shard",
        "offset",
        "status",
        "error",
        "ingested_at",
        "warnings",
        "source_bytes",
    ]
    assert back.schema.field("bytes").type == pa.int64()
    assert back.schema.field("offset").type == pa.int64()
    assert back.schema.field("mtime").type == pa.float64()
    assert table_to_rows(back) == rows
    assert [r.ok for r in table_to_rows(back)] == [True, False]


def test_table_to_rows_ignores_column_order_and_extra_columns() -> None:
    rows = [row("a"), row("b", STATUS_FAILED)]
    table = rows_to_table(rows)
    shuffled = table.select(list(reversed(table.schema.names))).append_column(
        "added_later", pa.array(["x", "y"])
    )
    assert table_to_rows(shuffled) == rows


def test_read_and_write_catalog(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    assert read_catalog(store, DIR) == []
    rows = [row("a"), row("b", STATUS_FAILED), row("c")]
    write_catalog(store, DIR, [], rows)
    assert read_catalog(store, DIR) == rows
    # A retried song replaces its failed row; the order is the commit order.
    retried = row("b", n_blocks=3, shard="shards/b.zarr")
    write_catalog(store, DIR, rows, [retried])
    assert read_catalog(store, DIR) == [rows[0], rows[2], retried]


def test_reading_the_catalog_leaves_no_native_thread(tmp_path: Path) -> None:
    """``musicflow status`` once died at exit (SIGABRT, "terminate called without an active
    exception") in about one run in six: the catalog read left Arrow threads alive."""
    store = open_store(str(tmp_path))
    write_catalog(store, DIR, [], [row(f"song{i}") for i in range(50)])
    setup = "from tasks.dataset.catalog import read_catalog; from tasks.store.store import open_store"
    action = f"assert len(read_catalog(open_store({str(tmp_path)!r}), {DIR!r})) == 50"
    assert native_threads_started_by(setup, action) == []


def test_new_rows() -> None:
    existing = [row("ok1"), row("bad", STATUS_FAILED)]
    incoming = [
        row("ok1", offset=99),  # already committed: dropped
        row("new1"),
        row("bad", offset=5),  # failed before: retried
        row("new1", offset=7),  # same song twice in one batch: the first wins
        row("new2", STATUS_FAILED),
    ]
    added = new_rows(existing, incoming)
    assert [(r.song_id, r.offset) for r in added] == [("new1", 0), ("bad", 5), ("new2", -1)]
    assert new_rows(existing, []) == []
    assert new_rows([], [row("x"), row("x", offset=3)]) == [row("x")]


def test_append_rows_never_duplicates(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    assert append_rows(store, DIR, []) == []
    assert not store.exists(DIR, CATALOG_DIR)  # nothing to commit: nothing written
    assert read_catalog(store, DIR) == []

    first = [row("a"), row("b", STATUS_FAILED)]
    assert append_rows(store, DIR, first) == first
    added = append_rows(store, DIR, [row("a", offset=50), row("c"), row("b", offset=2)])
    assert [r.song_id for r in added] == ["c", "b"]
    catalog = read_catalog(store, DIR)
    assert [(r.song_id, r.status, r.offset) for r in catalog] == [
        ("a", STATUS_OK, 0),
        ("c", STATUS_OK, 0),
        ("b", STATUS_OK, 2),
    ]
    before = sorted(os.listdir(store.path(DIR, CATALOG_DIR)))
    assert append_rows(store, DIR, [row("a"), row("c")]) == []
    assert sorted(os.listdir(store.path(DIR, CATALOG_DIR))) == before  # nothing to add: no new version
    assert read_catalog(store, DIR) == catalog


# =========================================================================== FeatureStats


def _assert_stats_equal(actual: FeatureStats, expected: FeatureStats) -> None:
    assert actual.count == expected.count
    np.testing.assert_allclose(actual.mean, expected.mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(actual.m2, expected.m2, rtol=1e-7, atol=1e-6)


@st.composite
def _data_and_cuts(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    n_rows = draw(st.integers(0, 40))
    n_features = draw(st.integers(1, 4))
    data = draw(
        arrays(
            np.float32,
            (n_rows, n_features),
            elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32),
        )
    )
    cuts = sorted(draw(st.lists(st.integers(0, n_rows), max_size=5)))
    return data, cuts


@settings(max_examples=60, deadline=None)
@given(_data_and_cuts())
def test_merged_splits_equal_the_whole(data_and_cuts: tuple[np.ndarray, list[int]]) -> None:
    data, cuts = data_and_cuts
    parts = np.split(data, cuts)  # some parts may be empty
    whole = FeatureStats.from_features(data)
    _assert_stats_equal(merge_all([FeatureStats.from_features(p) for p in parts], data.shape[1]), whole)
    # Merging in any tree shape gives the same: ((p0 + p1) + (p2 + ...)).
    left = merge_all([FeatureStats.from_features(p) for p in parts[:2]], data.shape[1])
    right = merge_all([FeatureStats.from_features(p) for p in parts[2:]], data.shape[1])
    _assert_stats_equal(right.merge(left), whole)
    if data.shape[0]:
        np.testing.assert_allclose(whole.mean, data.astype(np.float64).mean(axis=0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(whole.std, data.astype(np.float64).std(axis=0), rtol=1e-7, atol=1e-6)


def test_merge_known_values() -> None:
    a = FeatureStats.from_features(np.array([[1.0, 10.0], [3.0, 10.0]]))
    b = FeatureStats.from_features(np.array([[5.0, 40.0]]))
    merged = a.merge(b)
    assert merged.count == 3
    np.testing.assert_allclose(merged.mean, [3.0, 20.0])
    np.testing.assert_allclose(merged.m2, [8.0, 600.0])  # sum of squared deviations
    np.testing.assert_allclose(merged.std, np.sqrt([8.0 / 3, 200.0]))


def test_empty_and_one_row_stats() -> None:
    empty = FeatureStats.empty(3)
    assert empty.count == 0
    assert empty.n_features == 3
    np.testing.assert_array_equal(empty.std, np.zeros(3))
    _assert_stats_equal(FeatureStats.from_features(np.zeros((0, 3))), empty)
    one = FeatureStats.from_features(np.array([[1.5, -2.0, 7.0]], dtype=np.float32))
    assert one.count == 1
    np.testing.assert_array_equal(one.mean, [1.5, -2.0, 7.0])
    np.testing.assert_array_equal(one.std, np.zeros(3))
    # The empty statistics are the identity of merge, on both sides.
    _assert_stats_equal(empty.merge(one), one)
    _assert_stats_equal(one.merge(empty), one)
    _assert_stats_equal(merge_all([], 3), empty)
    assert merge_all([], 5).n_features == 5


def test_serialisation_round_trips() -> None:
    stats = FeatureStats.from_features(np.random.default_rng(3).normal(size=(17, 5)))
    back = FeatureStats.from_npz(stats.to_npz())
    assert back.count == 17
    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_array_equal(back.m2, stats.m2)
    as_json = stats.to_json()
    assert as_json["n_features"] == 5
    np.testing.assert_allclose(as_json["std"], stats.std)
    back = FeatureStats.from_json(as_json)
    assert back.count == 17
    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_array_equal(back.m2, stats.m2)
    empty = FeatureStats.from_npz(FeatureStats.empty(4).to_npz())
    assert (empty.count, empty.n_features) == (0, 4)


# =========================================================================== make_batches


def _files(sizes: list[int]) -> list[SourceFile]:
    return [SourceFile(uri=f"/songs/{index:04d}.mp3", bytes=size) for index, size in enumerate(sizes)]


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 1000), max_size=40),
    batch_bytes=st.integers(1, 3000),
    min_batches=st.integers(1, 8),
    rounds_of=st.integers(1, 4),
)
def test_make_batches_properties(
    sizes: list[int], batch_bytes: int, min_batches: int, rounds_of: int
) -> None:
    files = _files(sizes)
    batches = make_batches(files, batch_bytes=batch_bytes, min_batches=min_batches, rounds_of=rounds_of)
    flat = [item for batch in batches for item in batch]
    assert sorted(item.uri for item in flat) == [item.uri for item in files]  # each file exactly once
    assert all(batches), "an empty batch"
    assert len(batches) >= min(min_batches, len(files))
    # Whole rounds for the workers, unless there are fewer files than that.
    assert len(batches) % rounds_of == 0 or len(batches) == len(files)
    loads = [sum(item.bytes for item in batch) for batch in batches]
    for batch, load in zip(batches, loads, strict=True):
        assert load <= batch_bytes or len(batch) == 1, (load, [item.bytes for item in batch])
        positions = [files.index(item) for item in batch]
        assert positions == sorted(positions)  # listing order within a batch
    assert [files.index(batch[0]) for batch in batches] == sorted(files.index(batch[0]) for batch in batches)
    if files and len(batches) > 1:
        # Largest first to the lightest batch: no batch outweighs another by more than a file.
        assert max(loads) - min(loads) <= max(sizes)


def test_make_batches_balances_where_listing_order_would_not() -> None:
    files = _files([1, 1, 1, 1, 10, 10, 2, 2])  # total 28: two batches of 14
    batches = make_batches(files, batch_bytes=14, min_batches=1)
    assert sorted(sum(item.bytes for item in batch) for batch in batches) == [14, 14]
    # Largest first: 3 alone, then 2 + 2 (in listing order, 2 + 3 against 2 would weigh 5 / 2).
    files = _files([2, 2, 3])
    assert make_batches(files, batch_bytes=100, min_batches=2) == [files[:2], files[2:]]


def test_make_batches_edges() -> None:
    assert make_batches([], batch_bytes=10) == []
    big = _files([100, 1, 1])
    assert make_batches(big, batch_bytes=200) == [big]
    assert make_batches(big, batch_bytes=200, min_batches=2) == [big[:1], big[1:]]
    assert make_batches(big, batch_bytes=10) == [[item] for item in big]
    assert make_batches(_files([5, 5]), batch_bytes=10, min_batches=4) == [[item] for item in _files([5, 5])]
    # Three files of 6 in batches of at most 9: two would make 12, so three batches.
    assert make_batches(_files([6, 6, 6]), batch_bytes=9) == [[item] for item in _files([6, 6, 6])]
    # 3 batches' worth on 2 workers: 4 lighter batches, so the last round is not one worker's alone.
    rounds = make_batches(_files([5] * 6), batch_bytes=10, rounds_of=2)
    assert [len(batch) for batch in rounds] == [2, 2, 1, 1]
    # Empty files still spread over min_batches batches.
    assert len(make_batches(_files([10, 0, 0]), batch_bytes=100, min_batches=3)) == 3
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=str(bad)):
            make_batches(big, batch_bytes=bad)
        with pytest.raises(ConfigError, match=f"rounds_of {bad}"):
            make_batches(big, batch_bytes=10, rounds_of=bad)


# =========================================================================== list_audio_files


def test_list_audio_files_is_recursive_and_filters_extensions(tmp_path: Path) -> None:
    songs = tmp_path / "songs"
    wanted = ["a.mp3", "sub/B.WAV", "sub/deeper/c.Flac", "x.mp3/e.ogg"]
    for index, name in enumerate([*wanted, "notes.txt", "d.mp3.bak", "sub/cover.jpg", "mp3"]):
        path = songs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (index + 1))
    files = list_audio_files(str(songs))
    assert [item.uri for item in files] == [str(songs / name) for name in wanted]
    for item in files:
        info = os.stat(item.uri)
        assert item.bytes == info.st_size
        assert item.mtime == pytest.approx(info.st_mtime)
        assert item.song_id is None  # hashing is plan_ingest's job
    # A single file is a source too.
    assert [item.uri for item in list_audio_files(str(songs / "sub" / "B.WAV"))] == [str(songs / "sub/B.WAV")]


def test_list_audio_files_of_a_missing_source(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing-here")
    with pytest.raises(ConfigError, match="nothing-here"):
        list_audio_files(missing)


def test_list_audio_files_on_s3(s3_bucket: str) -> None:
    store = open_store(s3_bucket)
    store.write_bytes(b"12345", "in", "one.mp3")
    store.write_bytes(b"123", "in", "deep", "two.OGG")
    store.write_bytes(b"1", "in", "readme.md")
    files = list_audio_files(f"{s3_bucket}/in")
    assert [(item.uri, item.bytes) for item in files] == [
        (f"{s3_bucket}/in/deep/two.OGG", 3),
        (f"{s3_bucket}/in/one.mp3", 5),
    ]
    assert all(item.mtime is not None for item in files)


# =========================================================================== plan_ingest


@pytest.fixture
def listed(tmp_path: Path) -> list[SourceFile]:
    """Four files: a, b, c with distinct content and d, a copy of b."""
    contents = {"a.mp3": b"AAAA", "b.mp3": b"BBBBBB", "c.mp3": b"CC", "d.mp3": b"BBBBBB"}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    return list_audio_files(str(tmp_path))


def _sha(item: SourceFile) -> str:
    return hashlib.sha256(Path(item.uri).read_bytes()).hexdigest()


def _row_for(item: SourceFile, status: str = STATUS_OK) -> CatalogRow:
    return row(_sha(item), status, source=item.uri, bytes=item.bytes, mtime=item.mtime)


def test_plan_of_a_new_dataset(listed: list[SourceFile]) -> None:
    plan = plan_ingest(listed, [])
    assert plan.n_listed == 4
    assert [os.path.basename(item.uri) for item in plan.todo] == ["a.mp3", "b.mp3", "c.mp3"]
    # Only files that share their size with another could share content: the planner hashes
    # those (b, d); a and c are hashed by the worker that decodes them, reading them once.
    assert [item.song_id for item in plan.todo] == [None, _sha(plan.todo[1]), None]
    assert [os.path.basename(item.uri) for item in plan.duplicates] == ["d.mp3"]  # same bytes as b
    assert plan.duplicates[0].song_id == plan.todo[1].song_id
    assert plan.known == []


def test_known_files_are_recognised_without_hashing(
    listed: list[SourceFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = [_row_for(listed[0]), _row_for(listed[2])]
    hashed: list[str] = []
    real = planning.sha256_of

    def spy(uri: str) -> str:
        hashed.append(os.path.basename(uri))
        return real(uri)

    monkeypatch.setattr(planning, "sha256_of", spy)
    plan = plan_ingest(listed, catalog)
    assert sorted(hashed) == ["b.mp3", "d.mp3"]  # a and c are known by (uri, size, mtime)
    assert {os.path.basename(item.uri): item.song_id for item in plan.known} == {
        "a.mp3": catalog[0].song_id,
        "c.mp3": catalog[1].song_id,
    }
    assert [os.path.basename(item.uri) for item in plan.todo] == ["b.mp3"]
    assert [os.path.basename(item.uri) for item in plan.duplicates] == ["d.mp3"]


def test_a_touched_or_moved_file_is_known_by_content(listed: list[SourceFile]) -> None:
    a = listed[0]
    catalog = [_row_for(a)]
    touched = replace(a, mtime=(a.mtime or 0) + 60)
    plan = plan_ingest([touched], catalog)
    assert plan.todo == []
    assert [item.song_id for item in plan.known] == [catalog[0].song_id]
    moved = replace(row("unused"), song_id=catalog[0].song_id, source="/elsewhere/a.mp3", bytes=a.bytes)
    plan = plan_ingest([a], [moved])
    assert plan.todo == []
    assert [item.song_id for item in plan.known] == [catalog[0].song_id]


def test_changed_content_under_the_same_name_is_new(listed: list[SourceFile]) -> None:
    a = listed[0]
    catalog = [_row_for(a)]
    Path(a.uri).write_bytes(b"a different song")
    changed = list_audio_files(a.uri)[0]
    plan = plan_ingest([changed], catalog)
    assert [item.uri for item in plan.todo] == [a.uri]
    assert plan.todo[0].song_id is None  # a new size: new content, hashed by its worker


def test_failed_songs_are_retried_only_when_asked(listed: list[SourceFile]) -> None:
    failed = _row_for(listed[2], STATUS_FAILED)
    plan = plan_ingest(listed[2:3], [failed])
    assert (plan.todo, [item.song_id for item in plan.known]) == ([], [failed.song_id])
    plan = plan_ingest(listed[2:3], [failed], retry_failed=True)
    assert plan.known == []
    assert [item.uri for item in plan.todo] == [listed[2].uri]


# =========================================================================== refresh_stats


def test_refresh_stats_follows_the_catalog(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    config = IngestConfig(features=FeatureConfig(block_size=8))  # 10 features
    dataset_id = prepare_dataset(store, config)
    directory = dataset_dir(dataset_id)
    n_features = config.features.n_features
    rng = np.random.default_rng(5)
    shards, data = [], []
    for n_blocks in (7, 3, 11):
        blocks = rng.normal(size=(n_blocks, n_features)).astype(np.float32)
        with ShardWriter(store, directory, n_features=n_features) as writer:
            writer.add(blocks)
        shards.append(writer.shard)
        data.append(blocks)

    def commit(index: int) -> None:
        song = row(f"song{index}", shard=shards[index], n_blocks=data[index].shape[0])
        append_rows(store, directory, [song])

    commit(0)
    _assert_stats_equal(refresh_stats(store, dataset_id), FeatureStats.from_features(data[0]))
    commit(1)
    expected = FeatureStats.from_features(np.concatenate(data[:2]))
    _assert_stats_equal(refresh_stats(store, dataset_id), expected)
    _assert_stats_equal(read_stats(store, dataset_id), expected)
    assert store.read_json(directory, STATS_FILE)["version"] == 2  # the catalog version it covers
    # stats.json of a store from before the catalog log (it listed its shards) is migrated,
    # and one counting a shard the catalog does not reference is rebuilt from the referenced ones.
    counted_too_much = expected.merge(FeatureStats.from_features(data[2]))
    store.write_json({**counted_too_much.to_json(), "shards": sorted(shards)}, directory, STATS_FILE)
    _assert_stats_equal(refresh_stats(store, dataset_id), expected)
    # A run killed between its catalog commit and its statistics: the next refresh catches up.
    commit(2)
    _assert_stats_equal(refresh_stats(store, dataset_id), FeatureStats.from_features(np.concatenate(data)))
    store.write_json({**expected.to_json(), "version": 2}, directory, STATS_FILE)
    _assert_stats_equal(refresh_stats(store, dataset_id), FeatureStats.from_features(np.concatenate(data)))
    assert store.read_json(directory, STATS_FILE)["version"] == 3
    expected = FeatureStats.from_features(np.concatenate(data))
    _assert_stats_equal(read_stats(store, dataset_id), expected)
    # A failed row adds nothing.
    append_rows(store, directory, [row("bad", STATUS_FAILED)])
    _assert_stats_equal(refresh_stats(store, dataset_id, rebuild=True), expected)


def test_batches_grow_with_the_collection() -> None:
    """100k songs of 2-12 MB (about 650 GB) in 32 MB batches made ~20k batches (two task runs each);
    with max_batches the batches grow instead, and a small collection keeps its 32 MB batches."""
    import random

    rng = random.Random(7)
    songs = _files([rng.randint(2_000_000, 12_000_000) for _ in range(100_000)])
    fixed = 32 * 2**20
    batches = make_batches(songs, batch_bytes=fixed, min_batches=2, rounds_of=2, max_batches=128)
    assert 64 <= len(batches) <= 128
    assert sorted(item.uri for batch in batches for item in batch) == sorted(item.uri for item in songs)
    few = songs[:40]  # ~280 MB: about nine 32 MB batches, as before
    assert len(make_batches(few, batch_bytes=fixed, max_batches=128)) == len(
        make_batches(few, batch_bytes=fixed)
    )
    assert planning.grown_batch_bytes(10 * fixed, fixed, 128) == fixed
    assert planning.grown_batch_bytes(1000 * fixed, fixed, 100) == pytest.approx(11 * fixed, rel=1e-6)
    with pytest.raises(ConfigError, match="max_batches 0"):
        planning.grown_batch_bytes(1, 1, 0)
