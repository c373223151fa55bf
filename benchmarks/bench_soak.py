"""Soak: transient faults never cost a song (issue 26, the soak target). Not part of the test suite.

Run from the repository root::

    .venv/bin/python benchmarks/bench_soak.py [--songs 200] [--seconds 1.0 2.0] [--workers 2]
                                              [--batch-mb 1.0] [--failure-rate 0.1] [--workdir DIR]
                                              [--max-reruns 5]

``--songs`` short synthetic songs (WAV, cached in the workdir) are ingested with ``musicflow ingest``
from a source and into a store that are both ``faulty://`` folders (:mod:`tasks.store.faults`): a
``--failure-rate`` share of file writes and reads fail at random (EIO), in the flow process and its
Dask workers alike, and one Dask worker is killed (SIGKILL) once the run has committed its first batch
(in the first re-run that does, if a faulty run stops before its first commit). Batches are
``--batch-mb`` of audio (a few songs each), as they would be in a large collection. Then
the same command again, a plain re-run with no flag and the faults still on, until one exits 0 (at
most ``--max-reruns``). Checked at the end, with the faults off: every song is in the catalog
exactly once and ``ok``, no row is ``failed`` (every song is good audio: any failed row would be an
infrastructure error blamed on a song), the store is consistent (``musicflow check`` exits 0).

Reported as ratios measured in this run: songs in after the faulty run, re-runs needed, faults
injected per song, and the wall time of all the runs against a clean ingest of the same songs into
a fresh store (same command, no faults, no kill).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from _report import MUSICFLOW, ROOT, table


def _dask_workers(parent: int) -> list[psutil.Process]:
    """The Dask worker processes under ``parent``: the LocalCluster's nannies spawn them with
    multiprocessing (``spawn_main``). Not any Python leaf: one is multiprocessing's resource tracker,
    and one was an ephemeral Prefect API server the run used (killing it hung the run at exit)."""
    workers: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(parent).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if "spawn_main" in " ".join(child.cmdline()):
                    workers.append(child)
    return workers


def ingest(
    source: str, store: str, options: list[str], env: dict[str, str], *, kill_after: Path | None
) -> dict[str, Any]:
    """One ``musicflow ingest`` run: exit code, wall seconds, its JSON summary, the worker killed."""
    command = [*MUSICFLOW, "ingest", source, "--store", store, *options, "--json"]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killed = None
    segments = (lambda: len(list(kill_after.glob("datasets/*/catalog/*.parquet")))) if kill_after else None
    before = segments() if segments else 0
    while segments is not None and killed is None and process.poll() is None:
        if segments() > before:  # this run committed its first batch: it is mid-run
            found = _dask_workers(process.pid)
            if found:
                killed = found[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    summary = json.loads(stdout) if stdout.strip().startswith("{") else {}
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    print(f"ingest: exit {process.returncode} after {wall:.0f} s; {last}", file=sys.stderr, flush=True)
    return {"code": process.returncode, "wall": wall, "summary": summary, "killed": killed, "last": last}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--songs", type=int, default=200)
    parser.add_argument("--seconds", type=float, nargs=2, default=(1.0, 2.0))
    parser.add_argument("--workers", type=int, default=2)
    # A few songs per batch (1-2 s WAVs are 0.2-0.35 MB): with ingest's 32 MB all 200 songs fit in one
    # batch per worker, every batch meets a fault somewhere, and no run gets past its retries.
    parser.add_argument("--batch-mb", type=float, default=1.0)
    parser.add_argument("--failure-rate", type=float, default=0.1)
    parser.add_argument("--max-reruns", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from tasks.audio.synth import write_demo_songs
    from tasks.dataset.catalog import catalog_log, read_catalog, table_to_rows
    from tasks.dataset.repository import dataset_dir
    from tasks.store.store import open_store

    workdir = args.workdir or Path(tempfile.gettempdir()) / "musicflow-soak"
    songs_dir = workdir / f"songs-{args.songs}-{args.seconds[0]:g}-{args.seconds[1]:g}"
    songs = write_demo_songs(
        songs_dir, n_songs=args.songs, seconds=tuple(args.seconds), seed=2600, format="wav"
    )
    for name in ("store", "clean", "faults.json", "faults.log"):
        path = workdir / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    store_dir, clean_dir, controls, log = (
        workdir / name for name in ("store", "clean", "faults.json", "faults.log")
    )
    controls.write_text(
        json.dumps(
            {
                "write_failure_rate": args.failure_rate,
                "read_failure_rate": args.failure_rate,
                "seed": 26,
                "log": str(log),
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUSICFLOW_FAULTS": str(controls)}
    clean_env = {key: value for key, value in env.items() if key != "MUSICFLOW_FAULTS"}
    source, store = f"faulty://{songs_dir}", f"faulty://{store_dir}"

    options = ["--workers", str(args.workers), "--batch-mb", f"{args.batch_mb:g}"]
    clean = ingest(source, f"faulty://{clean_dir}", options, clean_env, kill_after=None)
    assert clean["code"] == 0, clean["last"]
    runs = [ingest(source, store, options, env, kill_after=store_dir)]
    while runs[-1]["code"] != 0 and len(runs) <= args.max_reruns:
        # A faulty run that stopped before its first commit killed no worker: the next one does.
        killing = store_dir if not any(run["killed"] for run in runs) else None
        runs.append(ingest(source, store, options, env, kill_after=killing))
    faults = log.read_text().splitlines() if log.exists() else []
    n_reads = sum(line.startswith("EIO-read") for line in faults)

    dataset_id = next(run["summary"]["dataset_id"] for run in [*runs, clean] if run["summary"])
    rows = read_catalog(open_store(store), dataset_dir(dataset_id))
    names = sorted(Path(row.source).name for row in rows)
    checked = subprocess.run(
        [*MUSICFLOW, "check", "--store", store], cwd=ROOT, env=clean_env, capture_output=True, text=True
    )
    first = runs[0]["summary"]
    every_song_once = names == sorted(song.name for song in songs)
    # The catalog's view keeps one row a song: count the rows committed ok in the log itself (back to
    # its last snapshot, which is such a view), so that a song committed twice shows.
    log = catalog_log(open_store(store), dataset_dir(dataset_id))
    ok_commits: dict[str, int] = {}
    for version in reversed(log.versions()):
        segment, kind, _ = log._read_version(version)
        for row in table_to_rows(segment):
            ok_commits[row.song_id] = ok_commits.get(row.song_id, 0) + row.ok
        if kind == "snapshot":
            break
    n_failed = sum(not row.ok for row in rows)
    print(
        table(
            [
                ("measure", "value"),
                ("songs", str(len(songs))),
                (
                    "faults injected (EIO on reads / writes), per song",
                    f"{len(faults)} ({n_reads} / {len(faults) - n_reads}), {len(faults) / len(songs):.2f}",
                ),
                (
                    "Dask worker killed mid-run (in run #)",
                    ", ".join(str(n) for n, run in enumerate(runs, 1) if run["killed"]) or "none",
                ),
                (
                    "faulty run: exit code, songs ok / songs",
                    f"{runs[0]['code']}, {first.get('songs_ok', 0) / len(songs):.3f}",
                ),
                (
                    "faulty run: songs left unrecorded / songs",
                    f"{first.get('songs_not_ingested', 0) / len(songs):.3f}",
                ),
                ("faulty run: its last line", runs[0]["last"][:100]),
                ("plain re-runs until exit 0 (faults still on)", str(len(runs) - 1)),
                ("exit codes of the runs", " ".join(str(run["code"]) for run in runs)),
                ("every song in the catalog exactly once", str(every_song_once)),
                (
                    "ok rows a song in the catalog log (min / max)",
                    f"{min(ok_commits.values(), default=0)} / {max(ok_commits.values(), default=0)}",
                ),
                ("failed rows", str(n_failed)),
                ("musicflow check exit code", str(checked.returncode)),
                (
                    "wall of all runs / a clean run's wall",
                    f"{sum(run['wall'] for run in runs) / clean['wall']:.2f}",
                ),
            ]
        )
    )
    print(f"\ncommand: {sys.executable} benchmarks/bench_soak.py " + " ".join(sys.argv[1:]))
    assert every_song_once and n_failed == 0 and checked.returncode == 0 and runs[-1]["code"] == 0
    assert set(ok_commits.values()) == {1}, "a song committed ok more than once"
    assert any(run["killed"] for run in runs), "no Dask worker was killed: the soak did not test that"


if __name__ == "__main__":
    main()
