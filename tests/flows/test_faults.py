"""Injected faults leave the store consistent: every song once, catalog and shards agree,
statistics equal those of a clean run."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import psutil
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from helpers import assert_store_consistent, copy_songs, musicflow, run_cli, start_musicflow

from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import dataset_dir, read_stats
from tasks.store.store import open_store


class FlakyFileSystem(MemoryFileSystem):
    """An in-memory filesystem whose writes fail now and then (seeded), like a bad network."""

    protocol = "flaky"
    failure_rate = 0.0
    failures = 0
    _random = random.Random(0)

    def _maybe_fail(self, path: str) -> None:
        if self._random.random() < type(self).failure_rate:
            type(self).failures += 1
            raise OSError(f"injected write failure on {path}")

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if any(flag in mode for flag in "wax"):
            self._maybe_fail(path)
        return super()._open(path, mode, **kwargs)

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        self._maybe_fail(path)
        super().pipe_file(path, value, **kwargs)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("shard_format", ["zarr", "parquet"])
def test_intermittent_storage_failures_are_retried(
    tmp_path: Path, demo_songs: list[Path], shard_format: str
) -> None:
    from distributed import Client, LocalCluster
    from prefect import flow

    from flows import prefect_tasks
    from tasks.config import IngestConfig
    from tasks.dataset.repository import prepare_dataset
    from tasks.ingest.plan import make_batches, plan_ingest
    from tasks.ingest.sources import list_audio_files

    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    source = tmp_path / "songs"
    copy_songs(demo_songs[:4], source)
    config = IngestConfig(shard_format=shard_format)
    store_url = f"flaky://faults-{shard_format}-{os.getpid()}"
    ingest_batch = prefect_tasks.ingest_batch_task.with_options(retries=8, retry_delay_seconds=0)
    commit_batch = prefect_tasks.commit_batch_task.with_options(retries=8, retry_delay_seconds=0)

    @flow
    def flaky_ingest() -> str:
        # The ingest flow's own steps, on Dask worker threads in this process, where the flaky
        # filesystem is registered.
        store = open_store(store_url)
        dataset_id = prepare_dataset(store, config)
        plan = plan_ingest(list_audio_files(str(source)), [])
        FlakyFileSystem.failure_rate = 0.15
        for batch in make_batches(plan.todo, batch_bytes=1, min_batches=1):
            result = ingest_batch(batch, store_url, dataset_id, config, client=client)
            commit_batch(store_url, dataset_id, result)
        FlakyFileSystem.failure_rate = 0.0
        return dataset_id

    FlakyFileSystem.failures = 0
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,  # the flow's closure uses it: a flow parameter would be validated
    ):
        dataset_id = flaky_ingest()

    assert FlakyFileSystem.failures > 0, "no failure was injected"
    rows = read_catalog(open_store(store_url), dataset_dir(dataset_id))
    assert sorted(Path(row.source).name for row in rows) == sorted(song.name for song in demo_songs[:4])
    assert all(row.ok for row in rows)
    assert_store_consistent(store_url, dataset_id)
    clean_url = str(tmp_path / "clean")
    from flows.ingest import ingest

    ingest(source=str(source), store=clean_url, format=shard_format, workers=1, transform="rfft")
    flaky_stats, clean_stats = (
        read_stats(open_store(store_url), dataset_id),
        read_stats(open_store(clean_url), dataset_id),
    )
    assert flaky_stats.count == clean_stats.count
    np.testing.assert_allclose(flaky_stats.mean, clean_stats.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(flaky_stats.std, clean_stats.std, rtol=1e-5, atol=1e-5)


def _dask_worker_processes(parent: int) -> list[psutil.Process]:
    # Nannies start workers with multiprocessing's spawn: the worker is a child of a nanny... and the
    # nannies themselves are children of the flow process. Workers are the leaves running Python.
    # The workers' ffmpegs come and go while this looks: one that has ended is not a worker.
    workers: list[psutil.Process] = []
    try:
        children = psutil.Process(parent).children(recursive=True)
    except psutil.NoSuchProcess:  # the run has just ended
        return workers
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            if "python" in child.name().lower() and not child.children():
                workers.append(child)
    return workers


@pytest.mark.usefixtures("prefect_server")
def test_a_killed_dask_worker_is_replaced_and_its_batch_retried(tmp_path: Path) -> None:
    from tasks.audio.synth import write_demo_songs

    source, store = tmp_path / "songs", str(tmp_path / "store")
    songs = write_demo_songs(source, n_songs=10, seconds=(3.0, 5.0), seed=700)
    process = start_musicflow(
        *("ingest", str(source), "--store", store, "--workers", "2", "--batch-mb", "0.001", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and process.poll() is None:
        if list(Path(store).glob("datasets/*/catalog/*.parquet")):  # the first batch is committed
            workers = _dask_worker_processes(process.pid)
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=300)

    assert killed is not None, "no worker was killed: the run ended first"
    assert process.returncode == 0, stderr
    summary = json.loads(stdout)
    dataset_id = summary["dataset_id"]
    rows = read_catalog(open_store(store), dataset_dir(dataset_id))
    assert sorted(Path(row.source).name for row in rows) == sorted(song.name for song in songs)
    assert all(row.ok for row in rows)
    assert_store_consistent(store, dataset_id)


@pytest.mark.usefixtures("prefect_server")
def test_training_killed_mid_epoch_resumes(tmp_path: Path) -> None:
    from tasks.audio.synth import write_demo_songs

    source, store = tmp_path / "songs", str(tmp_path / "store")
    write_demo_songs(source, n_songs=4, seconds=(4.0, 6.0), seed=800)

    ingested = musicflow(
        "ingest",
        str(source),
        "--store",
        store,
        "--workers",
        "1",
        "--block-size",
        "512",
        "--sample-rate",
        "8000",
    )
    assert ingested.returncode == 0, ingested.stderr
    train = [
        "train",
        "--store",
        store,
        "--epochs",
        "10",
        "--hidden",
        "32",
        "--seq-len",
        "8",
        "--hop",
        "1",
        "--batch-size",
        "4",
    ]
    process = start_musicflow(*train, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_files: list[Path] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        state_files = list(Path(store).glob("models/*/checkpoints/state.json"))
        if state_files and json.loads(state_files[0].read_text())["epoch"] >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    process.kill()
    process.wait()
    assert state_files, "training wrote no checkpoint before it was killed"
    interrupted = json.loads(state_files[0].read_text())
    assert 2 <= interrupted["epoch"] < 10, "the kill did not land mid-run"

    resumed = musicflow(*train, "--json")

    assert resumed.returncode == 0, resumed.stderr
    card = json.loads(resumed.stdout)
    assert card["epochs"] == 10
    k = interrupted["epoch"]
    assert card["history"]["loss"][:k] == interrupted["history"]["loss"]
    assert len(card["history"]["val_loss"]) == 10


def test_a_batch_whose_worker_hangs_fails_within_its_limit(
    tmp_path: Path, demo_songs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stuck inside a batch (a store write that never returns) no longer holds the task run,
    and so the ingest run and its concurrency slot, forever: the wait is bounded by the batch's files.
    And the stuck worker is restarted: on a kept cluster (``musicflow serve``'s) of one worker thread,
    every later batch would wait out its limit behind it."""
    from flows import prefect_tasks
    from flows.runtime.cluster import dask_client
    from tasks.config import IngestConfig
    from tasks.ingest.sources import list_audio_files

    def hangs(*args: Any, **kwargs: Any) -> Any:
        time.sleep(600)

    monkeypatch.setattr(prefect_tasks.ingest_lib, "ingest_batch", hangs)  # a local function: sent by value
    monkeypatch.setattr(prefect_tasks, "BATCH_WAIT_MARGIN_S", 3.0)
    monkeypatch.setattr(prefect_tasks, "decode_timeout", lambda n_bytes: 0.5)
    copy_songs(demo_songs[:1], tmp_path / "songs")
    files = list_audio_files(str(tmp_path / "songs"))
    assert prefect_tasks.batch_wait_seconds(files) == pytest.approx(4.0)
    with dask_client(workers=1) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="did not finish within 4 s"):
            prefect_tasks.ingest_batch_task.fn(
                files, str(tmp_path / "store"), "dataset", IngestConfig(), client=client
            )
        assert time.monotonic() - started < 30

        # The next batch on the same one-thread cluster runs at once, on the restarted worker.
        monkeypatch.setattr(prefect_tasks.ingest_lib, "ingest_batch", lambda *args, **kwargs: "done")
        assert (
            prefect_tasks.ingest_batch_task.fn(
                files, str(tmp_path / "store"), "dataset", IngestConfig(), client=client
            )
            == "done"
        )


def _ingest_runs_of(store: str) -> list[Any]:
    """The ingest flow runs into ``store`` (newest first), from the Prefect API."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def fetch() -> list[Any]:
        async with get_client() as client:
            runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
            return [run for run in runs if run.parameters.get("store") == store]

    return asyncio.run(fetch())


def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest flow's batch and commit tasks with one immediate retry (3 with backoff otherwise)."""
    from flows import ingest as ingest_module
    from flows import prefect_tasks

    for name in ("ingest_batch_task", "commit_batch_task"):
        quick = getattr(prefect_tasks, name).with_options(retries=1, retry_delay_seconds=0)
        monkeypatch.setattr(ingest_module, name, quick)


@pytest.mark.usefixtures("prefect_server")
def test_a_disk_that_fills_up_mid_song_costs_no_song(
    tmp_path: Path,
    demo_songs: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 26: a store that fills up during ingest. No row blames a song, the command exits 1 with one
    line, the flow run is Failed, and once there is space again a plain re-run ingests every song.
    (On the previous code: every song caught by the full disk was a failed row, exit 0, Completed, and a
    re-run skipped them.)"""
    from distributed import LocalCluster

    from tasks.dataset import shards

    # Small chunks, each flushed at once, so the disk fills in a flush in the middle of a song
    # (``add_rows``). The cluster is threads of this process, so the workers see these settings.
    monkeypatch.setattr(shards, "CHUNK_BLOCKS", 16)
    monkeypatch.setattr(shards, "CHUNK_BYTES", 0)
    monkeypatch.setattr(shards, "FLUSH_CHUNKS", 1)
    _quick_retries(monkeypatch)
    source, store_dir, controls = tmp_path / "songs", tmp_path / "store", tmp_path / "faults.json"
    songs = copy_songs(demo_songs[:4], source)
    store = f"faulty://{store_dir}"
    monkeypatch.setenv("MUSICFLOW_FAULTS", str(controls))
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None
    ) as cluster:
        command = ("ingest", str(source), "--store", store, "--dask-address", cluster.scheduler_address)
        first = songs[0]
        songs[1:] = [path.rename(tmp_path / path.name) for path in songs[1:]]  # one song, for a start
        code, _, err = run_cli(capsys, *command, "--batch-mb", "0.001")
        assert code == 0, err
        used = sum(path.stat().st_size for path in store_dir.rglob("*") if path.is_file())
        for path in songs[1:]:
            path.rename(source / path.name)
        # Room for a quarter of a song's shard at most (a song is 250-500 rows, in chunks of 16 rows, 8 kB).
        controls.write_text(json.dumps({"enospc_after_bytes": used + 60_000, "usage_root": str(store_dir)}))

        code, out, err = run_cli(capsys, *command, "--batch-mb", "0.001")

        assert code == 1, out + err
        line = err.strip().splitlines()[-1]
        assert "3 songs not ingested: store write failed: [Errno 28] No space left on device; re-run" in line
        assert "not ingested" in out  # the summary, with each song left unrecorded
        store_rows = read_catalog(open_store(store), dataset_dir(_dataset_of(store_dir)))
        assert [Path(row.source).name for row in store_rows] == [first.name]  # no row blames a song
        assert all(row.ok for row in store_rows)
        assert _ingest_runs_of(store)[0].state.type.value == "FAILED"

        controls.write_text("{}")  # space again
        code, out, err = run_cli(capsys, *command)  # a plain re-run: no flag

    assert code == 0, out + err
    dataset_id = _dataset_of(store_dir)
    rows = read_catalog(open_store(store), dataset_dir(dataset_id))
    assert sorted(Path(row.source).name for row in rows) == sorted(song.name for song in demo_songs[:4])
    assert all(row.ok for row in rows)
    assert_store_consistent(store, dataset_id)
    assert _ingest_runs_of(store)[0].state.type.value == "COMPLETED"


def _dataset_of(store_dir: Path) -> str:
    (dataset,) = (store_dir / "datasets").iterdir()
    return dataset.name


@pytest.mark.usefixtures("prefect_server")
def test_a_batch_stuck_in_a_store_write_fails_within_its_timeout(
    tmp_path: Path,
    demo_songs: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 26, the hang test: a worker stuck forever in a store write fails its batch within the batch
    timeout (``--batch-timeout``), as the machinery's fault (the songs unrecorded, exit 1), so the run ends
    and frees the deployment's one-at-a-time slot; the next run ingests every song."""
    _quick_retries(monkeypatch)
    source, store_dir, controls = tmp_path / "songs", tmp_path / "store", tmp_path / "faults.json"
    copy_songs(demo_songs[:1], source)
    store = f"faulty://{store_dir}"
    # Shard writes hang for ten minutes: the worker process is stuck, not the run.
    controls.write_text(json.dumps({"hang_s": 600, "hang_match": "/shards/"}))
    monkeypatch.setenv("MUSICFLOW_FAULTS", str(controls))
    command = ("ingest", str(source), "--store", store, "--workers", "1")

    started = time.monotonic()
    code, out, err = run_cli(capsys, *command, "--batch-timeout", "3")
    took = time.monotonic() - started

    assert code == 1, out + err
    assert "1 song not ingested: TimeoutError: batch of 1 files did not finish within 3 s" in err
    assert took < 60, f"the stuck run took {took:.0f} s"  # 2 tries of 3 s, and the cluster closed
    assert not list(store_dir.glob("datasets/*/catalog/*.parquet")), "a song was recorded"
    assert _ingest_runs_of(store)[0].state.type.value == "FAILED"

    controls.write_text("{}")
    code, out, err = run_cli(capsys, *command)

    assert code == 0, out + err
    rows = read_catalog(open_store(store), dataset_dir(_dataset_of(store_dir)))
    assert [Path(row.source).name for row in rows] == [demo_songs[0].name]
    assert all(row.ok for row in rows)
