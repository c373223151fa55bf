"""The catalog log and the store lock under load: holders that outlive the expiry, concurrent
commits from several processes on a local disk and on S3 (moto), compaction, old single-file
catalogs, servers that ignore conditional writes, and repairs that must not write a stale view."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from helpers import assert_store_consistent

from tasks.check import check_store
from tasks.config import FeatureConfig, IngestConfig
from tasks.dataset import catalog as catalog_lib
from tasks.dataset.catalog import (
    CATALOG_DIR,
    CATALOG_FILE,
    STATUS_OK,
    CatalogRow,
    catalog_log,
    read_catalog,
    rows_to_table,
    write_catalog,
)
from tasks.dataset.repository import BatchResult, commit_batch, dataset_dir, prepare_dataset, read_stats
from tasks.dataset.shards import ShardWriter
from tasks.dataset.stats import FeatureStats, merge_all
from tasks.errors import StoreError
from tasks.store.store import Store, open_store

CONFIG = IngestConfig(features=FeatureConfig(block_size=6))  # 8 features a row: cheap shards
N_FEATURES = CONFIG.features.n_features


def synthetic_batch(store: Store, dataset_id: str, song_ids: list[str], seed: int) -> BatchResult:
    """A batch as a worker returns it: a real shard of random rows and one catalog row per song."""
    rng = np.random.default_rng(seed)
    rows = []
    with ShardWriter(store, dataset_dir(dataset_id), n_features=N_FEATURES) as writer:
        for song_id in song_ids:
            n_blocks = int(rng.integers(1, 5))
            offset = writer.add(rng.normal(size=(n_blocks, N_FEATURES)).astype(np.float32))
            rows.append(_row(song_id, n_blocks=n_blocks, offset=offset))
    rows = [CatalogRow(**{**row.__dict__, "shard": writer.shard}) for row in rows]
    return BatchResult(rows=rows, shard=writer.shard, audio_seconds=0.0, task_seconds=0.0, peak_rss_mb=0.0)


def _row(song_id: str, **values: Any) -> CatalogRow:
    defaults: dict[str, Any] = {
        "song_id": song_id, "source": f"/songs/{song_id}.mp3", "bytes": 100, "mtime": 1.0,
        "seconds": 1.0, "channels": 2, "n_blocks": 1, "shard": None, "offset": 0,
        "status": STATUS_OK, "error": None, "ingested_at": "2025-01-01T00:00:00+00:00",
    }  # fmt: skip
    return CatalogRow(**{**defaults, **values})


def _committer(store_url: str, dataset_id: str, worker: int, n_batches: int, env: dict[str, str]) -> int:
    """One process committing batches; songs overlap with the other processes' on purpose."""
    os.environ.update(env)
    import fsspec.config

    if env.get("FSSPEC_S3_ENDPOINT_URL"):
        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = env["FSSPEC_S3_ENDPOINT_URL"]
    store = open_store(store_url)
    added = 0
    for index in range(n_batches):
        songs = [f"song-{index:03d}-{part}" for part in range(2)] + [f"own-{worker}-{index:03d}"]
        added += len(
            commit_batch(store, dataset_id, synthetic_batch(store, dataset_id, songs, worker * 1000 + index))
        )
    return added


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_concurrent_commits_keep_every_song_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store_url = (
        str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_bucket") + "/store"
    )
    store = open_store(store_url)
    dataset_id = prepare_dataset(store, CONFIG)
    env = {key: value for key, value in os.environ.items() if key.startswith(("AWS_", "FSSPEC_"))}
    n_processes, n_batches = 3, 4
    context = multiprocessing.get_context("spawn")
    with context.Pool(n_processes) as pool:
        added = pool.starmap(
            _committer, [(store_url, dataset_id, worker, n_batches, env) for worker in range(n_processes)]
        )

    rows = read_catalog(open_store(store_url), dataset_dir(dataset_id))
    expected = {f"song-{i:03d}-{p}" for i in range(n_batches) for p in range(2)}
    expected |= {f"own-{w}-{i:03d}" for w in range(n_processes) for i in range(n_batches)}
    assert sorted(row.song_id for row in rows) == sorted(expected)  # every song once
    assert sum(added) == len(expected)
    versions = catalog_log(open_store(store_url), dataset_dir(dataset_id)).versions()
    assert versions == list(range(1, len(versions) + 1))  # one version per commit, none lost
    assert_store_consistent(store_url, dataset_id)
    assert check_store(open_store(store_url)) == []


def _append_unlocked(store_url: str, directory: str, worker: int) -> int:
    store = open_store(store_url)
    total = 0
    for index in range(10):
        total += len(
            catalog_lib.append_rows(store, directory, [_row(f"shared-{index}"), _row(f"w{worker}-{index}")])
        )
    return total


def test_appends_without_the_lock_never_commit_a_song_twice(tmp_path: Path) -> None:
    """The exclusive create of each version is the commit point: it holds even with no lock."""
    store_url = str(tmp_path / "store")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        added = pool.starmap(_append_unlocked, [(store_url, "ds", worker) for worker in range(3)])
    rows = read_catalog(open_store(store_url), "ds")
    assert sorted(row.song_id for row in rows) == sorted(
        [f"shared-{i}" for i in range(10)] + [f"w{w}-{i}" for w in range(3) for i in range(10)]
    )
    assert sum(added) == len(rows)


def test_commits_compact_into_snapshots_and_readers_see_one_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_lib, "COMPACT_SEGMENTS", 3)
    store_url = str(tmp_path / "store")
    store = open_store(store_url)
    dataset_id = prepare_dataset(store, CONFIG)
    other_process = catalog_lib.CatalogLog(store, dataset_dir(dataset_id))  # a reader that keeps up
    for index in range(8):
        commit_batch(store, dataset_id, synthetic_batch(store, dataset_id, [f"s{index}"], index))
        other_process.refresh()
        assert set(other_process.status) == {f"s{i}" for i in range(index + 1)}
    files = sorted(os.listdir(Path(store_url) / dataset_dir(dataset_id) / CATALOG_DIR))
    assert len(files) <= 4, files  # the snapshot and the segments after it
    assert [row.song_id for row in read_catalog(store, dataset_dir(dataset_id))] == [
        f"s{i}" for i in range(8)
    ]
    assert_store_consistent(store_url, dataset_id)
    assert check_store(store) == []


def test_a_single_file_catalog_of_an_older_store_is_read_and_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog_lib, "COMPACT_SEGMENTS", 2)
    store_url = str(tmp_path / "store")
    store = open_store(store_url)
    dataset_id = prepare_dataset(store, CONFIG)
    directory = dataset_dir(dataset_id)
    first = synthetic_batch(store, dataset_id, ["old-1", "old-2"], 1)
    # The layout before the log: catalog.parquet without the newer columns, stats.json listing shards.
    table = rows_to_table(first.rows).drop_columns(["warnings", "source_bytes"])
    pq.write_table(table, store.path(directory, CATALOG_FILE))
    stats = FeatureStats.from_npz(store.read_bytes(directory, first.shard + ".stats.npz"))
    store.write_json({**stats.to_json(), "shards": [first.shard]}, directory, "stats.json")

    assert [row.song_id for row in read_catalog(store, directory)] == ["old-1", "old-2"]
    for index in range(3):
        commit_batch(store, dataset_id, synthetic_batch(store, dataset_id, [f"new-{index}"], 10 + index))

    assert [row.song_id for row in read_catalog(store, directory)] == [
        "old-1",
        "old-2",
        "new-0",
        "new-1",
        "new-2",
    ]
    assert not store.exists(directory, CATALOG_FILE)  # compacted into the log
    assert_store_consistent(store_url, dataset_id)
    assert check_store(store) == []


def test_a_repair_never_writes_back_a_stale_view(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    dataset_id = prepare_dataset(store, CONFIG)
    directory = dataset_dir(dataset_id)
    commit_batch(store, dataset_id, synthetic_batch(store, dataset_id, ["a", "b"], 1))
    log = catalog_log(store, directory)
    log.refresh()
    seen, version = read_catalog(store, directory), log.version
    commit_batch(store, dataset_id, synthetic_batch(store, dataset_id, ["c"], 2))  # lands meanwhile

    with pytest.raises(StoreError, match="stale view"):
        write_catalog(store, directory, seen[:1], [], based_on=version)
    assert [row.song_id for row in read_catalog(store, directory)] == ["a", "b", "c"]


def test_a_lock_holder_that_outlives_the_expiry_keeps_it(tmp_path: Path) -> None:
    """stale_after is how long a holder may go *without renewing*, not how long it may hold.
    (1 s, renewed every 0.25 s: a busy machine may stall the renewing thread a few tenths.)"""
    store = open_store(str(tmp_path))
    held = threading.Event()
    release = threading.Event()
    renewals: list[int] = []

    def hold() -> None:
        with store.lock("model.lock", stale_after=1.0) as lock:
            held.set()
            release.wait(10)
            renewals.append(lock.renewals)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    started = time.monotonic()
    with pytest.raises(StoreError, match="timed out"), store.lock("model.lock", timeout=3.0, stale_after=1.0):
        pytest.fail("took a lock that its holder kept renewing")
    assert time.monotonic() - started >= 3.0  # well past stale_after: the holder renewed it
    release.set()
    holder.join(10)
    assert renewals and renewals[0] >= 3
    with store.lock("model.lock", timeout=3, stale_after=1.0):
        pass


def test_a_lost_lock_is_never_deleted_by_its_old_holder(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    with pytest.raises(StoreError, match="lost"), store.lock("x.lock", stale_after=60) as lock:
        # Another process broke it (this one froze past stale_after) and holds it now.
        other = {"host": "elsewhere", "pid": 1, "time": time.time(), "token": "theirs"}
        (tmp_path / "x.lock").write_text(json.dumps(other))
        with pytest.raises(StoreError, match="lost"):
            lock.ensure()
    assert json.loads((tmp_path / "x.lock").read_text())["token"] == "theirs"  # compare-and-delete


class IgnoresConditions(MemoryFileSystem):
    """An S3-compatible server that ignores If-None-Match: a conditional write overwrites."""

    protocol = "ignoring"

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        super().pipe_file(path, value, mode="overwrite", **kwargs)


def test_a_store_that_ignores_conditional_writes_is_refused() -> None:
    import fsspec

    fsspec.register_implementation("ignoring", IgnoresConditions, clobber=True)
    store = open_store(f"ignoring://bucket-{uuid.uuid4().hex[:8]}/store")
    with pytest.raises(StoreError, match="ignores conditional writes"), store.lock("x.lock"):
        pytest.fail("a lock without exclusion")
    with pytest.raises(StoreError, match="ignores conditional writes"):
        catalog_lib.append_rows(store, "ds", [_row("a")])


def test_workers_follow_the_cpu_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.runtime.cluster import default_workers, worker_memory_limit

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    import psutil

    monkeypatch.setattr(psutil.Process, "cpu_affinity", lambda self: [0])
    assert default_workers() == 1
    import distributed.system

    assert worker_memory_limit(2) == distributed.system.memory_limit() // 2


def test_cluster_threads_counts_the_clusters_worker_threads() -> None:
    """What the ingest flow sizes its batches by on an existing cluster: the cluster's worker
    threads (here 3 workers x 2), not this machine's cores."""
    from distributed import Client, LocalCluster

    from flows.runtime.cluster import cluster_threads

    with (
        LocalCluster(n_workers=3, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        assert cluster_threads(client) == 6


def test_commit_cost_does_not_read_the_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit reads only what changed since the last one: never the whole catalog."""
    store = open_store(str(tmp_path / "store"))
    dataset_id = prepare_dataset(store, CONFIG)
    for index in range(5):
        commit_batch(store, dataset_id, synthetic_batch(store, dataset_id, [f"s{index}"], index))
    reads: list[str] = []
    real = Store.read_bytes

    def counting(self: Store, *parts: str) -> bytes:
        reads.append("/".join(parts))
        return real(self, *parts)

    monkeypatch.setattr(Store, "read_bytes", counting)
    commit_batch(store, dataset_id, synthetic_batch(store, dataset_id, ["last"], 99))
    catalog_reads = [path for path in reads if CATALOG_DIR in path or path.endswith(CATALOG_FILE)]
    assert catalog_reads == [], catalog_reads
    stats = read_stats(store, dataset_id)
    rows = read_catalog(store, dataset_dir(dataset_id))
    assert stats.count == sum(row.n_blocks for row in rows)
    assert merge_all([], N_FEATURES).count == 0


def test_a_retried_commit_keeps_its_rows_and_its_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt committed its segment, then failed on the statistics: the retry (Prefect
    retries commit-batch) must neither drop the shard as a duplicate nor count it twice."""
    from tasks.dataset import repository as dataset_lib

    store_url = str(tmp_path / "store")
    store = open_store(store_url)
    dataset_id = prepare_dataset(store, CONFIG)
    commit_batch(store, dataset_id, synthetic_batch(store, dataset_id, ["before"], 0))
    batch = synthetic_batch(store, dataset_id, ["a", "b"], 1)

    def failing(*args: Any, **kwargs: Any) -> bool:
        raise OSError("injected: connection reset while writing stats.json")

    monkeypatch.setattr(dataset_lib, "_add_to_stats", failing)
    with pytest.raises(OSError, match="injected"):
        commit_batch(store, dataset_id, batch)
    monkeypatch.undo()

    again = commit_batch(store, dataset_id, batch)

    assert sorted(row.song_id for row in again) == ["a", "b"]
    assert store.exists(dataset_dir(dataset_id), batch.shard or "")
    assert_store_consistent(store_url, dataset_id)
    assert check_store(store) == []


def test_an_stft_dataset_reopens_with_the_block_size_it_ignores(tmp_path: Path) -> None:
    """stft leaves block_size out of the dataset id and its config.json: a second ingest with a
    non-default --block-size opens the same dataset, while a different hop is refused."""
    store = open_store(str(tmp_path / "store"))
    features = FeatureConfig.for_transform("stft", block_size=1024)
    dataset_id = prepare_dataset(store, IngestConfig(features=features))
    assert prepare_dataset(store, IngestConfig(features=features)) == dataset_id
    assert FeatureConfig.for_transform("stft") == features
    assert hash(FeatureConfig.for_transform("stft")) == hash(features)
    other_hop = FeatureConfig.for_transform("stft", hop_length=128)
    assert other_hop != features and other_hop.dataset_id != dataset_id
    assert FeatureConfig(block_size=1024) != FeatureConfig(block_size=2048)
