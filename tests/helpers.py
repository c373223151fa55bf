"""Helpers shared by the flow and CLI tests: bad input files and store consistency checks."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from musicflow.config import IngestConfig
from tasks import prefect_tasks
from tasks.audio import encode_audio
from tasks.catalog import read_catalog
from tasks.dataset import commit_batch, dataset_dir, read_stats
from tasks.ingest import ingest_batch, make_batches
from tasks.shards import read_blocks
from tasks.stats import FeatureStats, merge_all
from tasks.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def copy_songs(songs: list[Path], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(song, directory / song.name)) for song in songs]


def write_bad_inputs(directory: Path, long_song: Path) -> dict[str, str]:
    """Write each kind of bad input; returns ``{file name: expected error fragment}``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "empty.mp3").write_bytes(b"")
    (directory / "notes.mp3").write_text("this is not audio\n" * 20)
    data = long_song.read_bytes()
    (directory / "truncated.mp3").write_bytes(data[: int(len(data) * 0.4)])
    (directory / "silence.mp3").write_bytes(encode_audio(np.zeros(44100 * 2, np.float32), sample_rate=44100))
    tone = 0.5 * np.sin(np.arange(4410) / 5.0).astype(np.float32)
    (directory / "short.wav").write_bytes(encode_audio(tone, sample_rate=44100, format="wav"))
    return {
        "empty.mp3": "empty",
        "notes.mp3": "",
        "truncated.mp3": "truncated",
        "silence.mp3": "silent",
        "short.wav": "too short",
    }


def assert_store_consistent(store_url: str, dataset_id: str) -> None:
    """Every song once; every ok row readable from a shard; stats equal a recomputation."""
    store = open_store(store_url)
    directory = dataset_dir(dataset_id)
    rows = read_catalog(store, directory)
    ids = [row.song_id for row in rows]
    assert len(ids) == len(set(ids)), "a song is in the catalog twice"
    recomputed = []
    for row in rows:
        if row.ok:
            assert row.shard and store.exists(directory, row.shard), f"missing shard {row.shard}"
            blocks = read_blocks(store, directory, row.shard, offset=row.offset, n_blocks=row.n_blocks)
            assert blocks.shape[0] == row.n_blocks
            assert np.isfinite(blocks).all()
            recomputed.append(FeatureStats.from_features(blocks))
        else:
            assert row.shard is None and row.error
    stats = read_stats(store, dataset_id)
    expected = merge_all(recomputed, stats.n_features)
    assert stats.count == expected.count == sum(row.n_blocks for row in rows if row.ok)
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.std, expected.std, rtol=1e-5, atol=1e-5)


def ingest_direct(source: str | Path, store_url: str, config: IngestConfig) -> str:
    """Ingest without Prefect or Dask (the flow's steps, in this process); returns the dataset id."""
    dataset_id, plan = prefect_tasks.plan_ingest.fn(str(source), store_url, config)
    store = open_store(store_url)
    for batch in make_batches(plan.todo, batch_bytes=int(config.batch_mb * 2**20)):
        result = ingest_batch(batch, store_url=store_url, dataset_id=dataset_id, config=config)
        commit_batch(store, dataset_id, result)
    return dataset_id


def write_periodic_songs(
    directory: Path, *, n_songs: int, seconds: float, block_size: int, sample_rate: int = 44100
) -> list[Path]:
    """WAV songs that repeat a 4-block pattern of tones (one tone per block, a different set per
    song): easy to predict, so a small model's loss must fall well below the mean-block baseline."""
    directory.mkdir(parents=True, exist_ok=True)
    n = int(seconds * sample_rate)
    t = np.arange(block_size) / sample_rate
    paths = []
    for song in range(n_songs):
        freqs = [220.0 * 2 ** ((song + 3 * step) / 12) for step in range(4)]
        pattern = np.concatenate([0.5 * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)
        audio = np.tile(pattern, n // pattern.size + 1)[:n]
        path = directory / f"periodic-{song:02d}.wav"
        path.write_bytes(encode_audio(audio, sample_rate=sample_rate, format="wav"))
        paths.append(path)
    return paths


def write_periodic_music(
    directory: Path, *, n_songs: int, seconds: float, sample_rate: int = 22050
) -> list[Path]:
    """WAV songs that repeat a one-second bar: four decaying notes with harmonics (a different
    melody per song) over a kick on every beat. Music a small spectral model can learn in seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    beat = sample_rate // 4
    t = np.arange(beat) / sample_rate
    paths = []
    for song in range(n_songs):
        bar = np.zeros(4 * beat, np.float32)
        for step in range(4):
            freq = 220.0 * 2 ** (((song * 5 + step * (3 + song)) % 12) / 12)
            note = sum(np.sin(2 * np.pi * freq * k * t) / k for k in (1, 2, 3)) * np.exp(-6 * t)
            kick = np.sin(2 * np.pi * (50 + 100 * np.exp(-30 * t)) * t) * np.exp(-20 * t)
            bar[step * beat : (step + 1) * beat] = 0.25 * note + 0.4 * kick
        n = int(seconds * sample_rate)
        audio = np.tile(bar, n // bar.size + 1)[:n]
        path = directory / f"music-{song:02d}.wav"
        path.write_bytes(encode_audio(audio, sample_rate=sample_rate, format="wav"))
        paths.append(path)
    return paths


def musicflow(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``musicflow ARGS`` as a subprocess, with this process's environment (the test server's
    PREFECT_API_URL when the fixture is on) updated by ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "musicflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def flow_run_artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The keyed artifacts of a flow run, by key, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def fetch() -> dict[str, Any]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
            return {artifact.key: artifact for artifact in found if artifact.key}

    return asyncio.run(fetch())


def artifact_table(artifact: Any) -> list[dict[str, Any]]:
    """The rows of a table artifact (the API gives its data as a JSON string or as a list)."""
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


_THREADS_SCRIPT = """
import json, os, sys
def threads():
    return set(os.listdir("/proc/self/task"))
exec(sys.argv[1])
before = threads()
exec(sys.argv[2])
print(json.dumps(sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in threads() - before)))
"""


def native_threads_started_by(setup: str, action: str) -> list[str]:
    """Names of the OS threads that running ``action`` (Python source, after ``setup``) starts
    in a fresh interpreter and leaves alive. Arrow's pool threads that are alive at exit make
    the process abort now and then ("terminate called without an active exception")."""
    result = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT, setup, action],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    names: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return names


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """``musicflow ARGS`` in this process (argument checks happen before any flow starts)."""
    from musicflow.cli import main

    capsys.readouterr()
    environ = dict(os.environ)  # the CLI quiets Prefect's console logging through the environment
    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(environ)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
