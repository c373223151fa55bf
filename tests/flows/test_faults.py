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
from helpers import assert_store_consistent, copy_songs, musicflow, start_musicflow

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
    and so the ingest run and its concurrency slot, forever: the wait is bounded by the batch's files."""
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
