"""The ingest flow on what users have: one folder holding every kind of bad or odd file, a batch
whose task raises, and a one-hour song under a worker memory limit."""

from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_store_consistent, musicflow, write_odd_files

import flows.ingest as ingest_flow
from flows.ingest import ingest
from tasks.config import FeatureConfig
from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import dataset_dir
from tasks.features.transforms import get_transform
from tasks.store.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_server")


class _NoCluster:
    def __enter__(self) -> Any:
        raise AssertionError("a Dask cluster was started for a run with nothing to ingest")

    def __exit__(self, *exc_info: object) -> None:
        pass


@pytest.mark.timeout(400)
def test_every_odd_file_in_one_folder_in_one_run(
    tmp_path: Path, demo_songs: list[Path], long_mp3: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, store = tmp_path / "songs", str(tmp_path / "store")
    outcomes = write_odd_files(source, demo_songs, long_mp3)
    victim = source / "deleted-mid-run.mp3"
    real_make_batches = ingest_flow.make_batches

    def delete_after_listing(*args: Any, **kwargs: Any) -> Any:
        victim.unlink(missing_ok=True)  # listed by the plan, gone before a worker opens it
        return real_make_batches(*args, **kwargs)

    monkeypatch.setattr(ingest_flow, "make_batches", delete_after_listing)

    state = ingest(source=str(source), store=store, workers=2, batch_mb=0.05, return_state=True)

    assert state.is_completed()
    summary = state.result()
    rows = read_catalog(open_store(store), dataset_dir(summary["dataset_id"]))
    names = [os.path.basename(row.source) for row in rows]
    assert sorted(names) == sorted(name for name, (kind, _) in outcomes.items() if kind != "duplicate")
    assert summary["songs_listed"] == len(outcomes)
    assert summary["songs_skipped"] == 1  # the copy: same bytes as plain.mp3
    by_name = dict(zip(names, rows, strict=True))
    for name, (kind, fragment) in outcomes.items():
        if kind == "duplicate":
            continue
        row = by_name[name]
        if kind == "failed":
            assert not row.ok and fragment in (row.error or ""), (name, row.error)
        else:
            assert row.ok, (name, row.error)
            assert (row.warnings is not None) == (kind == "warned"), (name, row.warnings)
            assert fragment in (row.warnings or "")
    assert summary["songs_ok"] == sum(kind in ("ok", "warned") for kind, _ in outcomes.values())
    assert {Path(item["source"]).name for item in summary["warnings"]} == {"corrupted-frames.mp3"}
    assert_store_consistent(store, summary["dataset_id"])
    checked = musicflow("check", "--store", store)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Again: nothing new, so stat checks only; no Dask cluster, nothing read (the FIFO would block).
    monkeypatch.setattr(ingest_flow, "dask_client", lambda **options: _NoCluster())
    again = ingest(source=str(source), store=store, workers=2)
    assert (again["songs_ok"], again["songs_failed"]) == (0, 0)
    assert again["songs_skipped"] == len(outcomes) - 1  # all but the deleted one (gone, not listed)


@pytest.mark.timeout(300)
def test_a_batch_whose_task_raises_is_retried_file_by_file(
    tmp_path: Path, demo_songs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that keeps failing (not for a song's content: the worker records those itself) is
    retried file by file; the other files are committed, and the one that still fails is left
    unrecorded, not a failed row: the run fails with one line, and a plain re-run ingests it."""
    from distributed import LocalCluster

    from flows import prefect_tasks
    from tasks.errors import InfrastructureError
    from tasks.ingest import worker as ingest_lib

    source, store = tmp_path / "songs", str(tmp_path / "store")
    source.mkdir()
    for song in demo_songs[:4]:
        os.link(song, source / song.name)
    poison = demo_songs[1].name
    real_batch = ingest_lib.ingest_batch
    lost = {"worker": True}

    def failing_batch(files: list[Any], **kwargs: Any) -> Any:
        if lost["worker"] and any(item.uri.endswith(poison) for item in files):
            raise RuntimeError(f"worker lost while writing a batch with {poison}")
        return real_batch(files, **kwargs)

    # Threads in this process (so the patch reaches them), retries without waiting.
    monkeypatch.setattr(ingest_lib, "ingest_batch", failing_batch)
    monkeypatch.setattr(prefect_tasks.ingest_batch_task, "retry_delay_seconds", [0, 0, 0])
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:  # fmt: skip
        options = {"source": str(source), "store": store, "dask_address": cluster.scheduler_address}
        state = ingest(**options, workers=1, batch_mb=1024, return_state=True)

        assert state.is_failed()
        with pytest.raises(InfrastructureError) as raised:
            state.result()
        reason = f"RuntimeError: worker lost while writing a batch with {poison}"
        assert str(raised.value) == f"1 song not ingested: {reason}; re-run to retry"
        summary = raised.value.summary
        assert summary is not None
        rows = read_catalog(open_store(store), dataset_dir(summary["dataset_id"]))
        assert sorted(Path(row.source).name for row in rows) == sorted(
            song.name for song in demo_songs[:4] if song.name != poison
        )
        assert all(row.ok for row in rows)
        assert summary["songs_ok"] == 3 and summary["songs_failed"] == 0
        assert [Path(item["source"]).name for item in summary["not_ingested"]] == [poison]
        assert_store_consistent(store, summary["dataset_id"])

        lost["worker"] = False
        again = ingest(**options, workers=1)  # a plain re-run

    assert again["songs_ok"] == 1 and again["songs_skipped"] == 3
    rows = read_catalog(open_store(store), dataset_dir(summary["dataset_id"]))
    assert sorted(Path(row.source).name for row in rows) == sorted(song.name for song in demo_songs[:4])
    assert all(row.ok for row in rows)


def _write_hour(path: Path, *, rate: int = 4000) -> None:
    """One hour of 8-bit mono at 4 kHz (14 MB): ffmpeg resamples it to 44.1 kHz."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(rate)
        for minute in range(60):
            t = (np.arange(rate * 60) + minute * rate * 60) / rate
            tone = 0.5 * np.sin(2 * np.pi * (220 + 5 * minute) * t)
            out.writeframes(((tone + 1) * 127.5).astype(np.uint8).tobytes())


@pytest.mark.timeout(300)
def test_a_one_hour_song_under_a_worker_memory_limit(tmp_path: Path, demo_songs: list[Path]) -> None:
    """Decoded whole, the hour would need ~2.5 GB (samples, blocks, features, float64 stats); in
    chunks, one worker with a 1 GiB limit (Dask kills it at 95%) ingests it within a few MB of
    what a 5-second song took on the same worker."""
    from distributed import LocalCluster

    short, hour, store = tmp_path / "short", tmp_path / "hour", str(tmp_path / "store")
    short.mkdir()
    hour.mkdir()
    os.link(demo_songs[0], short / demo_songs[0].name)
    _write_hour(hour / "hour.wav")
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, memory_limit="1GiB", dashboard_address=None
    ) as cluster:
        first = ingest(source=str(short), store=store, dask_address=cluster.scheduler_address)
        summary = ingest(source=str(hour), store=store, dask_address=cluster.scheduler_address)

    assert first["songs_ok"] == 1 and summary["songs_ok"] == 1, summary["failures"]
    assert summary["audio_seconds"] == pytest.approx(3600.0, abs=0.5)
    rows = read_catalog(open_store(store), dataset_dir(summary["dataset_id"]))
    # The default transform's rows for one hour at its sample rate (stft: 310 079 frames of 11.6 ms).
    features = FeatureConfig.for_transform()
    assert rows[-1].n_blocks == get_transform(features).n_frames(3600 * features.sample_rate)
    # The worker's own high-water mark (VmHWM) after the hour, against after the short song.
    growth = summary["peak_worker_rss_mb"] - first["peak_worker_rss_mb"]
    assert growth < 64, (first["peak_worker_rss_mb"], summary["peak_worker_rss_mb"])
    assert_store_consistent(store, summary["dataset_id"])
