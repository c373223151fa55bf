"""``musicflow check``: catalog <-> shards <-> stats consistency, reported and repaired."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import assert_store_consistent, musicflow

from tasks.check import check_store
from tasks.config import IngestConfig
from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import STATS_FILE, commit_batch, dataset_dir, hold_ingest, prepare_dataset
from tasks.dataset.shards import stats_name
from tasks.dataset.stats import FeatureStats
from tasks.errors import StoreError
from tasks.ingest.plan import plan_ingest
from tasks.ingest.sources import list_audio_files
from tasks.ingest.worker import ingest_batch
from tasks.store.store import open_store


def ingest_plainly(source: Path, store_url: str) -> str:
    """Ingest without Prefect or Dask: one batch per song."""
    store = open_store(store_url)
    config = IngestConfig()
    dataset_id = prepare_dataset(store, config)
    plan = plan_ingest(list_audio_files(str(source)), read_catalog(store, dataset_dir(dataset_id)))
    for item in plan.todo:
        commit_batch(
            store, dataset_id, ingest_batch([item], store_url=store_url, dataset_id=dataset_id, config=config)
        )
    return dataset_id


@pytest.fixture
def ingested(tmp_path: Path, demo_songs: list[Path]) -> tuple[str, str, Path]:
    source = tmp_path / "songs"
    source.mkdir()
    for song in demo_songs[:3]:
        shutil.copy(song, source / song.name)
    store_url = str(tmp_path / "store")
    return store_url, ingest_plainly(source, store_url), source


def kinds(problems: list) -> list[str]:
    return sorted(problem.kind for problem in problems)


def test_a_clean_store_has_no_problem(ingested: tuple[str, str, Path]) -> None:
    store_url, _, _ = ingested
    assert check_store(open_store(store_url)) == []


def test_missing_shard_is_requeued_and_reingested(ingested: tuple[str, str, Path]) -> None:
    store_url, dataset_id, source = ingested
    store = open_store(store_url)
    lost = read_catalog(store, dataset_dir(dataset_id))[0]
    shutil.rmtree(Path(store_url) / dataset_dir(dataset_id) / lost.shard)

    found = check_store(store)
    assert kinds(found) == ["dataset-stats", "missing-shard"]
    assert not any(problem.repaired for problem in found)

    repaired = check_store(store, repair=True)
    assert all(problem.repaired for problem in repaired)
    assert lost.song_id not in {row.song_id for row in read_catalog(store, dataset_dir(dataset_id))}
    assert check_store(store) == []
    assert_store_consistent(store_url, dataset_id)

    ingest_plainly(source, store_url)
    assert lost.song_id in {row.song_id for row in read_catalog(store, dataset_dir(dataset_id))}
    assert check_store(store) == []
    assert_store_consistent(store_url, dataset_id)


def _age(path: Path, seconds: float) -> None:
    """Make every file under ``path`` last written ``seconds`` ago."""
    then = time.time() - seconds
    for item in [path, *path.rglob("*")]:
        os.utime(item, (then, then))


def test_old_orphans_are_removed_young_ones_kept(ingested: tuple[str, str, Path]) -> None:
    """An orphan's age is its last write by the store's clock, not the time in its name: a shard
    whose name says 2000 but that is still being written is kept."""
    store_url, dataset_id, _ = ingested
    shards = Path(store_url) / dataset_dir(dataset_id) / "shards"
    some_shard = next(shards.glob("*.zarr"))
    shutil.copytree(some_shard, shards / "29990101T000000-0123456789ab.zarr")
    _age(shards / "29990101T000000-0123456789ab.zarr", 2 * 3600)  # its writer's clock was off
    shutil.copytree(some_shard, shards / "20000101T000000-0123456789ab.zarr")  # written just now

    found = check_store(open_store(store_url), repair=True)

    assert [(problem.kind, Path(problem.location).name) for problem in found] == [
        ("orphan", "29990101T000000-0123456789ab.zarr")
    ]
    assert not (shards / "29990101T000000-0123456789ab.zarr").exists()
    assert (shards / "20000101T000000-0123456789ab.zarr").exists()


def test_repair_leaves_orphans_alone_while_an_ingest_is_live(
    ingested: tuple[str, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard no catalog row references, however old, is kept while an ingest run holds its
    ingest lock (one of its batches may still commit it); once the run is gone, or its lock went
    unrenewed past the expiry (a killed run), it is removed, and so is the dead run's lock file."""
    monkeypatch.setenv("MUSICFLOW_LOCK_EXPIRY_S", "0.5")
    store_url, dataset_id, _ = ingested
    store = open_store(store_url)
    shards = Path(store_url) / dataset_dir(dataset_id) / "shards"
    orphan = shards / "20000101T000000-0123456789ab.zarr"
    shutil.copytree(next(shards.glob("*.zarr")), orphan)
    _age(orphan, 2 * 3600)

    with hold_ingest(store, dataset_id):
        time.sleep(1.0)  # past the expiry: only the lock's renewals keep it live
        found = check_store(store, repair=True)
        assert [(problem.kind, problem.repaired) for problem in found] == [("orphan", False)]
        assert "kept while 1 ingest run(s) are in progress" in found[0].detail
        assert orphan.exists()

    dead = Path(store_url) / dataset_dir(dataset_id) / "ingests" / "0123.lock"
    dead.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "dead"}))
    _age(dead, 5)  # a killed run's: unrenewed past the expiry
    found = check_store(store, repair=True)
    assert [(problem.kind, problem.repaired) for problem in found] == [("orphan", True)]
    assert not orphan.exists() and not dead.exists()


def test_a_batch_whose_shard_was_removed_is_not_committed(ingested: tuple[str, str, Path]) -> None:
    """A run frozen past its ingest lock's expiry, whose uncommitted shard check --repair removed
    meanwhile, wakes and commits: the commit is refused, and the catalog never points at the gone
    shard."""
    store_url, dataset_id, source = ingested
    store = open_store(store_url)
    directory = dataset_dir(dataset_id)
    extra = source / "extra.mp3"
    shutil.copy(next(source.glob("*.mp3")), extra)
    with open(extra, "ab") as handle:
        handle.write(b"\0" * 64)  # other bytes: another song
    item = next(item for item in list_audio_files(str(source)) if item.uri.endswith("extra.mp3"))
    result = ingest_batch([item], store_url=store_url, dataset_id=dataset_id, config=IngestConfig())
    assert result.shard
    store.rm(directory, result.shard)  # what repair does to an orphan
    before = read_catalog(store, directory)

    with pytest.raises(StoreError, match="is gone before its commit"):
        commit_batch(store, dataset_id, result)
    assert read_catalog(store, directory) == before


def test_wrong_statistics_are_rebuilt(ingested: tuple[str, str, Path]) -> None:
    store_url, dataset_id, _ = ingested
    store = open_store(store_url)
    directory = dataset_dir(dataset_id)
    stats = store.read_json(directory, STATS_FILE)
    stats["count"] += 7
    store.write_json(stats, directory, STATS_FILE)
    shard = read_catalog(store, directory)[0].shard
    store.write_bytes(FeatureStats.empty(11026).to_npz(), directory, stats_name(shard))

    assert kinds(check_store(store)) == ["dataset-stats", "shard-stats"]
    check_store(store, repair=True)
    assert check_store(store) == []
    assert_store_consistent(store_url, dataset_id)


def test_model_weights_that_do_not_match_the_card(ingested: tuple[str, str, Path]) -> None:
    store_url, dataset_id, _ = ingested
    model = Path(store_url) / "models" / "m1"
    model.mkdir(parents=True)
    (model / "model.keras").write_bytes(b"other weights")
    (model / "card.json").write_text(json.dumps({"dataset_id": dataset_id, "weights_sha256": "0" * 64}))
    assert kinds(check_store(open_store(store_url))) == ["weights-hash"]


def test_cli_exit_codes(ingested: tuple[str, str, Path]) -> None:
    store_url, dataset_id, _ = ingested

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return musicflow("check", "--store", store_url, *args, timeout=120)

    assert check().returncode == 0
    (Path(store_url) / dataset_dir(dataset_id) / STATS_FILE).unlink()
    failed = check("--json")
    assert failed.returncode == 1
    assert [problem["kind"] for problem in json.loads(failed.stdout)["problems"]] == ["dataset-stats"]
    assert check("--repair").returncode == 1
    assert check().returncode == 0


def _versions(store_url: str, dataset_id: str) -> list[Path]:
    return sorted((Path(store_url) / dataset_dir(dataset_id) / "catalog").glob("*.parquet"))


def test_a_crash_that_cut_the_newest_catalog_version_is_repaired_and_ingest_goes_on(
    ingested: tuple[str, str, Path],
) -> None:
    """A power loss before a commit's data reached the disk leaves its catalog version zero-length
    (the name kept, the data lost): every read fails until ``check --repair`` sets it aside; the
    songs of that batch are then decoded again by the next ingest."""
    store_url, dataset_id, source = ingested
    store = open_store(store_url)
    songs = {row.song_id for row in read_catalog(store, dataset_dir(dataset_id))}
    newest = _versions(store_url, dataset_id)[-1]
    newest.write_bytes(b"")

    with pytest.raises(StoreError, match=r"unreadable .*check --repair"):
        read_catalog(store, dataset_dir(dataset_id))
    found = check_store(store)
    assert kinds(found) == ["unreadable-catalog"] and not found[0].repaired
    assert newest.name in found[0].location

    repaired = check_store(store, repair=True)
    # the statistics counted the lost batch's songs: rebuilt from what the catalog still holds
    assert kinds(repaired) == ["dataset-stats", "unreadable-catalog"]
    assert all(problem.repaired for problem in repaired)
    assert not newest.exists() and list(newest.parent.glob(f"{newest.name}.unreadable-*"))
    assert len(read_catalog(store, dataset_dir(dataset_id))) == len(songs) - 1
    assert check_store(store) == []

    ingest_plainly(source, store_url)
    assert {row.song_id for row in read_catalog(store, dataset_dir(dataset_id))} == songs
    assert check_store(store) == []


def test_an_unreadable_version_before_readable_ones_is_reported_not_repaired(
    ingested: tuple[str, str, Path],
) -> None:
    store_url, dataset_id, _ = ingested
    middle = _versions(store_url, dataset_id)[-2]
    middle.write_bytes(middle.read_bytes()[:10])
    found = check_store(open_store(store_url), repair=True)
    assert kinds(found) == ["unreadable-catalog"] and not found[0].repaired
    assert middle.exists()
