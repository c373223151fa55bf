"""Task runs one ingest makes, by collection size: the flow's own batching on a planned collection,
nothing decoded (a task run per batch to ingest it, one to commit it, one plan).

Run from the repository root::

    .venv/bin/python benchmarks/count_task_runs.py [--workdir DIR] [--workers 2] [--live [--songs 10000]]

Two collections: 10k tiny WAV songs (1 s of 8 kHz noise, 16 kB each) written to ``DIR`` once and
planned as ingest plans them (listed and stat'ed; no duplicate, so nothing hashed), and 100k songs
of 2-12 MB (seeded sizes, no files: the batching only reads sizes). Each with the flow's batching
(``flows.ingest.MAX_BATCHES``) and without it (fixed ``--batch-mb`` batches, as before), at the
default 32 MB batches and at 0.05 MB (a user's small ``--batch-mb``).

``--live`` runs it: a real ``prefect server start`` with its own SQLite database (a temporary
``PREFECT_HOME``), then ``musicflow ingest`` of the ``--songs`` tiny songs into a fresh store with
that server as its API. Reported: the ingest flow run's task runs (counted by the server), the
database's growth (``prefect.db`` with its ``-wal``/``-shm`` files, before the ingest and after,
once the server has written the run's events), and the ingest's wall time against raw parallel
ffmpeg decoding of the same files (``--workers`` ffmpegs at a time, at ingest's sample rate),
both measured in this run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _report import MUSICFLOW, ROOT, ffmpeg_f32_mono, table
from bench_ingest import Clock

from flows.ingest import BATCHES_PER_WORKER, MAX_BATCHES
from musicflow.server import own_server
from tasks.ingest.plan import make_batches, plan_ingest
from tasks.ingest.sources import SourceFile, list_audio_files

TINY_POOL = "tiny-songs"  # the cached pool ("tiny" held copies: see tiny_songs)


def tiny_songs(folder: Path, count: int = 10_000) -> list[SourceFile]:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / f"tiny-{index:05d}.wav"
        if not path.exists():
            # Seeded by index: a pool cached by a smaller --songs run grows into distinct songs (one
            # generator for all made song 200 a copy of song 0 after a 200-song run, and ingest
            # skips copies).
            noise = np.random.default_rng(index).standard_normal(8000)
            with wave.open(str(path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(8000)
                out.writeframes((noise * 3000).astype("<i2").tobytes())
    return plan_ingest(list_audio_files(str(folder)), []).todo


def database_bytes(home: Path) -> int:
    """The server's SQLite database with its write-ahead log and shared-memory index."""
    return sum(path.stat().st_size for path in home.glob("prefect.db*"))


def settled_database_bytes(home: Path, *, quiet_seconds: float = 10.0, limit: float = 120.0) -> int:
    """:func:`database_bytes` once it has not changed for ``quiet_seconds`` (the server writes a
    run's events in batches after the run), or after ``limit`` seconds."""
    deadline, size = time.monotonic() + limit, database_bytes(home)
    steady_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - steady_since < quiet_seconds:
        time.sleep(1.0)
        now = database_bytes(home)
        if now != size:
            size, steady_since = now, time.monotonic()
    return size


def server_counts(api: str) -> dict[str, int]:
    """The ingest flow run's task runs, and every flow run and task run the server holds."""
    import httpx

    def count(kind: str, body: dict[str, object]) -> int:
        return int(httpx.post(f"{api}/{kind}/count", json=body, timeout=60).raise_for_status().json())

    flows = httpx.post(f"{api}/flows/filter", json={"flows": {"name": {"any_": ["ingest"]}}}, timeout=60)
    (ingest_flow,) = flows.raise_for_status().json()
    runs = (
        httpx.post(
            f"{api}/flow_runs/filter", json={"flows": {"id": {"any_": [ingest_flow["id"]]}}}, timeout=60
        )
        .raise_for_status()
        .json()
    )
    (run,) = runs
    return {
        "ingest_task_runs": count("task_runs", {"flow_runs": {"id": {"any_": [run["id"]]}}}),
        "task_runs": count("task_runs", {}),
        "flow_runs": count("flow_runs", {}),
    }


def live(args: argparse.Namespace) -> None:
    """``--live``: the ingest of ``args.songs`` tiny songs against a real server (see the module)."""
    from tasks.config import FeatureConfig

    songs = args.workdir / f"{TINY_POOL}-{args.songs}"
    files = tiny_songs(args.workdir / TINY_POOL, args.songs)
    songs.mkdir(parents=True, exist_ok=True)
    for item in sorted(files, key=lambda item: item.uri)[: args.songs]:  # hard links: the first --songs
        link = songs / Path(item.uri).name
        if not link.exists():
            os.link(item.uri, link)
    paths = sorted(songs.glob("*.wav"))
    if len(paths) != args.songs:
        sys.exit(f"{songs} holds {len(paths)} distinct songs, not {args.songs}: remove it and run again")
    sample_rate = FeatureConfig.for_transform().sample_rate  # what ingest decodes to by default
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="musicflow-live-") as folder:
        home, store = Path(folder) / "prefect", Path(folder) / "store"
        home.mkdir()
        with own_server(home) as api:
            before = settled_database_bytes(home, quiet_seconds=5.0)
            decode = functools.partial(ffmpeg_f32_mono, sample_rate=sample_rate)
            with Clock() as raw, ThreadPoolExecutor(args.workers) as pool:
                n_samples = sum(pool.map(decode, paths))
            env = {**os.environ, "PREFECT_API_URL": api, "PYTHONPATH": str(ROOT)}
            command = [*MUSICFLOW, "ingest", str(songs), "--store", str(store),
                       "--workers", str(args.workers), "--json"]  # fmt: skip
            with Clock() as flow:
                done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                sys.exit(f"ingest failed ({done.returncode}):\n{done.stderr[-3000:]}")
            summary = json.loads(done.stdout[done.stdout.index("{") :])
            after = settled_database_bytes(home)
            counts = server_counts(api)
    if summary["songs_ok"] != len(paths):
        sys.exit(f"ingest did not ingest every song: {summary['songs_ok']} of {len(paths)}")
    growth_mb = (after - before) / 2**20
    rows = [
        ("measure", "value", "note"),
        ("songs ingested", f"{summary['songs_ok']}", f"{n_samples / sample_rate:.0f} s of audio"),
        ("task runs of the ingest flow run", f"{counts['ingest_task_runs']}",
         f"{len(summary['shards'])} batches; the server holds {counts['task_runs']} task runs, "
         f"{counts['flow_runs']} flow run(s)"),
        ("server database before (MB)", f"{before / 2**20:.2f}", "prefect.db + -wal + -shm, server up"),
        ("server database after (MB)", f"{after / 2**20:.2f}", "once the run's events were written"),
        ("growth (MB)", f"{growth_mb:.2f}", f"{growth_mb / (len(paths) / 1000):.3f} MB per 1k songs"),
        ("ingest wall (s)", f"{flow.wall:.1f}", "musicflow ingest, process start to exit"),
        (f"raw ffmpeg decode, {args.workers} at a time (s)", f"{raw.wall:.1f}",
         f"same files, f32le at {sample_rate} Hz"),
        ("raw decode / ingest wall", f"{raw.wall / flow.wall:.2f}", "1 = as fast as raw decoding"),
    ]  # fmt: skip
    print(
        f"live ingest of {len(paths)} tiny songs (1 s, 8 kHz WAV), {args.workers} workers on "
        f"{os.cpu_count()} cores (1-min load {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)"
    )
    print(table(rows))
    print("command:", shlex.join(sys.orig_argv))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "musicflow-task-runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--live", action="store_true", help="ingest the tiny songs against a real server")
    parser.add_argument("--songs", type=int, default=10_000, help="tiny songs for --live (default 10000)")
    args = parser.parse_args(argv)
    if args.songs < 1 or args.songs > 10_000:
        parser.error(f"--songs must be 1..10000, not {args.songs}")
    if args.live:
        live(args)
        return
    rng = random.Random(7)
    collections = {
        "10k tiny songs": tiny_songs(args.workdir / TINY_POOL),
        "100k songs of 2-12 MB": [
            SourceFile(f"/songs/{index:06d}.mp3", rng.randint(2_000_000, 12_000_000))
            for index in range(100_000)
        ],
    }
    rows = [("collection", "MB", "--batch-mb", "task runs before", "task runs now", "largest batch now (MB)")]
    for name, files in collections.items():
        for batch_mb in (32.0, 0.05):
            counts, largest = [], 0.0
            for cap in (None, MAX_BATCHES):
                batches = make_batches(
                    files,
                    batch_bytes=int(batch_mb * 2**20),
                    rounds_of=args.workers,
                    min_batches=BATCHES_PER_WORKER * args.workers,
                    max_batches=cap,
                )
                counts.append(1 + 2 * len(batches))
                largest = max(sum(item.bytes for item in batch) for batch in batches) / 2**20
            total = sum(item.bytes for item in files) / 2**20
            rows.append(
                (name, f"{total:.0f}", f"{batch_mb:g}", f"{counts[0]}", f"{counts[1]}", f"{largest:.0f}")
            )
    print(f"task runs per ingest ({args.workers} workers, MAX_BATCHES {MAX_BATCHES}): plan + 2 per batch")
    print(table(rows))
    print("command:", shlex.join(sys.orig_argv))


if __name__ == "__main__":
    main()
