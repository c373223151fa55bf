"""Ingest at scale: commit cost against catalog size, a worker's memory against song length,
and (with ``--songs``) orchestration overhead on many short songs.

Run from the repository root::

    .venv/bin/python benchmarks/bench_scale.py [--catalog-sizes 1000 100000] [--commits 30]
                                               [--songs 0] [--workers 2] [--workdir DIR] [--quick]

Measured in one run:

- commit time per batch (``tasks.dataset.repository.commit_batch``: lock, catalog segment,
  statistics) of 10-song batches with real shards of 11026 features, into a
  catalog of 1k and of 100k synthetic rows; target: flat within +-20%;
- a worker's peak RSS (its own VmHWM, the flow's ``peak_worker_rss_mb``) on a
  one-hour song and on a 3-minute song, each on a fresh one-worker
  LocalCluster; target: hour / 3 minutes <= 1.5.

With ``--songs N``, on a generated collection of N short songs (1-3 s each)
and one 4x smaller, each ingested by ``musicflow ingest`` as a subprocess
against one Prefect test server:

- orchestration overhead: flow wall time minus task time (the summed batch task
  time divided by the workers), as a share of the wall time (target < 10%) and
  per song;
- catalog commit time (all commits, and per song);
- peak RSS of the flow process (sampled) and of a worker (the flow's
  ``peak_worker_rss_mb``), for both sizes (target: flat);
- throughput against raw parallel ``ffmpeg -f f32le`` decoding of the same files
  (the ingest speed limit).

Song synthesis is cached in the workdir and never timed.
"""

from __future__ import annotations

import os

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from _report import MUSICFLOW, ROOT, ffmpeg_f32_mono, target, verdict

sys.path.insert(0, str(ROOT))

from tasks.audio.synth import write_demo_songs


def raw_decode_seconds(paths: list[Path], workers: int) -> tuple[float, float]:
    """Wall seconds to decode ``paths`` with raw ffmpeg, ``workers`` at a time, and the audio seconds."""

    def decode(path: Path) -> float:
        return ffmpeg_f32_mono(path, sample_rate=44100) / 44100

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        audio = sum(pool.map(decode, paths))
    return time.perf_counter() - started, audio


def ingest(source: Path, store: Path, workers: int, api_url: str) -> tuple[dict, float]:
    """Run ``musicflow ingest`` as a subprocess; returns its summary and the flow process's peak RSS (MB)."""
    command = [
        *MUSICFLOW,
        "ingest",
        str(source),
        "--store",
        str(store),
        "--workers",
        str(workers),
        "--json",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PREFECT_API_URL": api_url},
    )
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"ingest failed:\n{stderr}")
    return json.loads(stdout), peak / 2**20


def commit_seconds(workdir: Path, catalog_rows: int, n_commits: int) -> list[float]:
    """Seconds of each of ``n_commits`` commits of a 10-song batch into a catalog of ``catalog_rows``."""
    from tasks.config import IngestConfig
    from tasks.dataset.catalog import CatalogRow, write_catalog
    from tasks.dataset.repository import (
        BatchResult,
        commit_batch,
        dataset_dir,
        prepare_dataset,
        refresh_stats,
    )
    from tasks.dataset.shards import ShardWriter
    from tasks.store.store import open_store

    shutil.rmtree(workdir, ignore_errors=True)
    store = open_store(str(workdir))
    config = IngestConfig()
    dataset_id = prepare_dataset(store, config)
    directory = dataset_dir(dataset_id)
    rng = np.random.default_rng(0)
    n_features = config.features.n_features

    def rows_of(start: int, count: int, shard: str | None, n_blocks: int) -> list[CatalogRow]:
        return [
            CatalogRow(song_id=f"{index:064x}", source=f"/music/a-{index % 997}/song-{index}.mp3",
                       bytes=4_000_000 + index, mtime=1.7e9 + index, seconds=200.0, channels=2,
                       n_blocks=n_blocks, shard=shard, offset=(index - start) * n_blocks, status="ok",
                       error=None, ingested_at="2025-01-01T00:00:00+00:00")
            for index in range(start, start + count)
        ]  # fmt: skip

    with ShardWriter(store, directory, n_features=n_features) as writer:  # the prefilled songs' shard
        for _ in range(4):
            writer.add(rng.normal(size=(1, n_features)).astype(np.float32))
    # Synthetic songs already in the catalog, all pointing at one small shard (their blocks are not
    # what a commit touches): the catalog's size is what is measured.
    prefill = rows_of(0, catalog_rows, writer.shard, 0)
    write_catalog(store, directory, [], prefill)
    refresh_stats(store, dataset_id, rebuild=True)
    times = []
    for commit in range(n_commits + 1):
        start = catalog_rows + commit * 10
        with ShardWriter(store, directory, n_features=n_features) as writer:
            for _ in range(10):
                writer.add(rng.normal(size=(2, n_features)).astype(np.float32))
        batch = BatchResult(rows_of(start, 10, writer.shard, 2), writer.shard, 0.0, 0.0, 0.0)
        started = time.perf_counter()
        commit_batch(store, dataset_id, batch)
        if commit:  # the first one warms the process's catalog view, as a run's planning does
            times.append(time.perf_counter() - started)
    shutil.rmtree(workdir, ignore_errors=True)
    return times


_ONE_WORKER = """
import json, logging, sys
from distributed import LocalCluster
from flows.ingest import ingest
with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                  silence_logs=logging.WARNING) as cluster:
    summary = ingest(source=sys.argv[1], store=sys.argv[2], dask_address=cluster.scheduler_address)
print(json.dumps({"rss": summary["peak_worker_rss_mb"], "seconds": summary["audio_seconds"]}))
"""


def song_memory(workdir: Path) -> dict[str, tuple[float, float]]:
    """Peak worker RSS (MB) and audio seconds of one song ingested on a fresh one-worker cluster."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    songs = {"3 minutes": 180, "one hour": 3600}
    results = {}
    with prefect_test_harness(server_startup_timeout=120):
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}
        for name, seconds in songs.items():
            source = workdir / f"song-{seconds}"
            shutil.rmtree(source, ignore_errors=True)
            source.mkdir(parents=True)
            write_low_rate_song(source / "song.wav", seconds)
            store = workdir / f"store-{seconds}"
            shutil.rmtree(store, ignore_errors=True)
            output = subprocess.run([sys.executable, "-c", _ONE_WORKER, str(source), str(store)], cwd=ROOT,
                                    env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
            measured = json.loads(output.strip().splitlines()[-1])
            results[name] = (measured["rss"], measured["seconds"])
            shutil.rmtree(store, ignore_errors=True)
    return results


def write_low_rate_song(path: Path, seconds: int, *, rate: int = 4000) -> None:
    """8-bit mono at 4 kHz (14 MB an hour): ffmpeg resamples it to 44.1 kHz, as a long mix would decode."""
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(rate)
        for minute in range(-(-seconds // 60)):
            n = min(60, seconds - 60 * minute) * rate
            t = (np.arange(n) + minute * rate * 60) / rate
            tone = 0.5 * np.sin(2 * np.pi * (220 + 5 * minute) * t)
            out.writeframes(((tone + 1) * 127.5).astype(np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--songs", type=int, default=0, help="songs in the large collection (0: skip)")
    parser.add_argument("--catalog-sizes", type=int, nargs=2, default=[1000, 100_000])
    parser.add_argument("--commits", type=int, default=130, help="commits timed per size (2 compactions)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "musicflow-bench-scale")
    parser.add_argument("--quick", action="store_true", help="200 songs, for a smoke test")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print("commit time against catalog size...", flush=True)
    commits = {size: commit_seconds(args.workdir / f"commits-{size}", size, args.commits)
               for size in args.catalog_sizes}  # fmt: skip
    print("worker memory: a 3-minute and a one-hour song...", flush=True)
    memory = song_memory(args.workdir)
    small_size, large_size = args.catalog_sizes
    print()
    for size, times in commits.items():
        mean, median = 1000 * statistics.mean(times), 1000 * statistics.median(times)
        print(f"commit per batch, catalog of {size:>7} rows: mean {mean:6.1f} ms, "
              f"median {median:6.1f} ms, max {1000 * max(times):6.1f} ms")  # fmt: skip
    mean_ratio = statistics.mean(commits[large_size]) / statistics.mean(commits[small_size])
    median_ratio = statistics.median(commits[large_size]) / statistics.median(commits[small_size])
    flat = verdict(mean_ratio, 1.2, at_most=True) if mean_ratio >= 0.8 else "MISSED"
    print(f"commit {large_size} / {small_size} rows: mean {mean_ratio:.2f} ({flat}, target 0.8..1.2), "
          f"median {median_ratio:.2f}")  # fmt: skip
    for name, (rss, seconds) in memory.items():
        print(f"worker peak RSS, {name} ({seconds / 60:.0f} min of audio): {rss:.0f} MB")
    rss_ratio = memory["one hour"][0] / memory["3 minutes"][0]
    print(f"worker RSS one hour / 3 minutes: {rss_ratio:.2f} ({target(rss_ratio, 1.5, at_most=True)})")
    if not args.songs and not args.quick:
        print(f"\ncommand: {shlex.join([sys.executable, *sys.argv])}")
        return
    n_large = 200 if args.quick else args.songs
    sizes = {"small": n_large // 4, "large": n_large}
    pool = args.workdir / "songs"
    print(f"synthesising {n_large} songs into {pool} (cached)...", flush=True)
    paths = write_demo_songs(pool, n_songs=n_large, seconds=(1.0, 3.0), seed=50_000)

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    results = {}
    with prefect_test_harness(server_startup_timeout=120):
        api_url = PREFECT_API_URL.value()
        for name, count in sizes.items():
            source = args.workdir / f"collection-{name}"
            shutil.rmtree(source, ignore_errors=True)
            source.mkdir(parents=True)
            for path in paths[:count]:
                os.link(path, source / path.name)
            store = args.workdir / f"store-{name}"
            shutil.rmtree(store, ignore_errors=True)
            summary, flow_rss = ingest(source, store, args.workers, api_url)
            raw_wall, raw_audio = raw_decode_seconds(paths[:count], args.workers)
            task_wall = summary["task_seconds"] / args.workers
            overhead = max(0.0, summary["wall_seconds"] - task_wall)
            results[name] = {
                "songs": summary["songs_ok"],
                "audio_min": summary["audio_seconds"] / 60,
                "wall_s": summary["wall_seconds"],
                "overhead_share": overhead / summary["wall_seconds"],
                "overhead_per_song_ms": 1000 * overhead / count,
                "commit_s": summary["commit_seconds"],
                "commit_per_song_ms": 1000 * summary["commit_seconds"] / count,
                "flow_rss_mb": flow_rss,
                "worker_rss_mb": summary["peak_worker_rss_mb"],
                "x_realtime": summary["x_realtime"],
                "raw_x_realtime": raw_audio / raw_wall,
            }
    print()
    print(f"{'':28}{'small':>12}{'large':>12}")
    rows = [
        ("songs", "songs", "{:.0f}"),
        ("audio (min)", "audio_min", "{:.1f}"),
        ("flow wall (s)", "wall_s", "{:.1f}"),
        ("orchestration share", "overhead_share", "{:.1%}"),
        ("overhead per song (ms)", "overhead_per_song_ms", "{:.1f}"),
        ("catalog commits (s)", "commit_s", "{:.2f}"),
        ("commit per song (ms)", "commit_per_song_ms", "{:.2f}"),
        ("flow process peak RSS (MB)", "flow_rss_mb", "{:.0f}"),
        ("worker peak RSS (MB)", "worker_rss_mb", "{:.0f}"),
        ("ingest (x real time)", "x_realtime", "{:.0f}"),
        ("raw ffmpeg (x real time)", "raw_x_realtime", "{:.0f}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:28}{fmt.format(results['small'][key]):>12}{fmt.format(results['large'][key]):>12}")
    large, small = results["large"], results["small"]
    print()
    print(f"ingest / raw ffmpeg (large):            {large['x_realtime'] / large['raw_x_realtime']:.2f}")
    print(f"orchestration share (large):            {large['overhead_share']:.1%} (target < 10%)")
    flow_ratio = large["flow_rss_mb"] / small["flow_rss_mb"]
    worker_ratio = large["worker_rss_mb"] / small["worker_rss_mb"]
    print(f"flow RSS large / small:                 {flow_ratio:.2f} (target ~1)")
    print(f"worker RSS large / small:               {worker_ratio:.2f} (target ~1)")
    print(f"\ncommand: {shlex.join([sys.executable, *sys.argv])}")


if __name__ == "__main__":
    main()
