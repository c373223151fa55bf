"""Training input pipeline and model cost: shards against numpy in memory, step time and RSS per preset.

Run from the repository root::

    .venv/bin/python benchmarks/bench_train.py [--quick] [--workdir DIR] [--workers 2]

Everything is measured in one run, on the same generated songs, and reported
as ratios where there is a baseline:

(a) ``model.fit`` steps/s of the ``small`` model fed by the shards
    (``make_tf_dataset(SongWindows(...), repeat=True)`` and ``steps_per_epoch``,
    as ``tasks/model/train.py`` builds it) against the same windows preloaded in
    numpy (``tf.data.Dataset.from_tensor_slices``, same shuffle and batch size,
    repeated),
    after a warm-up epoch of each, interleaved rounds; target >= 0.9, by wall
    time and by CPU time of the process (the shard reading competes with the
    model for the cores). On 24 songs (40-80 s) and on 96.
(b) step time and peak RSS of training ``small`` (batch 8, 11026-feature
    ``rfft`` dataset) and ``gruv`` (1024 units, batch 5, 22050-feature ``fft``
    dataset of the same 24 songs), a few steps each, in a subprocess each.
(c) peak RSS of the input pipeline alone over one epoch, on 64 songs and on
    256, a subprocess each; target: flat (4x / 1x <= 1.2). With the default
    shuffle buffer (256 windows; the 1x dataset has more, so the buffer is
    full in both), a small buffer (16) and none (catalog order).
    ``SongWindows.iter_spans`` yields a copy of each window's span of blocks,
    so the buffer holds only its windows, not their songs' arrays. The buffer is filled
    before the first batch, so with fewer windows than the buffer the RSS
    grows with the data.

Every measurement runs in a child process of this (small, TensorFlow-free)
process, and its peak RSS is the child's ``ru_maxrss`` from ``os.wait4``. Song
synthesis and ingest are cached in the workdir and never timed.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _report import table, target

SONG_SECONDS = (40.0, 80.0)
SEED = 31000
LARGE_FACTOR = 4
TARGET_INPUT_RATIO = 0.9
TARGET_RSS_GROWTH = 0.2
DEFAULT_BUFFER = 256
# (c): shuffle buffers (windows): the default, a small one, none.
PIPELINE_BUFFERS = (DEFAULT_BUFFER, 16, 0)
CHILD_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Plan:
    """How much of everything one run measures."""

    n_songs: int  # the 1x dataset of (a) and (b)
    c_songs: int  # the 1x dataset of (c): more training windows than the default shuffle buffer
    fit_epochs: tuple[int, int]  # per model.fit in (a), on the 1x and the 4x dataset (a run has many)
    rounds: tuple[int, int]
    warmup_steps: int
    timed_steps: dict[str, int]

    @classmethod
    def for_run(cls, *, quick: bool) -> Plan:
        if quick:
            return cls(6, 6, (2, 1), (1, 1), 1, {"small": 3, "gruv": 2})
        return cls(24, 64, (3, 3), (3, 2), 2, {"small": 8, "gruv": 4})


@dataclass(frozen=True)
class ChildRun:
    """What a child measured, with its own peak RSS and wall time as the parent saw them."""

    result: dict[str, Any]
    peak_rss_mb: float
    wall_seconds: float


# ---------------------------------------------------------------- child processes


def song_name(song_seed: int) -> str:
    return f"demo-{song_seed:05d}.mp3"


def _write_song(pool: str, song_seed: int) -> str:
    from tasks.audio.synth import write_demo_songs

    (path,) = write_demo_songs(pool, n_songs=1, seconds=SONG_SECONDS, seed=song_seed)
    return str(path)


def child_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Synthesise the missing songs, then ingest each dataset with the plain ingest functions."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tasks.config import FeatureConfig, IngestConfig
    from tasks.dataset.catalog import read_catalog
    from tasks.dataset.repository import commit_batch, dataset_dir, prepare_dataset
    from tasks.ingest.plan import make_batches, plan_ingest
    from tasks.ingest.sources import list_audio_files
    from tasks.ingest.worker import ingest_batch
    from tasks.store.store import open_store

    pool, workers = Path(spec["pool"]), int(spec["workers"])
    n_needed = max(dataset["n_songs"] for dataset in spec["datasets"])
    missing = [seed for seed in range(SEED, SEED + n_needed) if not (pool / song_name(seed)).exists()]
    built: dict[str, Any] = {"synthesised": len(missing), "datasets": {}}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as executor:
        started = time.perf_counter()
        list(executor.map(_write_song, [str(pool)] * len(missing), missing))
        built["synth_seconds"] = time.perf_counter() - started
        for dataset in spec["datasets"]:
            started = time.perf_counter()
            config = IngestConfig(features=FeatureConfig(transform=dataset["transform"]))
            store_url = dataset["store"]
            store = open_store(store_url)
            dataset_id = prepare_dataset(store, config)
            wanted = {song_name(seed) for seed in range(SEED, SEED + dataset["n_songs"])}
            files = [item for item in list_audio_files(str(pool)) if Path(item.uri).name in wanted]
            plan = plan_ingest(files, read_catalog(store, dataset_dir(dataset_id)))
            batches = make_batches(
                plan.todo, batch_bytes=int(config.batch_mb * 2**20), min_batches=2 * workers
            )
            futures = [
                executor.submit(
                    ingest_batch, batch, store_url=store_url, dataset_id=dataset_id, config=config
                )
                for batch in batches
            ]
            for future in as_completed(futures):
                commit_batch(store, dataset_id, future.result())
            rows = [row for row in read_catalog(store, dataset_dir(dataset_id)) if row.ok]
            if len(rows) != len(wanted):
                raise RuntimeError(f"{store_url}: {len(rows)} songs ingested, expected {len(wanted)}")
            built["datasets"][dataset["name"]] = {
                "store": store_url,
                "n_features": config.features.n_features,
                "songs": len(rows),
                "audio_seconds": sum(row.seconds for row in rows),
                "ingested": len(plan.todo),
                "ingest_seconds": time.perf_counter() - started,
            }
    return built


def _training_input(store_url: str, preset: str) -> tuple[Any, Any, int]:
    """(TrainConfig, the training SongWindows, n_features) exactly as ``train_model`` sets them up."""
    from tasks.config import FeatureConfig, TrainConfig
    from tasks.dataset.repository import CONFIG_FILE, dataset_dir, resolve_dataset
    from tasks.model.windows import Normalizer, SongWindows, load_split
    from tasks.store.store import open_store

    config = TrainConfig.from_preset(preset)
    store = open_store(store_url)
    dataset_id = resolve_dataset(store, None)
    features = FeatureConfig.from_dict(store.read_json(dataset_dir(dataset_id), CONFIG_FILE)["features"])
    train_rows, _ = load_split(store, dataset_id, val_fraction=config.val_fraction, seed=config.seed)
    windows = SongWindows(
        store_url,
        dataset_id,
        train_rows,
        seq_len=config.seq_len,
        hop=config.hop,
        normalizer=Normalizer.from_dataset(store, dataset_id),
    )
    return config, windows, features.n_features


def _shard_dataset(
    config: Any, windows: Any, n_features: int, *, buffer: int | None = None, repeat: bool = True
) -> Any:
    """The training pipeline as ``train_model`` builds it (endless: every epoch in turn, for
    ``fit(steps_per_epoch=...)``); ``buffer`` (windows) overrides the config's shuffle buffer,
    0 = no shuffle (catalog order, as the validation pipeline); ``repeat=False``: one epoch."""
    from tasks.model.windows import make_tf_dataset

    buffer = config.shuffle_buffer if buffer is None else buffer
    return make_tf_dataset(
        windows,
        n_features=n_features,
        batch_size=config.batch_size,
        shuffle_buffer=buffer,
        seed=config.seed if buffer else None,
        repeat=repeat,
    )


def _iterate(dataset: Any) -> tuple[int, float]:
    """(windows, seconds) of one pass over a batched dataset."""
    started = time.perf_counter()
    n_windows = sum(int(inputs.shape[0]) for inputs, _ in dataset)
    return n_windows, time.perf_counter() - started


def _step_timer() -> Any:
    """A Keras callback that keeps every step's seconds, one list per epoch."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.began = 0.0
            self.epochs: list[list[float]] = []

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epochs.append([])

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.began = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.epochs[-1].append(time.perf_counter() - self.began)

    return StepTimer()


def _measure_input(model: Any, store_url: str, *, epochs: int, rounds: int) -> dict[str, Any]:
    """One dataset of (a): preload the windows (which warms the page cache), then interleaved fits."""
    import numpy as np
    import tensorflow as tf

    from tasks.model.windows import steps_per_epoch

    config, windows, n_features = _training_input(store_url, "small")
    pairs = list(windows.iter_windows())
    inputs = np.stack([pair[0] for pair in pairs])
    targets = np.stack([pair[1] for pair in pairs])
    del pairs
    sources = {
        "shards": _shard_dataset(config, windows, n_features),
        "memory": tf.data.Dataset.from_tensor_slices((inputs, targets))
        .shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .repeat()
        .prefetch(tf.data.AUTOTUNE),
    }
    steps = steps_per_epoch(windows, config.batch_size)

    fits: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    for round_index in range(rounds):
        for name in list(sources) if round_index % 2 == 0 else list(sources)[::-1]:
            timer = _step_timer()
            started, cpu = time.perf_counter(), time.process_time()
            model.fit(
                sources[name],
                epochs=epochs,
                steps_per_epoch=steps,
                callbacks=[timer],
                shuffle=False,
                verbose=0,
            )
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            fits[name].append(
                {
                    "steps_per_s": sum(len(steps) for steps in timer.epochs) / wall,
                    "steps_per_cpu_s": sum(len(steps) for steps in timer.epochs) / cpu,
                    # Inside an epoch, without its first step (which waits for the shuffle buffer).
                    "steady_steps_per_s": sum(len(steps) - 1 for steps in timer.epochs)
                    / sum(sum(steps[1:]) for steps in timer.epochs),
                    "first_step_s": statistics.mean(steps[0] for steps in timer.epochs),
                }
            )
    return {
        "windows": windows.n_windows,
        "songs": len(windows.rows),
        "batch_size": config.batch_size,
        "steps_per_epoch": steps,
        "epochs": epochs,
        "rounds": rounds,
        "shuffle_buffer": config.shuffle_buffer,
        "preload_mb": (inputs.nbytes + targets.nbytes) / 2**20,
        "fits": fits,
    }


def child_input(spec: dict[str, Any]) -> dict[str, Any]:
    """(a) on each dataset, one model: fed from the shards and from numpy, rounds interleaved."""
    from tasks.config import TrainConfig
    from tasks.model.network import build_model

    config = TrainConfig.from_preset("small")
    measured = {}
    model = None
    for run in spec["runs"]:
        if model is None:
            n_features = _training_input(run["store"], "small")[2]
            model = build_model(n_features, config)
            # One epoch from each source: traces the train step, settles the allocator.
            _measure_input(model, run["store"], epochs=1, rounds=1)
        measured[run["name"]] = _measure_input(
            model, run["store"], epochs=run["epochs"], rounds=run["rounds"]
        )
    import keras
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    return {"datasets": measured, **versions}


def child_step(spec: dict[str, Any]) -> dict[str, Any]:
    """(b): a few ``model.fit`` steps of one preset on its training pipeline from the shards."""
    from tasks.model.network import build_model
    from tasks.model.windows import steps_per_epoch

    config, windows, n_features = _training_input(spec["store"], spec["preset"])
    model = build_model(n_features, config)
    steps = steps_per_epoch(windows, config.batch_size)
    # Skip each pass's short last batch (a cheaper step) and its first (the shuffle buffer fill).
    short_last = windows.n_windows % config.batch_size != 0
    wanted = spec["warmup_steps"] + spec["timed_steps"]
    usable = [
        step
        for step in range(wanted * (steps + 2))
        if step % steps != 0 and not (short_last and step % steps == steps - 1)
    ]
    if len(usable) < wanted:
        raise RuntimeError(f"{windows.n_windows} windows give too few full batches of {config.batch_size}")
    timer = _step_timer()
    data = _shard_dataset(config, windows, n_features)
    model.fit(
        data, epochs=1, steps_per_epoch=usable[wanted - 1] + 1, callbacks=[timer], shuffle=False, verbose=0
    )
    seconds = timer.epochs[0]
    return {
        "preset": spec["preset"],
        "hidden": config.hidden,
        "batch_size": config.batch_size,
        "n_features": n_features,
        "params": int(model.count_params()),
        "step_seconds": [seconds[step] for step in usable[spec["warmup_steps"] : wanted]],
        "windows": windows.n_windows,
    }


def child_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """(c): one epoch of the training input pipeline, no model."""
    config, windows, n_features = _training_input(spec["store"], "small")
    n_windows, seconds = _iterate(
        _shard_dataset(config, windows, n_features, buffer=spec["buffer"], repeat=False)
    )
    return {
        "windows": n_windows,
        "songs": len(windows.rows),
        "seconds": seconds,
        "window_mb": (config.seq_len + 1) * n_features * 4 / 2**20,
    }


CHILDREN = {
    "build": child_build,
    "input": child_input,
    "step": child_step,
    "pipeline": child_pipeline,
}


def run_child_main(task: str, spec_json: str) -> None:
    result = CHILDREN[task](json.loads(spec_json))
    from tasks.ingest.memory import peak_rss_mb

    print(json.dumps({**result, "vmhwm_mb": peak_rss_mb()}), flush=True)


# ---------------------------------------------------------------- parent


def run_child(task: str, spec: dict[str, Any], *, logs: Path, label: str) -> ChildRun:
    """Run one measurement in a fresh interpreter; its peak RSS is its own ``ru_maxrss``.

    ``os.wait4`` gives the rusage of exactly this child (``RUSAGE_CHILDREN``
    would give the largest of all children so far).
    """
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{label}.out", logs / f"{label}.err"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", task, "--spec", json.dumps(spec)]
    started = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > CHILD_TIMEOUT_S:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    wall = time.perf_counter() - started
    lines = out_path.read_text().splitlines()
    if process.returncode != 0 or not lines:
        tail = "\n".join(err_path.read_text().splitlines()[-25:])
        raise RuntimeError(f"child {label} failed (exit {process.returncode}, {wall:.0f} s):\n{tail}")
    return ChildRun(json.loads(lines[-1]), usage.ru_maxrss / 1024, wall)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 6 and 24 songs, 1 round, fewer steps"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "musicflow-bench-train",
        help="songs and datasets are cached here",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes for song synthesis and ingest")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child_main(args.child, args.spec)
        return
    plan = Plan.for_run(quick=args.quick)
    workdir: Path = args.workdir.resolve()
    logs = workdir / "logs"
    log = print  # progress lines; the report comes at the end
    started = time.perf_counter()

    n_large = LARGE_FACTOR * plan.n_songs
    stores = workdir / "stores"
    log(f"preparing {LARGE_FACTOR * max(plan.n_songs, plan.c_songs)} songs, 5 datasets in {workdir} (cached)")
    built = run_child(
        "build",
        {
            "pool": str(workdir / "pool"),
            "workers": args.workers,
            "datasets": [
                {"name": "rfft", "transform": "rfft", "n_songs": plan.n_songs,
                 "store": str(stores / f"rfft-{plan.n_songs}")},
                {"name": "rfft_large", "transform": "rfft", "n_songs": n_large,
                 "store": str(stores / f"rfft-{n_large}")},
                {"name": "fft", "transform": "fft", "n_songs": plan.n_songs,
                 "store": str(stores / f"fft-{plan.n_songs}")},
                {"name": "c", "transform": "rfft", "n_songs": plan.c_songs,
                 "store": str(stores / f"rfft-{plan.c_songs}")},
                {"name": "c_large", "transform": "rfft", "n_songs": LARGE_FACTOR * plan.c_songs,
                 "store": str(stores / f"rfft-{LARGE_FACTOR * plan.c_songs}")},
            ],
        },
        logs=logs,
        label="build",
    ).result  # fmt: skip
    datasets = built["datasets"]
    ingested = sum(dataset["ingested"] for dataset in datasets.values())
    log(
        f"  synthesised {built['synthesised']} songs in {built['synth_seconds']:.0f} s, "
        f"ingested {ingested} in {sum(d['ingest_seconds'] for d in datasets.values()):.0f} s"
    )
    small_url, large_url, fft_url = (datasets[name]["store"] for name in ("rfft", "rfft_large", "fft"))

    log("(c) input pipeline alone, one epoch: 1x and 4x datasets, shuffle buffers 256 (default), 16, none")
    pipeline: dict[tuple[str, int], ChildRun] = {}
    for buffer in PIPELINE_BUFFERS:
        for name, key in (("1x", "c"), ("4x", "c_large")):
            pipeline[name, buffer] = run_child(
                "pipeline",
                {"store": datasets[key]["store"], "buffer": buffer},
                logs=logs,
                label=f"pipeline-{name}-{buffer}",
            )
    log("(b) training steps: small on rfft, gruv on fft")
    steps: dict[str, ChildRun] = {}
    for preset, url in (("small", small_url), ("gruv", fft_url)):
        steps[preset] = run_child(
            "step",
            {"store": url, "preset": preset, "warmup_steps": plan.warmup_steps,
             "timed_steps": plan.timed_steps[preset]},
            logs=logs,
            label=f"step-{preset}",
        )  # fmt: skip
    log("(a) model.fit fed from the shards and from numpy in memory, 1x and 4x datasets")
    fed = run_child(
        "input",
        {"runs": [
            {"name": "1x", "store": small_url, "epochs": plan.fit_epochs[0], "rounds": plan.rounds[0]},
            {"name": "4x", "store": large_url, "epochs": plan.fit_epochs[1], "rounds": plan.rounds[1]},
        ]},
        logs=logs,
        label="input",
    ).result  # fmt: skip

    print()
    print(report(datasets, pipeline, steps, fed))
    print(f"total {time.perf_counter() - started:.0f} s; child logs in {logs}")
    print()
    print("command:", shlex.join(sys.orig_argv))


def _median_of(fits: list[dict[str, float]], key: str) -> float:
    return statistics.median(fit[key] for fit in fits)


def report(
    datasets: dict[str, Any],
    pipeline: dict[tuple[str, int], ChildRun],
    steps: dict[str, ChildRun],
    fed: dict[str, Any],
) -> str:
    """The results table and its notes."""

    def vmhwm(run: ChildRun) -> str:
        return f"VmHWM {run.result['vmhwm_mb']:.0f}"

    buffer = DEFAULT_BUFFER
    rows = [("measure", "value", "target / detail")]
    for name, measured in fed["datasets"].items():
        fits = measured["fits"]
        shard_rate, memory_rate = (_median_of(fits[key], "steps_per_s") for key in ("shards", "memory"))
        shard_cpu, memory_cpu = (_median_of(fits[key], "steps_per_cpu_s") for key in ("shards", "memory"))
        steady = _median_of(fits["shards"], "steady_steps_per_s") / _median_of(
            fits["memory"], "steady_steps_per_s"
        )
        first_shards, first_memory = (_median_of(fits[key], "first_step_s") for key in ("shards", "memory"))
        where = f"{name} ({measured['songs']} songs)"
        rounds = f"median of {measured['rounds']} fit(s) of {measured['epochs']} epoch(s)"
        rows += [
            (f"(a) {where} fit steps/s, from shards", f"{shard_rate:.3f}",
             f"{measured['windows']} windows, {measured['steps_per_epoch']} steps/epoch; {rounds}"),
            (f"(a) {where} fit steps/s, numpy in memory", f"{memory_rate:.3f}",
             f"from_tensor_slices of {measured['preload_mb']:.0f} MB, same shuffle/batch"),
            (f"(a) {where} shards / memory, whole epochs", f"{shard_rate / memory_rate:.2f}",
             target(shard_rate / memory_rate, TARGET_INPUT_RATIO)),
            (f"(a) {where} shards / memory, steps per CPU s", f"{shard_cpu / memory_cpu:.2f}",
             f"{target(shard_cpu / memory_cpu, TARGET_INPUT_RATIO)}; "
             f"{shard_cpu:.2f} vs {memory_cpu:.2f} steps/CPU s"),
            (f"(a) {where} shards / memory, inside epochs", f"{steady:.2f}",
             "each epoch's first step left out"),
            (f"(a) {where} first step of an epoch (s)", f"{first_shards:.2f}",
             f"memory {first_memory:.2f}; shards wait for the shuffle buffer "
             f"({min(measured['shuffle_buffer'], measured['windows'])} windows)"),
        ]  # fmt: skip
    step_s = {key: statistics.median(run.result["step_seconds"]) for key, run in steps.items()}
    for preset, what in (("small", "batch 8, rfft 11026"), ("gruv", "batch 5, fft 22050")):
        run = steps[preset]
        rows += [
            (f"(b) {preset} step (s), {what}", f"{step_s[preset]:.3f}",
             f"build_model, {run.result['params'] / 1e6:.2f} M params, "
             f"median of {len(run.result['step_seconds'])}"),
            (f"(b) {preset} training peak RSS (MB)", f"{run.peak_rss_mb:.0f}",
             f"{vmhwm(run)}; with a shuffle buffer of {min(buffer, run.result['windows'])} windows"),
        ]  # fmt: skip
    gruv_over_small = step_s["gruv"] / step_s["small"]
    rows.append(
        ("(b) gruv / small step time, build_model", f"{gruv_over_small:.1f}",
         f"per window: {gruv_over_small * 8 / 5:.1f}x")
    )  # fmt: skip
    window_mb = pipeline["1x", buffer].result["window_mb"]
    for size in PIPELINE_BUFFERS:
        setting = f"shuffle buffer {size}" if size else "no shuffle"
        setting += " (default)" if size == buffer else ""
        for name in ("1x", "4x"):
            run = pipeline[name, size]
            rows.append(
                (f"(c) pipeline peak RSS, {name} ({run.result['songs']} songs), {setting} (MB)",
                 f"{run.peak_rss_mb:.0f}",
                 f"{run.result['windows']} windows, {vmhwm(run)}, {run.result['seconds']:.1f} s")
            )  # fmt: skip
        ratio = pipeline["4x", size].peak_rss_mb / pipeline["1x", size].peak_rss_mb
        rows.append(
            (f"(c) 4x / 1x pipeline peak RSS, {setting}", f"{ratio:.2f}",
             target(ratio, 1 + TARGET_RSS_GROWTH, at_most=True))
        )  # fmt: skip
        if size:
            held = pipeline["4x", size].peak_rss_mb - pipeline["4x", 0].peak_rss_mb
            slots = min(size, pipeline["4x", size].result["windows"])
            rows.append(
                (f"(c) 4x: RSS over no shuffle / buffer size, {setting}", f"{held / (slots * window_mb):.2f}",
                 f"{held:.0f} MB for {slots} buffered windows of {window_mb:.1f} MB; 1 = the buffer alone")
            )  # fmt: skip

    small_data = datasets["rfft"]
    fft_window_mb = window_mb * datasets["fft"]["n_features"] / small_data["n_features"]
    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return "\n".join(
        [
            f"musicflow training benchmark: 1x = {small_data['songs']} songs, "
            f"{small_data['audio_seconds'] / 60:.1f} min; 4x = {datasets['rfft_large']['songs']} songs, "
            f"{datasets['rfft_large']['audio_seconds'] / 60:.1f} min; (c): 1x = {datasets['c']['songs']}, "
            f"4x = {datasets['c_large']['songs']} songs; train split, windows of 40 blocks; "
            f"{os.cpu_count()} cores; TensorFlow {fed['tensorflow']}, Keras {fed['keras']}",
            table(rows),
            "",
            f"a window (its span of 41 blocks: inputs + targets) is {window_mb:.1f} MB for rfft, "
            f"{fft_window_mb:.1f} MB for fft; "
            f"a full shuffle buffer of {buffer} windows holds {buffer * window_mb / 1024:.2f} GB (rfft), "
            f"{buffer * fft_window_mb / 1024:.2f} GB (fft): the pipeline's RSS grows with the dataset "
            f"until it has {buffer} training windows ({buffer * 10 / 60:.0f} min of audio at hop 40), "
            "then stays flat; iter_spans yields a copy of each span, so a buffered window holds "
            "only itself, not its song's arrays; the no-shuffle rows are mostly TensorFlow itself",
            f"peak RSS is each child's ru_maxrss (os.wait4); it includes this parent's {parent_mb:.0f} MB "
            "at spawn (Linux keeps the high-water mark across exec); VmHWM is the child's own",
        ]
    )


if __name__ == "__main__":
    main()
