"""Ingest at scale: many short songs, orchestration overhead, commit cost, memory.

Run from the repository root::

    .venv/bin/python benchmarks/bench_scale.py [--songs 1000] [--workers 2] [--workdir DIR] [--quick]

On a generated collection of ``--songs`` short songs (1-3 s each) and one 4x
smaller, in one run, each ingested by ``musicflow ingest`` as a subprocess
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
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.audio import ffmpeg_binary  # noqa: E402
from tasks.synth import write_demo_songs  # noqa: E402


def raw_decode_seconds(paths: list[Path], workers: int) -> tuple[float, float]:
    """Wall seconds to decode ``paths`` with raw ffmpeg, ``workers`` at a time, and the audio seconds."""
    ffmpeg = ffmpeg_binary()

    def decode(path: Path) -> float:
        out = subprocess.run(
            [ffmpeg, "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", "44100", "-"],
            capture_output=True,
            check=True,
        ).stdout
        return np.frombuffer(out, dtype="<f4").shape[0] / 44100

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        audio = sum(pool.map(decode, paths))
    return time.perf_counter() - started, audio


def ingest(source: Path, store: Path, workers: int, api_url: str) -> tuple[dict, float]:
    """Run ``musicflow ingest`` as a subprocess; returns its summary and the flow process's peak RSS (MB)."""
    command = [
        sys.executable,
        "-m",
        "musicflow.cli",
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--songs", type=int, default=1000, help="songs in the large collection")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "musicflow-bench-scale")
    parser.add_argument("--quick", action="store_true", help="200 songs, for a smoke test")
    args = parser.parse_args()
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
