"""Two ingest runs on the same store at the same time: no lost or duplicated rows, exact stats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import assert_store_consistent, start_musicflow

from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import dataset_dir
from tasks.store.store import StoreError, machine_id, open_store


def test_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def hold() -> None:
        with store.lock("x.lock"):
            order.append("first in")
            inside.set()
            release.wait(5)
            order.append("first out")

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(5)
    with pytest.raises(StoreError, match=r"x\.lock"), store.lock("x.lock", timeout=0.2):
        pass
    release.set()
    with store.lock("x.lock", timeout=5):
        order.append("second in")
    holder.join()
    assert order == ["first in", "first out", "second in"]


def test_lock_of_a_dead_process_is_broken(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket
    import time

    stale = {
        "host": socket.gethostname(),
        "pid": int(dead.stdout),
        "machine": machine_id(),  # this machine and pid namespace: its pids can be checked
        "since": time.time(),
        "token": "x",
    }
    (tmp_path / "x.lock").write_text(json.dumps(stale))
    with store.lock("x.lock", timeout=2):
        assert json.loads((tmp_path / "x.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "x.lock").exists()


@pytest.mark.usefixtures("prefect_server")
def test_two_runs_at_once_commit_every_song_once(tmp_path: Path) -> None:
    from tasks.audio.synth import write_demo_songs

    source, store = tmp_path / "songs", str(tmp_path / "store")
    songs = write_demo_songs(source, n_songs=8, seconds=(2.0, 4.0), seed=900)
    command = ["ingest", str(source), "--store", store, "--workers", "1", "--batch-mb", "0.001", "--json"]
    runs = [
        start_musicflow(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]

    for run, (_, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr
    summaries = [json.loads(stdout) for stdout, _ in outputs]
    assert sum(summary["songs_ok"] for summary in summaries) == len(songs)
    dataset_id = summaries[0]["dataset_id"]
    rows = read_catalog(open_store(store), dataset_dir(dataset_id))
    assert sorted(Path(row.source).name for row in rows) == sorted(song.name for song in songs)
    assert_store_consistent(store, dataset_id)


def test_overlapping_batches_keep_stats_exact(tmp_path: Path, demo_songs: list[Path]) -> None:
    from tasks.config import IngestConfig
    from tasks.dataset.repository import commit_batch, prepare_dataset
    from tasks.ingest.plan import hash_files
    from tasks.ingest.sources import list_audio_files
    from tasks.ingest.worker import ingest_batch

    store_url = str(tmp_path / "store")
    store = open_store(store_url)
    config = IngestConfig()
    dataset_id = prepare_dataset(store, config)
    files = hash_files(list_audio_files(str(demo_songs[0].parent)))[:3]
    first = ingest_batch(files[:2], store_url=store_url, dataset_id=dataset_id, config=config)
    second = ingest_batch(files[1:], store_url=store_url, dataset_id=dataset_id, config=config)

    assert len(commit_batch(store, dataset_id, first)) == 2
    added = commit_batch(store, dataset_id, second)

    assert [row.song_id for row in added] == [files[2].song_id]
    assert_store_consistent(store_url, dataset_id)
