"""The same ingest on an external Dask cluster (a scheduler and two workers as separate
processes) with the store in S3 equals a LocalCluster run, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from helpers import ROOT, assert_store_consistent, copy_songs, musicflow

from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import dataset_dir
from tasks.dataset.shards import read_blocks
from tasks.store.store import open_store

DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture
def dask_cluster(tmp_path: Path, s3_endpoint: str, prefect_server: str) -> Iterator[str]:
    """``dask scheduler`` + two ``dask worker`` processes on 127.0.0.1; yields the scheduler address.

    Started after the S3 fixture so the workers inherit its variables; their Prefect API is an
    address where nothing answers, since a worker runs plain functions and never talks to Prefect.
    """
    scheduler_file = tmp_path / "scheduler.json"
    common = {
        "cwd": ROOT,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "env": {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
    }
    processes = [
        subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            **common,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            processes.append(
                subprocess.Popen(
                    [
                        DASK,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],
                    **common,
                )
            )
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def test_external_cluster_with_s3_store_equals_local_cluster(
    tmp_path: Path, demo_songs: list[Path], s3_bucket: str, dask_cluster: str
) -> None:
    source = tmp_path / "songs"
    copy_songs(demo_songs[:4], source)
    remote_store, local_store = f"{s3_bucket}/store", str(tmp_path / "local")

    def ingest(*args: str) -> dict:
        result = musicflow("ingest", str(source), *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    remote = ingest("--store", remote_store, "--dask-address", dask_cluster, "--batch-mb", "0.001")
    with Client(dask_cluster) as client:
        ran = client.run(lambda: sorted({name.split(".")[0] for name in sys.modules} & {"prefect", "tasks"}))
    assert list(ran.values()) == [["tasks"], ["tasks"]], ran  # both workers ran batches, without Prefect
    local = ingest("--store", local_store, "--workers", "2")

    assert remote["songs_ok"] == local["songs_ok"] == 4
    assert remote["dataset_id"] == local["dataset_id"]
    directory = dataset_dir(remote["dataset_id"])
    remote_rows = {row.song_id: row for row in read_catalog(open_store(remote_store), directory)}
    local_rows = {row.song_id: row for row in read_catalog(open_store(local_store), directory)}
    assert set(remote_rows) == set(local_rows)
    for song_id, row in local_rows.items():
        twin = remote_rows[song_id]
        ours = read_blocks(
            open_store(local_store), directory, row.shard, offset=row.offset, n_blocks=row.n_blocks
        )
        theirs = read_blocks(
            open_store(remote_store), directory, twin.shard, offset=twin.offset, n_blocks=twin.n_blocks
        )
        np.testing.assert_array_equal(ours, theirs)
    assert_store_consistent(remote_store, remote["dataset_id"])
