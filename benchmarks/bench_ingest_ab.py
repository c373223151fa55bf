"""Ingest's worker side at another commit against this tree, A/B in one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_ingest_ab.py --baseline REV [--rounds 8]
                                                  [--collection synthetic|drascula] [--workdir DIR]

On these shared cores one ingest run moves 10-15% with the machine's other load, more than most
changes to the decoding path are worth, so a change is judged here, not by two benchmark runs:
two warm LocalClusters, one importing the project from the baseline commit (``git archive``), one
from this tree, run the ``ingest`` flow on the same songs, in alternating order, ``--rounds`` times
each. The flow process (batching, commits, Prefect) is this tree's for both: what is compared is
what the workers run, ``tasks.ingest.worker.ingest_batch`` and everything it calls, so the baseline must
accept the same call. Reported: the medians of x real time per wall second and per CPU second of
this process tree, their ratios, and the workers' CPU per run split into their own (Python) and
their children's (ffmpeg). Songs are bench_ingest.py's (cached in the workdir).
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import shlex
import statistics
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import bench_ingest as bench
from _report import ROOT, commit_tree, table

WORKERS = 2


@dataclass(frozen=True)
class Run:
    x_realtime: float
    x_realtime_per_cpu: float
    worker_python_s: float
    worker_ffmpeg_s: float


def worker_cpu(address: str) -> tuple[float, float]:
    """CPU seconds of the cluster's worker processes so far: (their own, their reaped children's)."""
    import psutil
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        pids = client.run(os.getpid).values()
    own = children = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        own += times.user + times.system
        children += times.children_user + times.children_system
    return own, children


def timed_run(collection: bench.Collection, store: Path, address: str) -> Run:
    own_before, children_before = worker_cpu(address)
    run = bench.run_ingest(collection, store, workers=WORKERS, dask_address=address)
    own_after, children_after = worker_cpu(address)
    return Run(
        run.x_realtime, run.x_realtime_per_cpu, own_after - own_before, children_after - children_before
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare this tree with")
    parser.add_argument("--rounds", type=int, default=8, help="runs of each side, in alternating order")
    parser.add_argument("--collection", choices=("synthetic", "drascula"), default="synthetic")
    parser.add_argument("--minutes", type=float, default=20.0, help="synthetic songs to ingest")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "musicflow-bench",
                        help="songs are cached here; stores are made and removed here")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.minutes <= 0:
        parser.error(f"--rounds and --minutes must be positive (got {args.rounds}, {args.minutes})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
    workdir: Path = args.workdir.resolve()
    if args.collection == "drascula":
        collection = bench.drascula_collection(workdir)
    else:
        pool = bench.make_pool(workdir / "pool", args.minutes * 60 + bench.SONG_SECONDS[1], workers=WORKERS)
        collection = bench.link_collection(
            "ab", workdir / "songs-ab", bench.prefix_lasting(pool, args.minutes * 60)
        )
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    sides = (f"baseline {args.baseline}", "this tree")
    width = max(map(len, sides))
    runs: dict[str, list[Run]] = {side: [] for side in sides}
    print(f"{collection.name}: {len(collection.paths)} songs, {collection.seconds / 60:.1f} min; "
          f"{args.rounds} rounds")  # fmt: skip
    with prefect_test_harness(server_startup_timeout=120), commit_tree(args.baseline) as baseline:
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        with bench.local_cluster(WORKERS, baseline) as old, bench.local_cluster(WORKERS, ROOT) as new:
            addresses = dict(zip(sides, (old, new), strict=True))
            for address in addresses.values():  # both warm: the workers import the project first
                bench.run_ingest(
                    collection, workdir / "stores" / "ab-warm-up", workers=WORKERS, dask_address=address
                )
            for round_index in range(args.rounds):
                for side in sides if round_index % 2 == 0 else sides[::-1]:
                    run = timed_run(collection, workdir / "stores" / "ab", addresses[side])
                    runs[side].append(run)
                    print(
                        f"  round {round_index + 1}: {side:<{width}} {run.x_realtime:5.0f}x  workers: "
                        f"Python {run.worker_python_s:.2f} s, ffmpeg {run.worker_ffmpeg_s:.2f} s"
                    )

    def median(side: str, field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs[side])

    rows = [("side", "x real time", "per CPU s", "workers' Python s", "workers' ffmpeg s")]
    for side in sides:
        rows.append((
            side,
            f"{median(side, 'x_realtime'):.0f}x",
            f"{median(side, 'x_realtime_per_cpu'):.0f}x",
            f"{median(side, 'worker_python_s'):.2f}",
            f"{median(side, 'worker_ffmpeg_s'):.2f}",
        ))  # fmt: skip
    wall = median(sides[1], "x_realtime") / median(sides[0], "x_realtime")
    cpu = median(sides[1], "x_realtime_per_cpu") / median(sides[0], "x_realtime_per_cpu")
    wins = sum(new.x_realtime > old.x_realtime for old, new in zip(*runs.values(), strict=True))
    print()
    print(table(rows))
    print(
        f"this tree / baseline: {wall:.3f} (wall), {cpu:.3f} (per CPU s); faster in {wins} of "
        f"{args.rounds} rounds (medians of {args.rounds}; ingest's worker side only)"
    )
    print("command:", shlex.join(sys.orig_argv))


if __name__ == "__main__":
    main()
