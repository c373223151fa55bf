"""Ingest throughput against raw ffmpeg decoding and the seed's serial scripts.

Run from the repository root::

    .venv/bin/python benchmarks/bench_ingest.py [--minutes 20] [--workers 2] [--workdir DIR] [--quick]
                                               [--no-real] [--served-only] [--writes-only]

Everything is measured in one run, on the same songs and cores, and reported
as ratios, on two collections: generated songs, and a real one, Debian's
``drascula-music`` (31 Ogg Vorbis tracks, 47 min; apt-get installs it when it
is missing), converted to mp3 here once (cached) so that both are decoded from mp3:

(a) the ``ingest`` flow into a fresh store, in x real time (decoded audio
    seconds / flow wall seconds): "cold" (the flow starts its own
    LocalCluster) and "warm" (a LocalCluster started beforehand); warm once
    more with the flow engine's heartbeats off, to show what they still cost a run;
(b) the decoding speed limit: ``ffmpeg ... -f f32le -`` into numpy, N files at
    a time; target (a)/(b) >= 0.7. Also 1 file at a time: (b) over that is the
    parallel speedup the machine gives now (well under N: cores busy elsewhere);
    and with ingest's ``-flush_packets 0`` (32 kB pipe writes, not one per decoded
    frame), the limit ingest's own decoding is held to (not the target's);
(c) the seed's serial GRUV scripts (16-bit WAV on disk, scipy, a Python loop of
    ``np.fft.fft`` over blocks, one ``.npy`` per song); target (a)/(c) >= 2;
(e) a no-op re-run: the flow again on the same source and store, where
    nothing is new; target <= 0.1 of the full (cold) run's wall time;
(f) ``musicflow serve``'s ingest ticks (``--served-only``: only these): a served tick on
    drascula-music's .ogg files, as it is installed, in the flow run's time against (b);
    target >= 0.7; and a no-op tick's flow time, target <= 1 s;
(g) shard writes past the page cache (``--writes-only``: only these): the ingest's batch jobs on a
    LocalCluster, on the same .ogg files as (f), with ``MUSICFLOW_DIRECT_IO`` on (the default:
    chunks written with ``O_DIRECT``, :mod:`tasks.store.direct`) and off, interleaved rounds:
    the batches' wall time and the workers' kernel CPU;
(d) peak RSS per worker (the flow's ``peak_worker_rss_mb``) on the collection
    and on one 4x larger, a fresh cluster per size (each warmed up on two songs
    first, so the large run is warm too); target: within 20%. The clusters are
    started by a small helper process, because a worker's ru_maxrss starts at
    the peak RSS of the process that spawned it.

To tell Prefect's cost from the work's, the flow's steps also run on plain Dask
(same functions, same batches). Every rate is given per wall second and per CPU
second of this process tree: on a shared machine the wall ratios move with other
load, the CPU ones much less. It also times ``pydub.AudioSegment.from_file``
against ``tasks.audio.decode.decode_audio`` (why the project calls ffmpeg itself) and
where one worker's time goes. Song synthesis is cached in the workdir and never timed.
"""

from __future__ import annotations

import os

# Before Prefect is imported (by the project's modules too): keep the console for the report.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import contextlib
import functools
import json
import math
import multiprocessing
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _report import ffmpeg_f32_mono, table, target, verdict

SAMPLE_RATE = 44100
BLOCK_SIZE = 11025
SONG_SECONDS = (30.0, 90.0)
SEED = 20240
LARGE_FACTOR = 4
PYDUB_FILES = 3
TARGET_VS_DECODE = 0.7
TARGET_VS_SEED = 2.0
TARGET_RSS_GROWTH = 0.2


@dataclass(frozen=True)
class Collection:
    """Songs in one folder (hard links into the pool), with their total length."""

    name: str
    directory: Path
    paths: list[Path]
    seconds: float


@dataclass(frozen=True)
class Measurement:
    """Audio decoded, wall seconds, and CPU seconds of this process and all its descendants."""

    audio_seconds: float
    wall_seconds: float
    cpu_seconds: float

    @property
    def x_realtime(self) -> float:
        return self.audio_seconds / self.wall_seconds

    @property
    def x_realtime_per_cpu(self) -> float:
        """Audio seconds per CPU second: what one idle core would give, other load aside."""
        return self.audio_seconds / self.cpu_seconds


@dataclass(frozen=True)
class IngestRun(Measurement):
    task_seconds: float
    body_seconds: float
    peak_worker_rss_mb: float
    n_batches: int


def tree_cpu_seconds() -> float:
    """CPU seconds of this process, its live descendants and every child they reaped.

    Dask workers, ffmpeg and the Prefect server are all descendants, so this is
    the work a measurement cost, whatever else the machine was doing.
    """
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


class Clock:
    """Wall and tree CPU seconds of a ``with`` block."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), tree_cpu_seconds()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = tree_cpu_seconds() - self._cpu


# ---------------------------------------------------------------- collection


def _probe_seconds(path: Path) -> float:
    output = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(output.strip())


def _write_song(pool: Path, song_seed: int) -> Path:
    from tasks.audio.synth import write_demo_songs

    (path,) = write_demo_songs(pool, n_songs=1, seconds=SONG_SECONDS, seed=song_seed)
    return path


def make_pool(pool: Path, total_seconds: float, *, workers: int) -> list[tuple[Path, float]]:
    """Seeded demo songs (30-90 s) in ``pool``, in seed order, lasting ``total_seconds``; cached.

    Missing songs are synthesised in ``workers`` child processes.
    """
    lengths_file = pool / "lengths.json"
    lengths: dict[str, float] = json.loads(lengths_file.read_text()) if lengths_file.exists() else {}
    songs: list[tuple[Path, float]] = []
    song_seed = SEED
    with contextlib.ExitStack() as stack:
        executor: ProcessPoolExecutor | None = None
        while (total := sum(seconds for _, seconds in songs)) < total_seconds:
            cached = pool / f"demo-{song_seed:05d}.mp3"
            if cached.exists() and cached.name in lengths:
                songs.append((cached, lengths[cached.name]))
                song_seed += 1
                continue
            if executor is None:
                executor = stack.enter_context(
                    ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                )
            n_songs = max(workers, math.ceil((total_seconds - total) / statistics.mean(SONG_SECONDS)))
            seeds = range(song_seed, song_seed + n_songs)
            for path in executor.map(_write_song, [pool] * n_songs, seeds):
                lengths[path.name] = _probe_seconds(path)
                songs.append((path, lengths[path.name]))
            song_seed += n_songs
            lengths_file.write_text(json.dumps(lengths, indent=0, sort_keys=True))
    return songs


def link_collection(name: str, directory: Path, songs: list[tuple[Path, float]]) -> Collection:
    """A folder holding exactly ``songs`` (hard links, copies where links fail)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    paths = []
    for source, _ in songs:
        target = directory / source.name
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        paths.append(target)
    return Collection(name, directory, paths, sum(seconds for _, seconds in songs))


def prefix_lasting(songs: list[tuple[Path, float]], seconds: float) -> list[tuple[Path, float]]:
    total, count = 0.0, 0
    while total < seconds and count < len(songs):
        total += songs[count][1]
        count += 1
    return songs[:count]


DRASCULA_PACKAGE = "drascula-music"
TARGET_NOOP = 0.1


def drascula_collection(workdir: Path) -> Collection:
    """Debian's drascula-music as mp3 in ``workdir`` (installed with apt-get and converted once)."""
    listed = subprocess.run(["dpkg", "-L", DRASCULA_PACKAGE], capture_output=True, text=True)
    if listed.returncode != 0:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", DRASCULA_PACKAGE], check=True, env=env)
        listed = subprocess.run(["dpkg", "-L", DRASCULA_PACKAGE], capture_output=True, text=True, check=True)
    # The package lists each track under several paths (links for each game language): one per name.
    oggs = sorted({Path(line).name: Path(line) for line in listed.stdout.splitlines()
                   if line.endswith(".ogg") and Path(line).is_file()}.values())  # fmt: skip
    directory = workdir / "drascula-mp3"
    directory.mkdir(parents=True, exist_ok=True)
    paths, seconds = [], 0.0
    for ogg in oggs:
        mp3 = directory / f"{ogg.stem}.mp3"
        if not mp3.exists():
            partial = mp3.with_suffix(".partial.mp3")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(ogg),
                            "-c:a", "libmp3lame", "-b:a", "192k", str(partial)], check=True)  # fmt: skip
            partial.rename(mp3)
        paths.append(mp3)
        seconds += _probe_seconds(mp3)
    return Collection("drascula", directory, paths, seconds)


def run_noop(collection: Collection, store: Path, *, workers: int) -> tuple[float, float]:
    """(cold full run, no-op re-run) wall seconds: the flow twice on one store, nothing new the 2nd time."""
    from flows.ingest import ingest

    shutil.rmtree(store, ignore_errors=True)
    with Clock() as full:
        first = ingest(source=str(collection.directory), store=str(store), workers=workers)
    with Clock() as again:
        second = ingest(source=str(collection.directory), store=str(store), workers=workers)
    shutil.rmtree(store, ignore_errors=True)
    if first["songs_ok"] != len(collection.paths) or second["songs_skipped"] != len(collection.paths):
        raise RuntimeError(f"unexpected re-run of {collection.name}: {first} / {second}")
    return full.wall, again.wall


def core_ratios(collection: Collection, stores: Path, *, workers: int, address: str, repeats: int,
                out_dir: Path) -> dict[str, float]:  # fmt: skip
    """(a) warm and cold, (b), (c) and (e) on one collection, medians over ``repeats`` rounds; each
    round runs them in turn, so a change in the machine's other load shifts them all alike."""
    raw, warm, cold, noop, seed = [], [], [], [], []
    for _ in range(repeats):
        raw.append(raw_decode(collection, workers=workers))
        warm.append(run_ingest(collection, stores / "warm", workers=workers, dask_address=address))
        seed.append(seed_serial(collection, out_dir))
        cold.append(run_ingest(collection, stores / "cold", workers=workers))
        noop.append(run_noop(collection, stores / "noop", workers=workers))
    raw_x = statistics.median(run.x_realtime for run in raw)
    return {
        "minutes": collection.seconds / 60,
        "songs": len(collection.paths),
        "warm_x": statistics.median(run.x_realtime for run in warm),
        "cold_x": statistics.median(run.x_realtime for run in cold),
        "raw_x": raw_x,
        "seed_x": statistics.median(run.x_realtime for run in seed),
        "noop_ratio": statistics.median(again / full for full, again in noop),
        "noop_s": statistics.median(again for _, again in noop),
        "full_s": statistics.median(full for full, _ in noop),
    }


# ---------------------------------------------------------------- (f) served ticks

TARGET_NOOP_TICK_S = 1.0


def ogg_collection(name: str, workdir: Path) -> Collection:
    """A real collection's tracks as its Debian package installs them (Ogg Vorbis; ``_debian``'s
    ``drascula`` or ``wesnoth``, apt-get installed when missing), linked into ``workdir``."""
    from _debian import collection_songs

    songs = [(Path(path), _probe_seconds(Path(path))) for path in collection_songs(name)]
    return link_collection(f"{name}-ogg", workdir / f"{name}-ogg", songs)


def _served_tick() -> dict[str, float]:
    """One run of the served ingest deployment, as its interval would start it: (flow time, wall).

    Flow time is the flow run's own start to end as the Prefect server recorded it (what the tick
    costs once its process runs); wall adds the runner's poll and the flow-run process start; CPU is
    this process tree's (serve, its flow-run process and cluster, the Prefect server) over the wall."""
    from prefect.deployments import run_deployment

    # announce off: a tick that adds songs would trigger the served train deployment, which would
    # then train beside the next tick.
    with Clock() as clock:
        run = run_deployment("ingest/musicflow-ingest", parameters={"announce": False}, timeout=1800,
                             poll_interval=0.5, as_subflow=False)  # fmt: skip
    if not (run.state and run.state.is_completed()) or run.start_time is None or run.end_time is None:
        raise RuntimeError(f"served ingest tick did not complete: {run.state}")
    return {
        "flow_s": (run.end_time - run.start_time).total_seconds(),
        "wall_s": clock.wall,
        "cpu_s": clock.cpu,
    }


@contextlib.contextmanager
def served(api: str, collection: Collection, store: Path, *, workers: int) -> Iterator[str]:
    """``musicflow serve`` on ``collection`` into ``store`` (its kept LocalCluster of ``workers``),
    until the block ends; yields its first line."""
    env = {**os.environ, "PREFECT_API_URL": api, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "musicflow.cli", "serve", "--source", str(collection.directory),
               "--store", str(store), "--workers", str(workers)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    try:
        lines = []
        while len(lines) < 3:  # serving ..., trigger ..., Dask cluster ...
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"musicflow serve exited ({process.wait()}): {lines}")
            lines.append(line.strip())
        time.sleep(3)  # the runner registers its deployments and starts polling
        yield lines[-1]
    finally:
        process.send_signal(2)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _songs_recorded(store: Path) -> int:
    """Songs with a row in the store's one dataset, ``ok`` or ``failed`` (wesnoth's silence.ogg is
    a content failure: silent)."""
    from tasks.dataset import repository as dataset_lib
    from tasks.store.store import open_store

    (dataset,) = [path.name for path in (store / "datasets").iterdir()]
    return len(list(dataset_lib.read_rows(open_store(str(store)), dataset)))


def served_ticks(
    api: str, collection: Collection, store: Path, *, workers: int, repeats: int
) -> dict[str, Any]:
    """(f) ``musicflow serve``'s ingest ticks on one collection: the first (the kept cluster's workers
    not yet warm), then ``repeats`` times a no-op tick and a full tick into an emptied store, each
    full tick between two (b) raw decodes of the same files."""
    shutil.rmtree(store, ignore_errors=True)
    full, noop, raw = [], [], []
    with served(api, collection, store, workers=workers) as cluster_line:
        first = _served_tick()
        for _ in range(repeats):
            noop.append(_served_tick())
            shutil.rmtree(store, ignore_errors=True)
            raw.append(raw_decode(collection, workers=workers))
            full.append(_served_tick())
            raw.append(raw_decode(collection, workers=workers))
            if _songs_recorded(store) != len(collection.paths):
                raise RuntimeError(f"a served tick did not record every song of {collection.directory}")
    shutil.rmtree(store, ignore_errors=True)
    full_flow = statistics.median(tick["flow_s"] for tick in full)
    raw_x = statistics.median(run.x_realtime for run in raw)
    return {
        "songs": len(collection.paths),
        "minutes": collection.seconds / 60,
        "cluster": cluster_line,
        "raw_x": raw_x,
        "first_x": collection.seconds / first["flow_s"],
        "full_x": collection.seconds / full_flow,
        "full_wall_x": collection.seconds / statistics.median(tick["wall_s"] for tick in full),
        # per CPU second: what the ratio would be on idle cores (other load on the machine aside)
        "full_cpu_x": collection.seconds / statistics.median(tick["cpu_s"] for tick in full),
        "raw_cpu_x": statistics.median(run.x_realtime_per_cpu for run in raw),
        "noop_cpu_s": statistics.median(tick["cpu_s"] for tick in noop),
        "noop_flow_s": statistics.median(tick["flow_s"] for tick in noop),
        "noop_wall_s": statistics.median(tick["wall_s"] for tick in noop),
    }


def served_rows(ticks: dict[str, Any]) -> list[tuple[str, ...]]:
    vs_raw = ticks["full_x"] / ticks["raw_x"]
    return [
        ("measure", "value", "target / detail"),
        ("(f) served tick / (b), flow time", f"{vs_raw:.2f}",
         f"{target(vs_raw, TARGET_VS_DECODE)}: {ticks['full_x']:.0f}x / {ticks['raw_x']:.0f}x real time"),
        ("(f) first served tick / (b)", f"{ticks['first_x'] / ticks['raw_x']:.2f}",
         "kept cluster started, its workers not yet warm"),
        ("(f) served tick / (b), per CPU second", f"{ticks['full_cpu_x'] / ticks['raw_cpu_x']:.2f}",
         f"the tick's CPU (tick wall, whole process tree) against (b)'s: {ticks['full_cpu_x']:.0f}x / "
         f"{ticks['raw_cpu_x']:.0f}x"),
        ("(f) served tick / (b), tick wall", f"{ticks['full_wall_x'] / ticks['raw_x']:.2f}",
         "with the runner's poll and the flow-run process start"),
        ("(f) no-op tick, flow time (s)", f"{ticks['noop_flow_s']:.2f}",
         target(ticks["noop_flow_s"], TARGET_NOOP_TICK_S, at_most=True)),
        ("(f) no-op tick, wall (s)", f"{ticks['noop_wall_s']:.2f}",
         f"with the poll and process start; {ticks['noop_cpu_s']:.2f} CPU s"),
    ]  # fmt: skip


# ---------------------------------------------------------------- (g) shard writes


def _set_direct_io(on: bool) -> None:
    """On a worker: shard chunks written with O_DIRECT (the default) or through the page cache."""
    from tasks.store import direct

    os.environ[direct.ENV_SWITCH] = "1" if on else "0"


def _tree_times() -> tuple[float, float]:
    """On a worker: (user, system) CPU seconds of this process and its finished children (ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime


def shard_writes(collection: Collection, store: Path, *, workers: int, repeats: int) -> dict[str, Any]:
    """(g) The ingest's batch jobs (its batches, largest first, ``tasks.ingest.worker.ingest_batch``)
    on a LocalCluster of ``workers``, chunks written with O_DIRECT and through the page cache, in
    rounds that alternate which goes first; the median of each: wall, x real time, the workers'
    user and kernel CPU (ffmpeg's included)."""
    from distributed import Client

    from flows.ingest import run_batches
    from tasks.config import FeatureConfig, IngestConfig
    from tasks.ingest.sources import SourceFile
    from tasks.ingest.worker import ingest_batch

    config = IngestConfig(features=FeatureConfig.for_transform())  # the flow's defaults
    files = [SourceFile(uri=str(path), bytes=path.stat().st_size) for path in collection.paths]
    batches = run_batches(files, batch_mb=config.batch_mb, n_workers=workers)
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "page cache": []}
    with local_cluster(workers) as address, Client(address) as client:
        for round_ in range(repeats + 1):  # round 0 warms the workers up (imports), not counted
            order = ["direct", "page cache"] if round_ % 2 else ["page cache", "direct"]
            for mode in order:
                shutil.rmtree(store, ignore_errors=True)
                store.mkdir(parents=True)
                client.run(_set_direct_io, mode == "direct")
                before = client.run(_tree_times)
                with Clock() as clock:
                    futures = [
                        client.submit(ingest_batch, batch, store_url=str(store), dataset_id="bench",
                                      config=config, pure=False, priority=len(batches) - index)
                        for index, batch in enumerate(batches)
                    ]  # fmt: skip
                    results = client.gather(futures)
                after = client.run(_tree_times)
                if round_:
                    runs[mode].append({
                        "wall": clock.wall,
                        "x": sum(result.audio_seconds for result in results) / clock.wall,
                        "user": sum(after[w][0] - before[w][0] for w in after),
                        "system": sum(after[w][1] - before[w][1] for w in after),
                    })  # fmt: skip
    shutil.rmtree(store, ignore_errors=True)
    return {
        mode: {key: statistics.median(run[key] for run in measured) for key in measured[0]}
        for mode, measured in runs.items()
    }


def writes_rows(writes: dict[str, Any]) -> list[tuple[str, ...]]:
    direct, cached = writes["direct"], writes["page cache"]
    return [
        ("measure", "O_DIRECT", "page cache", "ratio"),
        ("batches' wall (s)", f"{direct['wall']:.2f}", f"{cached['wall']:.2f}",
         f"{cached['wall'] / direct['wall']:.2f}x faster with O_DIRECT"),
        ("x real time", f"{direct['x']:.0f}x", f"{cached['x']:.0f}x", ""),
        ("workers' kernel CPU (s)", f"{direct['system']:.2f}", f"{cached['system']:.2f}",
         f"{cached['system'] - direct['system']:.2f} s less"),
        ("workers' user CPU (s)", f"{direct['user']:.2f}", f"{cached['user']:.2f}", "ffmpeg's included"),
    ]  # fmt: skip


def main_writes(args: argparse.Namespace, workdir: Path, load_before: float) -> None:
    """(g) alone: the batch jobs with shard chunks written past the page cache and through it."""
    collection = ogg_collection(args.served_collection, workdir)
    writes = shard_writes(
        collection, workdir / "stores" / "writes", workers=args.workers, repeats=args.repeats
    )
    print()
    print(
        f"shard writes: {len(collection.paths)} songs, {collection.seconds / 60:.1f} min of Ogg Vorbis "
        f"({args.served_collection}) into {workdir / 'stores'}; {args.workers} workers on {os.cpu_count()} "
        f"cores (1-min load {load_before:.1f} before, {os.getloadavg()[0]:.1f} after); median of "
        f"{args.repeats} round(s)"
    )
    print(table(writes_rows(writes)))
    print("command:", shlex.join(sys.orig_argv))


# ---------------------------------------------------------------- (a) ingest flow


def run_ingest(
    collection: Collection, store: Path, *, workers: int, dask_address: str | None = None
) -> IngestRun:
    """Run the ``ingest`` flow into a fresh store; the store is removed afterwards."""
    from flows.ingest import ingest

    shutil.rmtree(store, ignore_errors=True)
    with Clock() as clock:
        summary = ingest(
            source=str(collection.directory), store=str(store), workers=workers, dask_address=dask_address
        )
    shutil.rmtree(store, ignore_errors=True)
    if summary["songs_ok"] != len(collection.paths) or summary["songs_failed"]:
        raise RuntimeError(f"ingest of {collection.name} did not ingest every song: {summary}")
    return IngestRun(
        audio_seconds=summary["audio_seconds"],
        wall_seconds=clock.wall,
        cpu_seconds=clock.cpu,
        task_seconds=summary["task_seconds"],
        body_seconds=summary["wall_seconds"],
        peak_worker_rss_mb=summary["peak_worker_rss_mb"],
        n_batches=len(summary["shards"]),
    )


def run_plain_dask(collection: Collection, store: Path, *, workers: int, dask_address: str) -> Measurement:
    """The flow's steps, same functions and batches, on plain Dask: what Prefect adds to (a)."""
    from distributed import Client, as_completed

    from flows.ingest import run_batches
    from tasks.config import FeatureConfig, IngestConfig
    from tasks.dataset import repository as dataset_lib
    from tasks.dataset.catalog import read_catalog
    from tasks.ingest.plan import plan_ingest
    from tasks.ingest.sources import list_audio_files
    from tasks.ingest.worker import ingest_batch
    from tasks.store.store import open_store

    shutil.rmtree(store, ignore_errors=True)
    config = IngestConfig(features=FeatureConfig.for_transform())  # the flow's defaults
    with Client(dask_address) as client, Clock() as clock:
        store_handle = open_store(str(store))
        dataset_id = dataset_lib.prepare_dataset(store_handle, config)
        files = list_audio_files(str(collection.directory))
        catalog = read_catalog(store_handle, dataset_lib.dataset_dir(dataset_id))
        plan = plan_ingest(files, catalog)
        batches = run_batches(plan.todo, batch_mb=config.batch_mb, n_workers=workers)
        futures = [
            client.submit(ingest_batch, batch, store_url=str(store), dataset_id=dataset_id,
                          config=config, pure=False)
            for batch in batches
        ]  # fmt: skip
        audio_seconds = 0.0
        for future in as_completed(futures):
            result = future.result()
            audio_seconds += result.audio_seconds
            dataset_lib.commit_batch(store_handle, dataset_id, result)
    shutil.rmtree(store, ignore_errors=True)
    return Measurement(audio_seconds, clock.wall, clock.cpu)


# Started by a helper process: a Dask worker's ru_maxrss starts at the peak RSS of
# the process that spawned it (Linux keeps the high-water mark across vfork+exec),
# and LocalCluster spawns its workers from the process that creates it.
_CLUSTER_HELPER = """
import logging, sys
from distributed import LocalCluster
with LocalCluster(n_workers=int(sys.argv[1]), threads_per_worker=1, processes=True,
                  dashboard_address=None, silence_logs=logging.WARNING) as cluster:
    print(cluster.scheduler_address, flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def local_cluster(workers: int, tree: Path | None = None) -> Iterator[str]:
    """Address of a fresh LocalCluster, the kind a user starts once and reuses (dask_address=...).

    With ``tree``, its workers import the project (``tasks``...) from that folder instead.
    """
    helper = subprocess.Popen(
        [sys.executable, "-c", _CLUSTER_HELPER, str(workers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tree,
        env=None if tree is None else {**os.environ, "PYTHONPATH": str(tree)},
    )
    assert helper.stdin is not None and helper.stdout is not None
    try:
        address = helper.stdout.readline().strip()
        if not address:
            raise RuntimeError("the LocalCluster helper exited without an address")
        yield address
    finally:
        helper.stdin.close()  # the helper closes its cluster and exits
        try:
            helper.wait(timeout=60)
        except subprocess.TimeoutExpired:
            helper.kill()


def _worker_memory_mb() -> tuple[float, float]:
    """(ru_maxrss, VmHWM) of this process in MB; VmHWM is this process's own peak only."""
    high_water = 0.0
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                high_water = int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, high_water


def worker_memory_mb(address: str) -> tuple[float, float]:
    """Largest (ru_maxrss, VmHWM) over the cluster's workers, in MB."""
    from distributed import Client

    with Client(address) as client:
        peaks = client.run(_worker_memory_mb)
    return max(rss for rss, _ in peaks.values()), max(hwm for _, hwm in peaks.values())


# ---------------------------------------------------------------- (b) decoding speed limit


def raw_decode(collection: Collection, *, workers: int, buffered: bool = False) -> Measurement:
    """Decode every file, ``workers`` ffmpegs at a time (``buffered``: :func:`_report.ffmpeg_f32_mono`)."""
    decode = functools.partial(ffmpeg_f32_mono, sample_rate=SAMPLE_RATE, buffered=buffered)
    with Clock() as clock, ThreadPoolExecutor(workers) as pool:
        n_samples = sum(pool.map(decode, collection.paths))
    return Measurement(n_samples / SAMPLE_RATE, clock.wall, clock.cpu)


# ---------------------------------------------------------------- (c) the seed's serial scripts


def seed_serial(collection: Collection, out_dir: Path) -> Measurement:
    """GRUV style, one process: mp3 -> 16-bit WAV file -> scipy -> per-block np.fft.fft -> .npy."""
    import scipy.io.wavfile

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    n_samples = 0
    with Clock() as clock:
        for path in collection.paths:
            wav = out_dir / f"{path.stem}.wav"
            subprocess.run(
                ["ffmpeg", "-v", "error", "-y", "-i", str(path), "-ac", "1", "-ar", str(SAMPLE_RATE),
                 "-acodec", "pcm_s16le", str(wav)],
                check=True,
            )  # fmt: skip
            _, data = scipy.io.wavfile.read(wav)
            audio = data.astype(np.float32) / 32767.0
            blocks = []
            for start in range(0, audio.shape[0], BLOCK_SIZE):
                block = audio[start : start + BLOCK_SIZE]
                if block.shape[0] < BLOCK_SIZE:
                    padding = np.zeros(BLOCK_SIZE - block.shape[0], dtype=np.float32)
                    block = np.concatenate([block, padding])
                blocks.append(block)
            fft_blocks = []
            for block in blocks:
                spectrum = np.fft.fft(block)
                fft_blocks.append(np.concatenate((np.real(spectrum), np.imag(spectrum))))
            np.save(out_dir / f"{path.stem}.npy", np.array(fft_blocks))
            wav.unlink()
            n_samples += audio.shape[0]
    shutil.rmtree(out_dir, ignore_errors=True)
    return Measurement(n_samples / SAMPLE_RATE, clock.wall, clock.cpu)


# ---------------------------------------------------------------- decode path evidence


def _pydub_decode(path: Path) -> np.ndarray:
    from pydub import AudioSegment

    segment = AudioSegment.from_file(str(path), format="mp3")
    pcm = np.array(segment.get_array_of_samples(), dtype=np.float32)
    scale = float(1 << (8 * segment.sample_width - 1))
    return pcm.reshape(-1, segment.channels).mean(axis=1) / scale


def decoder_comparison(paths: list[Path], *, rounds: int = 3) -> dict[str, float]:
    """Best-of-``rounds`` serial seconds over ``paths`` per decoder, rounds interleaved."""
    from tasks.audio.decode import decode_audio

    decoders: dict[str, Callable[[Path], object]] = {
        "pydub": _pydub_decode,
        "decode_audio": lambda path: decode_audio(str(path), sample_rate=SAMPLE_RATE),
        "ffmpeg f32le": functools.partial(ffmpeg_f32_mono, sample_rate=SAMPLE_RATE),
    }
    best = dict.fromkeys(decoders, float("inf"))
    for _ in range(rounds):
        for name, decode in decoders.items():
            started = time.perf_counter()
            for path in paths:
                decode(path)
            best[name] = min(best[name], time.perf_counter() - started)
    return best


# ---------------------------------------------------------------- where one worker's time goes


def _best_of(rounds: int, call: Callable[[], object]) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(rounds):
        started = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - started)
    return best, result


def _featurise(transform: Any, samples: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Rows of ``samples`` pushed through the transform's streaming featurizer in decoder-sized chunks."""
    featurizer = transform.featurizer()
    rows = [featurizer.push(samples[start : start + chunk]) for start in range(0, samples.shape[0], chunk)]
    return np.concatenate([*rows, featurizer.finish()])


def stage_breakdown(collection: Collection, store_dir: Path, *, rounds: int = 2) -> dict[str, float]:
    """Serial seconds per stage of ``ingest_batch``'s work with the default transform, over the
    collection (best of ``rounds``); in ``ingest_batch`` the decoding overlaps the rest."""
    from tasks.audio.decode import decode_audio
    from tasks.config import FeatureConfig
    from tasks.dataset.shards import ShardWriter
    from tasks.dataset.stats import FeatureStats
    from tasks.features.transforms import get_transform
    from tasks.ingest.memory import keep_freed_memory
    from tasks.ingest.sources import sha256_of
    from tasks.store.store import open_store

    keep_freed_memory()  # as ingest_batch does on a worker
    config = FeatureConfig.for_transform()  # the flow's defaults (22.05 kHz for stft)
    transform = get_transform(config)
    seconds = dict.fromkeys(
        ("sha256", "decode_audio", f"{config.transform} rows", "writer.add", "  of which stats"), 0.0
    )
    shutil.rmtree(store_dir, ignore_errors=True)
    store = open_store(str(store_dir))
    writer = ShardWriter(store, "bench", n_features=config.n_features)
    with writer:
        for path in collection.paths:
            seconds["sha256"] += _best_of(rounds, lambda path=path: sha256_of(str(path)))[0]
            elapsed, audio = _best_of(
                rounds, lambda path=path: decode_audio(str(path), sample_rate=config.sample_rate)
            )
            seconds["decode_audio"] += elapsed
            samples = audio.samples  # type: ignore[attr-defined]
            elapsed, features = _best_of(rounds, lambda samples=samples: _featurise(transform, samples))
            seconds[f"{config.transform} rows"] += elapsed
            seconds["  of which stats"] += _best_of(
                rounds, lambda features=features: FeatureStats.from_features(features)
            )[0]
            seconds["writer.add"] += _best_of(1, lambda features=features: writer.add(features))[0]
        closing = time.perf_counter()
    seconds["writer.add"] += time.perf_counter() - closing  # the last flush and the commit
    shutil.rmtree(store_dir, ignore_errors=True)
    return seconds


# ---------------------------------------------------------------- report


def _ffmpeg_version() -> str:
    first = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()
    return first[0].split(" Copyright")[0] if first else "ffmpeg ?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=None,
                        help="audio in the small collection (default 20; 4 with --quick)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="Dask workers / parallel ffmpegs")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds of (a) cold, (a) warm and (b) (default 3; 1 with --quick)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "musicflow-bench",
                        help="songs are cached here; stores are made and removed here")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 min of songs, 1 round")
    parser.add_argument(
        "--no-real", action="store_true", help=f"skip the real collection ({DRASCULA_PACKAGE})"
    )
    parser.add_argument("--served-only", action="store_true",
                        help="only (f): musicflow serve's ingest ticks on real .ogg")  # fmt: skip
    parser.add_argument("--served-collection", choices=["drascula", "wesnoth"], default="drascula",
                        help="(f), (g): drascula-music (47 min) or wesnoth-1.16-music (128 min)")  # fmt: skip
    parser.add_argument("--writes-only", action="store_true",
                        help="only (g): shard chunks written with O_DIRECT or the page cache")  # fmt: skip
    args = parser.parse_args(argv)
    if args.minutes is None:
        args.minutes = 4.0 if args.quick else 20.0
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.workers < 1 or args.repeats < 1 or args.minutes <= 0:
        parser.error("--workers, --repeats and --minutes must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The flow's own ("cold") LocalCluster finds port 8787 taken by the warm one: harmless.
    warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
    workers: int = args.workers
    workdir: Path = args.workdir.resolve()
    log = print  # progress lines; the report comes at the end
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        sys.exit("ffmpeg and ffprobe are needed: apt-get install ffmpeg")

    load_before = os.getloadavg()[0]
    if args.served_only:
        main_served(args, workdir, load_before)
        return
    if args.writes_only:
        main_writes(args, workdir, load_before)
        return
    log(f"preparing songs in {workdir / 'pool'} (cached; not timed)")
    started = time.perf_counter()
    pool = make_pool(workdir / "pool", LARGE_FACTOR * (args.minutes * 60 + SONG_SECONDS[1]), workers=workers)
    small_songs = prefix_lasting(pool, args.minutes * 60)
    small = link_collection("small", workdir / "songs-small", small_songs)
    large = link_collection(
        "large", workdir / "songs-large", prefix_lasting(pool, LARGE_FACTOR * small.seconds)
    )
    warmup = link_collection("warm-up", workdir / "songs-warmup", small_songs[:2])
    log(f"  {len(small.paths)} + {len(large.paths)} songs ready in {time.perf_counter() - started:.0f} s")
    stores = workdir / "stores"

    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    log("starting a Prefect test server")
    with prefect_test_harness(server_startup_timeout=120):
        # The flows' task runs all report to this one server (the Dask workers never talk to it).
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        cold: list[IngestRun] = []
        warm: list[IngestRun] = []
        warm_quiet: list[IngestRun] = []
        plain: list[Measurement] = []
        raw: list[Measurement] = []
        raw_buffered: list[Measurement] = []
        raw_serial: list[Measurement] = []
        seeds: list[Measurement] = []
        with local_cluster(workers) as address:
            idle_small = worker_memory_mb(address)
            log("warm-up ingest (2 songs, not counted)")
            run_ingest(warmup, stores / "warm-up", workers=workers, dask_address=address)
            for round_index in range(args.repeats):
                steps = "(b) raw decode, (a) warm, (c) seed, plain Dask, (a) cold"
                log(f"round {round_index + 1}/{args.repeats}: {steps}")
                raw.append(raw_decode(small, workers=workers))
                raw_buffered.append(raw_decode(small, workers=workers, buffered=True))
                raw_serial.append(raw_decode(small, workers=1))
                warm.append(run_ingest(small, stores / "warm", workers=workers, dask_address=address))
                seeds.append(seed_serial(small, workdir / "seed-npy"))
                # What flow-run heartbeats still cost a run. Prefect 3.8's sync engine joined their
                # thread (1-s sleep steps) at the end of each run, ~1 s; flows.runtime.heartbeats no
                # longer joins it, so this row should now be close to the warm one.
                with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                    quiet = run_ingest(small, stores / "quiet", workers=workers, dask_address=address)
                warm_quiet.append(quiet)
                plain.append(run_plain_dask(small, stores / "plain", workers=workers, dask_address=address))
                cold.append(run_ingest(small, stores / "cold", workers=workers))
            own_small = worker_memory_mb(address)
            log("core ratios (a)/(b), (a)/(c), (e) on the synthetic collection")
            seed_dir = workdir / "seed-npy"
            cores = {"synthetic": core_ratios(small, stores, workers=workers, address=address,
                                              repeats=args.repeats, out_dir=seed_dir)}  # fmt: skip
            if not args.no_real:
                log(f"core ratios on the real collection ({DRASCULA_PACKAGE})")
                real = drascula_collection(workdir)
                cores["drascula"] = core_ratios(real, stores, workers=workers, address=address,
                                                repeats=args.repeats, out_dir=seed_dir)  # fmt: skip
        log(f"(d) the {LARGE_FACTOR}x collection on a fresh, warmed-up cluster, and (b) on it")
        with local_cluster(workers) as address:
            idle_large = worker_memory_mb(address)
            # Warm, as its row says: the workers import the tasks before the timed run. Two
            # songs peak well below the large run, so the workers' high-water marks stay its own.
            run_ingest(warmup, stores / "warm-up-large", workers=workers, dask_address=address)
            large_run = run_ingest(large, stores / "large", workers=workers, dask_address=address)
            own_large = worker_memory_mb(address)
        large_raw = raw_decode(large, workers=workers)
    log("decoder comparison and stage breakdown (serial)")
    decoders = decoder_comparison(small.paths[:PYDUB_FILES])
    stages = stage_breakdown(small, workdir / "stage-store")

    def median(runs: list[IngestRun] | list[Measurement]) -> tuple[float, float]:
        """Median (x real time, x real time per CPU second) of repeated runs."""
        return (
            statistics.median(run.x_realtime for run in runs),
            statistics.median(run.x_realtime_per_cpu for run in runs),
        )

    n = workers
    cold_x, cold_c = median(cold)
    warm_x, warm_c = median(warm)
    warm_quiet_x, _ = median(warm_quiet)
    raw_x, raw_c = median(raw)
    plain_x, plain_c = median(plain)
    raw_serial_x, _ = median(raw_serial)
    raw_buffered_x, raw_buffered_c = median(raw_buffered)
    seed_x, seed_c = median(seeds)
    small_rss = max(run.peak_worker_rss_mb for run in warm)
    large_rss = large_run.peak_worker_rss_mb
    rss_ratio = large_rss / small_rss
    small_minutes, large_minutes = small.seconds / 60, large.seconds / 60
    pydub, decode, ffmpeg = decoders["pydub"], decoders["decode_audio"], decoders["ffmpeg f32le"]
    warm_wall = statistics.median(run.wall_seconds for run in warm)
    quiet_wall = statistics.median(run.wall_seconds for run in warm_quiet)
    warm_body = statistics.median(run.body_seconds for run in warm)
    warm_body_x = statistics.median(run.audio_seconds / run.body_seconds for run in warm)

    def ratio_row(name: str, wall: float, idle: float, limit: float) -> tuple[str, str, str, str]:
        return (name, f"{wall:.2f}", f"{idle:.2f}", f"{target(wall, limit)} (idle: {verdict(idle, limit)})")

    rows = [
        ("measure", "wall", "CPU", "target / detail"),
        (f"(a) ingest cold, {n} workers (x real time)", f"{cold_x:.0f}x", f"{cold_c:.0f}x",
         "the flow starts its LocalCluster"),
        (f"(a) ingest warm, {n} workers (x real time)", f"{warm_x:.0f}x", f"{warm_c:.0f}x",
         "LocalCluster started beforehand"),
        ("(a) steps on plain Dask, warm, no Prefect", f"{plain_x:.0f}x", f"{plain_c:.0f}x",
         "same functions and batches"),
        (f"(b) ffmpeg f32le, {n} at a time (x real time)", f"{raw_x:.0f}x", f"{raw_c:.0f}x",
         "decoding speed limit"),
        ("(c) seed scripts, 1 process (x real time)", f"{seed_x:.0f}x", f"{seed_c:.0f}x",
         "wav + scipy + fft loop + npy"),
        ("(b) / (b) with 1 ffmpeg at a time", f"{raw_x / raw_serial_x:.2f}", "",
         f"ideal {n}; less: cores busy elsewhere"),
        ratio_row("(a) warm / (b)", warm_x / raw_x, warm_c / raw_c, TARGET_VS_DECODE),
        ratio_row("(a) cold / (b)", cold_x / raw_x, cold_c / raw_c, TARGET_VS_DECODE),
        ("(a) warm / (b) with -flush_packets 0", f"{warm_x / raw_buffered_x:.2f}",
         f"{warm_c / raw_buffered_c:.2f}", f"the limit with ingest's 32 kB writes: {raw_buffered_x:.0f}x"),
        ("(a) warm, the flow's body only / (b)", f"{warm_body_x / raw_x:.2f}", "",
         "without Prefect's flow-run set-up and teardown"),
        ("(a) warm, no flow-run heartbeats / (b)", f"{warm_quiet_x / raw_x:.2f}", "",
         "PREFECT_FLOWS_HEARTBEAT_FREQUENCY=None (in-process only)"),
        ratio_row("(a) warm / (c)", warm_x / seed_x, n * warm_c / seed_c, TARGET_VS_SEED),
        ratio_row("(a) cold / (c)", cold_x / seed_x, n * cold_c / seed_c, TARGET_VS_SEED),
        ("(b) / (c)", f"{raw_x / seed_x:.2f}", f"{n * raw_c / seed_c:.2f}", "the ceiling of (a) / (c)"),
        ("(a) warm / plain Dask", f"{warm_x / plain_x:.2f}", f"{warm_c / plain_c:.2f}", "what Prefect costs"),
        ("plain Dask / (b)", f"{plain_x / raw_x:.2f}", f"{plain_c / raw_c:.2f}",
         "what ingest_batch's work costs"),
        (f"(a) warm / (b), {LARGE_FACTOR}x collection ({large_minutes:.0f} min)",
         f"{large_run.x_realtime / large_raw.x_realtime:.2f}",
         f"{large_run.x_realtime_per_cpu / large_raw.x_realtime_per_cpu:.2f}",
         f"{large_run.x_realtime:.0f}x / {large_raw.x_realtime:.0f}x wall"),
        (f"(d) peak worker RSS, {small_minutes:.0f} min (MB)", f"{small_rss:.0f}", "",
         f"VmHWM {own_small[1]:.0f}; idle worker {idle_small[0]:.0f}"),
        (f"(d) peak worker RSS, {large_minutes:.0f} min (MB)", f"{large_rss:.0f}", "",
         f"VmHWM {own_large[1]:.0f}; idle worker {idle_large[0]:.0f}"),
        ("(d) large / small peak worker RSS", f"{rss_ratio:.2f}", "",
         target(rss_ratio, 1 + TARGET_RSS_GROWTH, at_most=True)),
        (f"pydub / decode_audio time, {PYDUB_FILES} songs serial", f"{pydub / decode:.2f}", "",
         f"{pydub:.2f} s / {decode:.2f} s"),
        ("decode_audio / ffmpeg f32le time, same songs", f"{decode / ffmpeg:.2f}", "",
         f"{decode:.2f} s / {ffmpeg:.2f} s"),
    ]  # fmt: skip
    stage_total = sum(value for stage, value in stages.items() if not stage.startswith(" "))
    warm_busy = statistics.median(run.task_seconds / (workers * run.wall_seconds) for run in warm)
    print()
    print(
        f"musicflow ingest benchmark: {len(small.paths)} songs, {small.seconds / 60:.1f} min of mp3 "
        f"(large: {len(large.paths)} songs, {large.seconds / 60:.1f} min); {workers} workers on "
        f"{os.cpu_count()} cores (1-min load {load_before:.1f} before, {os.getloadavg()[0]:.1f} after); "
        f"{_ffmpeg_version()}; median of {args.repeats} round(s)"
    )
    print(table(rows))
    print(
        "wall: audio seconds per wall second, and their ratios. CPU: audio seconds per CPU second of\n"
        "this process tree (workers, ffmpeg, Prefect server included); its ratios estimate an idle\n"
        f"machine: (a)/(b) = ratio of per-CPU rates, (a)/(c) = {n} x ratio (perfect scaling assumed)."
    )
    print()
    print(
        f"warm ingest of {small_minutes:.0f} min: {warm_wall:.2f} s wall, of which {warm_body:.2f} s in "
        f"the flow's body (the rest: Prefect's flow-run set-up and teardown; "
        f"{quiet_wall:.2f} s wall without heartbeats); ingest_batch busy "
        f"{100 * warm_busy:.0f}% of {workers} x wall; {warm[0].n_batches} batches"
    )
    print(
        f"ingest_batch's work per stage, serial, {small_minutes:.0f} min "
        f"({small.seconds / stage_total:.0f}x real time):"
    )
    for stage, seconds in stages.items():
        print(f"  {stage:<18} {seconds:6.2f} s  {100 * seconds / stage_total:4.0f}%")
    print()
    core_rows = [("collection", "songs", "min", "(a) warm / (b)", "(a) cold / (b)", "(a) warm / (c)",
                  "(a) cold / (c)", "(e) no-op / full")]  # fmt: skip
    for name, core in cores.items():
        vs_raw_warm, vs_raw_cold = core["warm_x"] / core["raw_x"], core["cold_x"] / core["raw_x"]
        vs_seed_warm, vs_seed_cold = core["warm_x"] / core["seed_x"], core["cold_x"] / core["seed_x"]
        core_rows.append((
            name, f"{core['songs']:.0f}", f"{core['minutes']:.1f}",
            f"{vs_raw_warm:.2f} {verdict(vs_raw_warm, TARGET_VS_DECODE)}",
            f"{vs_raw_cold:.2f} {verdict(vs_raw_cold, TARGET_VS_DECODE)}",
            f"{vs_seed_warm:.2f} {verdict(vs_seed_warm, TARGET_VS_SEED)}",
            f"{vs_seed_cold:.2f} {verdict(vs_seed_cold, TARGET_VS_SEED)}",
            f"{core['noop_ratio']:.3f} {verdict(core['noop_ratio'], TARGET_NOOP, at_most=True)}"
            f" ({core['noop_s']:.2f} s / {core['full_s']:.2f} s)",
        ))  # fmt: skip
    print(f"targets: (a)/(b) >= {TARGET_VS_DECODE}, (a)/(c) >= {TARGET_VS_SEED}, (e) <= {TARGET_NOOP} "
          "(wall, measured in this run; (a) cold includes starting the LocalCluster)")  # fmt: skip
    print(table(core_rows))
    for name, core in cores.items():
        print(f"  {name}: (a) warm {core['warm_x']:.0f}x, cold {core['cold_x']:.0f}x, "
              f"(b) {core['raw_x']:.0f}x, (c) {core['seed_x']:.0f}x real time")  # fmt: skip
    print()
    print("command:", shlex.join(sys.orig_argv))


def main_served(args: argparse.Namespace, workdir: Path, load_before: float) -> None:
    """(f) alone: ``musicflow serve`` ticks against (b), on a real collection's .ogg files."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tasks.store import direct

    collection = ogg_collection(args.served_collection, workdir)
    print("starting a Prefect test server, then musicflow serve")
    with prefect_test_harness(server_startup_timeout=120):
        api = str(PREFECT_API_URL.value())
        os.environ["PREFECT_API_URL"] = api
        ticks = served_ticks(api, collection, workdir / "stores" / "served", workers=args.workers,
                             repeats=args.repeats)  # fmt: skip
    print()
    print(
        f"musicflow serve ingest ticks: {ticks['songs']} songs, {ticks['minutes']:.1f} min of Ogg Vorbis "
        f"({args.served_collection}); {args.workers} workers on {os.cpu_count()} cores "
        f"(1-min load {load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after); {_ffmpeg_version()}; median of {args.repeats} round(s)"
    )
    print(ticks["cluster"])
    print(f"shard chunks written {'with O_DIRECT' if direct.enabled() else 'through the page cache'} "
          f"({direct.ENV_SWITCH}={os.environ.get(direct.ENV_SWITCH, 'unset')})")  # fmt: skip
    print(table(served_rows(ticks)))
    print("command:", shlex.join(sys.orig_argv))


if __name__ == "__main__":
    main()
