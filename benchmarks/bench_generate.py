"""Generation speed: the stateful step model against the seed's re-run method, on one model.

Run from the repository root::

    .venv/bin/python benchmarks/bench_generate.py [--seconds 30] [--rerun-budget 420] [--rounds 3]
        [--workdir DIR] [--quick]

On one model of the ``small`` preset (block 11025, rfft = 11026 features,
hidden 256), trained for 1 epoch on a few synthetic demo songs and cached in
the workdir, seeded with the first ``seq_len`` blocks of a validation song as
``musicflow generate`` does, everything in one process and one run:

(a) ``generate_blocks`` (stateful step model, what ``generate`` uses) at
    ``--seconds`` of audio, in x real time (audio seconds / wall seconds) and
    per CPU second of this process; target >= 10x. Each call includes its
    fixed cost (building the step model, tracing, reading the seed), which is
    also measured alone (a 1-block call) and reported;
(b) its time for 2x the length over the time for 1x; target <= 2.2 (linear).
    Also given net of the fixed cost, and for 8x over 4x the length;
(c) ``generate_blocks_rerun`` (the seed's method: the whole growing sequence
    re-run at every step) on the same model and seed at 1/4, 1/2, 1x and 2x
    the length, each only while its time predicted from the shorter ones fits
    ``--rerun-budget``: stateful / rerun speed ratio at every length it ran
    (the longest one labelled when that is not ``--seconds``: no extrapolation),
    and its own 2x-length ratio (quadratic: -> 4 for long runs; the expected
    value from the blocks it re-reads, given the seed of ``seq_len`` blocks, is
    printed next to it).

Both methods are checked to agree (max |difference| of the normalised blocks,
over the first steps and over a whole run). Stateful calls are repeated and
interleaved (median); the machine may be shared, so the ratios are the result,
and CPU-second ratios are given where wall time is noisy.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse
import logging
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _report import table, target

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SONGS = 4
SONG_SECONDS = (16.0, 24.0)  # longer than seq_len + 1 blocks (10.25 s) so every song gives windows
SEED = 7100
TARGET_X_REALTIME = 10.0
TARGET_LINEAR = 2.2
AGREE_STEPS = 8


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float


def timed(call: Callable[[], Any]) -> tuple[Timing, Any]:
    """Wall and CPU seconds (all threads of this process) of one call, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), result


def median(timings: list[Timing]) -> Timing:
    return Timing(statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings))


def prepare_model(workdir: Path) -> tuple[str, str]:
    """A store with a ``small`` model trained 1 epoch on demo songs (cached).

    Returns ``(store_url, model_id)``.
    """
    from tasks.model.repository import list_models
    from tasks.store.store import open_store

    store_url = str(workdir / "store")
    if (workdir / "store").exists():
        models = list_models(open_store(store_url))
        if models:
            return store_url, models[0]
    from tasks.audio.synth import write_demo_songs
    from tasks.config import FeatureConfig, IngestConfig, TrainConfig
    from tasks.model.train import train_model
    from tests.helpers import ingest_direct

    print(f"training a small model on {SONGS} demo songs in {workdir} (cached; not timed)...", flush=True)
    songs = workdir / "songs"
    write_demo_songs(songs, n_songs=SONGS, seconds=SONG_SECONDS, seed=SEED)
    ingest_direct(songs, store_url, IngestConfig(features=FeatureConfig()))
    result = train_model(store_url, TrainConfig.from_preset("small", epochs=1, val_fraction=0.25))
    return store_url, result.model_id


def blocks_read(n_blocks: int, seed_len: int) -> int:
    """Blocks the re-run method feeds through the model for ``n_blocks`` steps."""
    return n_blocks * seed_len + n_blocks * (n_blocks - 1) // 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, help="audio length of (a) and (c) (default 30)")
    parser.add_argument("--rounds", type=int, help="stateful calls per length, median (default 3)")
    parser.add_argument(
        "--rerun-budget",
        type=float,
        help="most seconds one re-run call may be expected to take (default 420)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "musicflow-bench-generate"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: defaults 5 s of audio, 1 round, budget 15 s"
    )
    args = parser.parse_args(argv)
    defaults = (5.0, 1, 15.0) if args.quick else (30.0, 3, 420.0)
    for name, default in zip(("seconds", "rounds", "rerun_budget"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.seconds <= 0 or args.rounds < 1 or args.rerun_budget <= 0:
        parser.error("--seconds, --rounds and --rerun-budget must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    store_url, model_id = prepare_model(args.workdir.resolve())

    import keras
    import tensorflow as tf

    # generate_blocks makes a new tf.function per call, on purpose here: TF warns about retracing.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from tasks.generation.generate import generate_blocks, generate_blocks_rerun, seed_blocks
    from tasks.model.repository import load_trained_model
    from tasks.store.store import open_store

    store = open_store(store_url)
    loaded = load_trained_model(store, model_id)
    seed, seed_source = seed_blocks(store, loaded)
    model, block_s = loaded.model, loaded.features.block_seconds
    n = max(4, round(args.seconds / block_s))
    lengths = sorted({max(1, n // 4), max(1, n // 2), n, 2 * n})  # both methods
    ours_lengths = [1, *lengths, 4 * n, 8 * n]  # the stateful one only, beyond 2n: linear once setup is paid
    load_before = os.getloadavg()

    def stateful(blocks: int) -> np.ndarray:
        return generate_blocks(model, seed, blocks)

    def rerun(blocks: int) -> np.ndarray:
        return generate_blocks_rerun(model, seed, blocks)

    print(f"model {model_id}: {model.count_params() / 1e6:.2f} M params; seed {seed_source}", flush=True)
    print("warming up both methods (not timed)...", flush=True)
    stateful(4)
    rerun(4)

    print(f"stateful: {args.rounds} round(s) of {', '.join(map(str, ours_lengths))} blocks", flush=True)
    ours: dict[int, list[Timing]] = {length: [] for length in ours_lengths}
    outputs: dict[int, np.ndarray] = {}
    for round_index in range(args.rounds):
        for length in ours_lengths if round_index % 2 == 0 else ours_lengths[::-1]:
            timing, outputs[length] = timed(lambda length=length: stateful(length))
            ours[length].append(timing)
    ours_med = {length: median(timings) for length, timings in ours.items()}

    theirs: dict[int, Timing] = {}
    theirs_out: dict[int, np.ndarray] = {}
    skipped: dict[int, float] = {}
    for length in lengths:
        if theirs:  # scaled by the blocks it re-reads from the longest run so far
            last = max(theirs)
            per_block = theirs[last].wall / blocks_read(last, seed.shape[0])
            if per_block * blocks_read(length, seed.shape[0]) > args.rerun_budget:
                skipped = {
                    rest: per_block * blocks_read(rest, seed.shape[0]) for rest in lengths if rest >= length
                }
                print(f"re-run: {length} blocks skipped, predicted {skipped[length]:.0f} s", flush=True)
                break
        print(f"re-run: {length} blocks ({length * block_s:.1f} s of audio)...", flush=True)
        theirs[length], theirs_out[length] = timed(lambda length=length: rerun(length))
    load_after = os.getloadavg()

    # ---------------------------------------------------------------- report
    def x_rt(length: int, timing: Timing) -> tuple[float, float]:
        return length * block_s / timing.wall, length * block_s / timing.cpu

    rows = [("measure", "value", "target / detail")]
    setup = ours_med[1]
    wall_rt, cpu_rt = x_rt(n, ours_med[n])
    rows += [
        (f"(a) stateful, {n * block_s:g} s of audio (x real time)", f"{wall_rt:.1f}",
         f"{target(wall_rt, TARGET_X_REALTIME)}; {ours_med[n].wall:.2f} s wall, median of {args.rounds}"),
        ("(a) stateful, audio s per CPU s", f"{cpu_rt:.1f}", f"{ours_med[n].cpu:.2f} CPU s"),
        ("(a) stateful fixed cost, 1-block call (s)", f"{setup.wall:.2f}",
         f"{setup.cpu:.2f} CPU s: step model, tracing, seed of {seed.shape[0]} blocks"),
        ("(a) stateful per step, net of fixed cost (ms)",
         f"{1000 * (ours_med[2 * n].wall - setup.wall) / (2 * n - 1):.1f}",
         f"from the {2 * n}-block call; {1000 * (ours_med[2 * n].cpu - setup.cpu) / (2 * n - 1):.1f} CPU ms"),
    ]  # fmt: skip
    ratio_wall = ours_med[2 * n].wall / ours_med[n].wall
    ratio_cpu = ours_med[2 * n].cpu / ours_med[n].cpu
    net = (ours_med[2 * n].wall - setup.wall) / max(ours_med[n].wall - setup.wall, 1e-9)
    net_cpu = (ours_med[2 * n].cpu - setup.cpu) / max(ours_med[n].cpu - setup.cpu, 1e-9)
    long_wall = ours_med[8 * n].wall / ours_med[4 * n].wall
    long_cpu = ours_med[8 * n].cpu / ours_med[4 * n].cpu
    rows += [
        (f"(b) stateful time {2 * n} / {n} blocks, wall", f"{ratio_wall:.2f}",
         target(ratio_wall, TARGET_LINEAR, at_most=True)),
        ("(b) stateful time 2x / 1x, CPU", f"{ratio_cpu:.2f}",
         target(ratio_cpu, TARGET_LINEAR, at_most=True)),
        ("(b) stateful time 2x / 1x, net of fixed cost", f"{net:.2f}",
         f"CPU {net_cpu:.2f}; linear = 2 (context)"),
        (f"(b) stateful time {8 * n} / {4 * n} blocks, wall", f"{long_wall:.2f}",
         f"CPU {long_cpu:.2f}; {8 * n * block_s:g} s in {ours_med[8 * n].wall:.2f} s (context)"),
    ]  # fmt: skip
    for length, timing in theirs.items():
        label = f"{length * block_s:g} s" + (" = --seconds" if length == n else "")
        rows += [
            (f"(c) re-run, {label} ({length} blocks)", f"{timing.wall:.2f} s",
             f"{x_rt(length, timing)[0]:.2f}x real time; {timing.cpu:.1f} CPU s"),
            (f"(c) stateful speedup over re-run, {label}, wall", f"{timing.wall / ours_med[length].wall:.1f}",
             f"CPU: {timing.cpu / ours_med[length].cpu:.1f}; stateful {ours_med[length].wall:.2f} s"),
        ]  # fmt: skip
    longest = max(theirs)
    if n not in theirs:
        predicted = skipped.get(n, float("nan"))
        rows.append(
            (f"(c) stateful speedup over re-run, {args.seconds:g} s", "not run",
             f"re-run predicted {predicted:.0f} s > budget {args.rerun_budget:g} s; "
             f"LONGEST MEASURED: {longest * block_s:g} s, speedup "
             f"{theirs[longest].wall / ours_med[longest].wall:.1f} (wall)")
        )  # fmt: skip
    pairs = [length for length in theirs if 2 * length in theirs]
    for length in pairs:
        double, single = theirs[2 * length], theirs[length]
        expected = blocks_read(2 * length, seed.shape[0]) / blocks_read(length, seed.shape[0])
        rows.append(
            (f"(c) re-run time {2 * length}/{length} blocks, wall", f"{double.wall / single.wall:.2f}",
             f"CPU {double.cpu / single.cpu:.2f}; blocks re-read: {expected:.2f} "
             f"(seed of {seed.shape[0]}); quadratic -> 4, linear = 2")
        )  # fmt: skip
    if not pairs:
        rows.append(
            ("(c) re-run 2x-length ratio", "not run", "no two lengths a factor 2 apart fit the budget")
        )

    first = min(AGREE_STEPS, longest)
    diff_first = float(np.abs(outputs[longest][:first] - theirs_out[longest][:first]).max())
    diff_all = float(np.abs(outputs[longest] - theirs_out[longest]).max())
    scale = float(np.abs(theirs_out[longest]).max())
    from tasks.model.network import build_model

    fresh = build_model(loaded.features.n_features, loaded.config)  # untrained weights, same shapes
    fresh_ours, fresh_theirs = (
        generate_blocks(fresh, seed, AGREE_STEPS),
        generate_blocks_rerun(fresh, seed, AGREE_STEPS),
    )
    moves = float(np.abs(np.diff(theirs_out[longest], axis=0)).max())
    rows += [
        (f"agreement, first {first} steps (max |diff|)", f"{diff_first:.1e}",
         f"normalised units; outputs reach |{scale:.2f}|, change by up to {moves:.2f} a step"),
        (f"agreement, all {longest} steps (max |diff|)", f"{diff_all:.1e}", "fed back: errors could grow"),
        (f"agreement, untrained model, {AGREE_STEPS} steps", f"{np.abs(fresh_ours - fresh_theirs).max():.1e}",
         f"outputs reach |{np.abs(fresh_theirs).max():.2f}|"),
    ]  # fmt: skip

    print()
    print(
        f"musicflow generation benchmark: model {model_id} (small preset, {model.count_params() / 1e6:.2f} M "
        f"params, {loaded.features.n_features} features, block {block_s:g} s), seed {seed.shape[0]} blocks; "
        f"{os.cpu_count()} cores, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    print("command:", shlex.join([sys.executable, *sys.argv]))


if __name__ == "__main__":
    main()
