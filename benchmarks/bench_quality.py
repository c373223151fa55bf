"""bench_quality: the spectral default against the seed's GRUV path, on the same songs and the same
training wall-time budget.

For each collection (the demo songs of ``make demo``, and Debian's ``drascula-music``: 31 Ogg
tracks, 47 min, apt-get installed when missing) and each path:

- ``spectral`` (the default): ``stft`` features (128 log-mel bands, 1024/256 at 22.05 kHz), the
  ``spectral`` preset (mixture density over 4-frame steps), Griffin-Lim at generation;
- ``gruv`` (the seed's method): ``rfft`` blocks of 11025 samples at 44.1 kHz, the ``small`` preset
  (MSE on real||imag);

it ingests, trains for the budget (whole epochs; the epoch that crosses it is the last), generates
8 clips from validation seeds and reports: the quality score (``tasks/generation/quality.py``, against the
validation songs decoded from their files, the same reference for both paths), clips collapsed out
of 8, loudness difference from the training songs, generation speed in x real time (model steps
plus the inverse transform, phase reconstruction included), training wall time and epochs,
storage per hour of audio. It also measures the ingest hot path: the stft featurizer (numpy/scipy)
against librosa's ``stft`` + ``melspectrogram`` on the same audio, as a ratio in one run.

    python benchmarks/bench_quality.py                      # both collections, 150 s budget
    python benchmarks/bench_quality.py --collection demo --budget 60 --clips 4

Targets (issue 12): quality >= 0.5 on both collections where the GRUV path scores <= 0; 0 of 8
clips collapsed; loudness within 6 dB; generation >= 10x real time on 2 cores; <= 0.35 GB/h.
Run it under the CPU lock on a shared machine: ``flock /tmp/musicflow-cpu.lock python ...``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DO_NOT_TRACK", "1")

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _debian import collection_songs
from _report import table, target

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = {
    "spectral": {"transform": "stft", "preset": "spectral"},
    "gruv": {"transform": "rfft", "preset": "small"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", choices=["demo", "drascula", "both"], default="both")
    parser.add_argument("--budget", type=float, default=150.0, help="training wall time per path, seconds")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep stores here [a temp folder]")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="write the spectral model's first clip beside a training song",
    )
    return parser.parse_args(argv)


def collection_dir(name: str, workdir: Path) -> Path:
    if name == "demo":
        from tasks.audio.synth import write_demo_songs

        folder = workdir / "demo-songs"
        write_demo_songs(folder, n_songs=12, seconds=(10.0, 40.0))  # what `make demo` makes
        return folder
    folder = workdir / "drascula-songs"
    folder.mkdir(parents=True, exist_ok=True)
    for path in collection_songs("drascula"):
        target_path = folder / Path(path).name
        if not target_path.exists():
            target_path.symlink_to(path)
    return folder


class Budget:
    """A Keras callback that stops training after the epoch that passes ``seconds``."""

    def __new__(cls, seconds: float) -> Any:
        import keras

        class _Budget(keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                if time.perf_counter() - self.started > seconds:
                    self.model.stop_training = True

        return _Budget()


def dataset_bytes(store_url: str, dataset_id: str) -> int:
    folder = Path(store_url, "datasets", dataset_id, "shards")
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def generation_speed(store_url: str, model_id: str, seconds: float) -> float:
    """x real time of one clip: the model's steps plus the inverse transform (Griffin-Lim for stft)."""
    from tasks.generation.generate import generate_blocks, seed_blocks, to_audio
    from tasks.model.network import ungroup_steps
    from tasks.model.repository import load_trained_model
    from tasks.store.store import open_store

    store = open_store(store_url)
    loaded = load_trained_model(store, model_id)
    features, config = loaded.features, loaded.config
    n_rows = round(seconds / features.block_seconds)
    n_steps = -(-n_rows // config.frames_per_step)
    seed, _ = seed_blocks(store, loaded)
    rng = np.random.default_rng(0)
    warm = generate_blocks(loaded.model, seed, 8, config=config, rng=rng, temperature=0.7)
    to_audio(ungroup_steps(warm, features.n_features), loaded)  # librosa's first call compiles (numba)
    started = time.perf_counter()
    steps = generate_blocks(loaded.model, seed, n_steps, config=config, rng=rng, temperature=0.7)
    audio, _, _ = to_audio(ungroup_steps(steps, features.n_features)[:n_rows], loaded)
    elapsed = time.perf_counter() - started
    return audio.size / features.sample_rate / elapsed


def run_path(name: str, songs: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tasks.config import FeatureConfig, IngestConfig, TrainConfig
    from tasks.generation.generate import generate_run
    from tasks.model.train import train_model
    from tasks.store.store import open_store
    from tests.helpers import ingest_direct

    path = PATHS[name]
    store_url = str(workdir / f"{songs.name}-{name}")
    features = FeatureConfig.for_transform(path["transform"])
    started = time.perf_counter()
    dataset_id = ingest_direct(songs, store_url, IngestConfig(features=features))
    ingest_seconds = time.perf_counter() - started
    from tasks.dataset.repository import read_rows

    audio_hours = (
        sum(row.seconds for row in read_rows(open_store(store_url), dataset_id, ok_only=True)) / 3600
    )
    config = TrainConfig.from_preset(path["preset"], epochs=10_000)
    started = time.perf_counter()
    trained = train_model(
        store_url, config, dataset_id=dataset_id, resume=False, callbacks=[Budget(args.budget)]
    )
    train_seconds = time.perf_counter() - started
    report = generate_run(
        open_store(store_url),
        model_id=trained.model_id,
        seconds=args.seconds,
        count=args.clips,
        run_id="bench",
    )
    quality = report["quality"]
    collapsed = [clip["metrics"]["collapsed"] for clip in report["clips"]]
    result = {
        "path": name,
        "collection": songs.name,
        "dataset_id": dataset_id,
        "model_id": trained.model_id,
        "audio_minutes": round(audio_hours * 60, 2),
        "ingest_x_realtime": round(audio_hours * 3600 / ingest_seconds, 1),
        "gb_per_hour": round(dataset_bytes(store_url, dataset_id) / 1e9 / audio_hours, 4),
        "epochs": trained.epochs,
        "train_seconds": round(train_seconds, 1),
        "val_loss": trained.history["val_loss"][-1],
        "baseline_val_loss": trained.baseline_val_loss,
        "quality": quality["quality"],
        "d_gen": quality["d_gen"],
        "d_real": quality["d_real"],
        "d_noise": quality["d_noise"],
        "real_anchor": quality["real_anchor"],
        "d_other_songs": quality["d_other_songs"],
        "songs_from": quality["songs_from"],
        "collapsed": sum(1 for item in collapsed if item),
        "collapsed_kinds": collapsed,
        "loudness_difference_db": quality["loudness"]["difference_db"],
        "onset_rate": quality["onset_rate"],
        "generation_x_realtime": round(generation_speed(store_url, trained.model_id, args.seconds), 1),
        "run": report["location"],
    }
    print(json.dumps(result), flush=True)
    return result


def featurizer_ratio(songs: Path) -> tuple[float, float]:
    """Seconds of audio per second of the stft forward pass: ours (numpy/scipy) and librosa's."""
    import librosa

    from tasks.audio.decode import decode_audio
    from tasks.config import FeatureConfig
    from tasks.features.transforms import get_transform

    features = FeatureConfig.for_transform("stft")
    audio = np.concatenate(
        [
            decode_audio(str(path), sample_rate=features.sample_rate).samples
            for path in sorted(songs.iterdir())[:4]
        ]
    )
    transform = get_transform(features)
    transform.forward(audio[:22050])
    librosa.feature.melspectrogram(y=audio[:22050], sr=features.sample_rate, n_fft=1024, hop_length=256)

    def timed(call: Any) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - started)
        return audio.size / features.sample_rate / best

    ours = timed(lambda: transform.forward(audio))
    theirs = timed(
        lambda: np.log(
            np.maximum(
                librosa.feature.melspectrogram(
                    y=audio,
                    sr=features.sample_rate,
                    n_fft=1024,
                    hop_length=256,
                    n_mels=128,
                    pad_mode="constant",
                ),
                1e-10,
            )
        )
    )
    return ours, theirs


def spectrogram_figure(results: list[dict[str, Any]], path: Path, *, seconds: float = 10.0) -> None:
    """A training song's spectrogram above the first clip of each path, from one collection's stores
    (the figure in docs/quality.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.signal import spectrogram

    from tasks.audio.decode import decode_audio
    from tasks.dataset.repository import read_rows
    from tasks.model.repository import read_card
    from tasks.store.store import open_store

    sample_rate = 22050
    first = results[0]
    store = open_store(str(Path(first["run"]).parents[1]))
    card = read_card(store, first["model_id"])
    rows = {row.song_id: row for row in read_rows(store, first["dataset_id"], ok_only=True)}
    # The training song nearest the middle length among those longer than a clip.
    long_enough = sorted(
        (rows[song] for song in card["train_songs"] if rows[song].seconds > seconds + 1),
        key=lambda row: row.seconds,
    )
    song = long_enough[len(long_enough) // 2] if long_enough else rows[card["train_songs"][0]]
    training = decode_audio(song.source, sample_rate=sample_rate).samples
    start = max(0, training.size // 2 - int(seconds * sample_rate) // 2)
    panels = [
        (
            training[start : start + int(seconds * sample_rate)],
            f"training song {Path(song.source).name} (its middle {seconds:g} s)",
        )
    ]
    for result in results:
        run = Path(result["run"])
        scored = run / "quality.json"
        report = json.loads((scored if scored.exists() else run / "metrics.json").read_text())
        quality = report.get("quality", {})
        quality = quality.get("quality") if isinstance(quality, dict) else quality
        clip = decode_audio(str(run / "clip-01.wav"), sample_rate=sample_rate).samples
        panels.append(
            (clip, f"{result['path']} path: clip-01 by {result['model_id']} (run quality {quality})")
        )
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), dpi=100, sharex=True)
    for axis, (audio, title) in zip(axes, panels, strict=True):
        frequencies, times, power = spectrogram(audio, fs=sample_rate, nperseg=1024, noverlap=768)
        axis.pcolormesh(
            times,
            frequencies,
            10 * np.log10(power + 1e-12),
            shading="auto",
            cmap="magma",
            vmin=-120,
            vmax=-20,
        )
        axis.set(ylabel="frequency (Hz)", title=title, ylim=(0, 8000))
    axes[-1].set_xlabel("time (s)")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def defined(value: float | None, limit: float, *, at_most: bool = False) -> str:
    """:func:`target`, or "undefined MISSED" when the anchors left the score undefined."""
    return target(value, limit, at_most=at_most) if value is not None else "undefined MISSED"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    collections = ["demo", "drascula"] if args.collection == "both" else [args.collection]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    ratios = {}
    for collection in collections:
        songs = collection_dir(collection, workdir)
        ratios[collection] = featurizer_ratio(songs)
        for name in PATHS:
            results.append(run_path(name, songs, workdir, args))
    command = "python benchmarks/bench_quality.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(
        f"\n{command}  (training budget {args.budget:g} s per path, "
        f"{args.clips} clips of {args.seconds:g} s)\n"
    )
    rows = [
        (
            "collection",
            "path",
            "quality",
            "collapsed",
            "loudness diff dB",
            "gen x rt",
            "train s (epochs)",
            "GB/h",
            "val / baseline loss",
        )
    ]
    for item in results:
        rows.append(
            (
                item["collection"],
                item["path"],
                str(item["quality"]),
                f"{item['collapsed']}/{args.clips}",
                str(item["loudness_difference_db"]),
                f"{item['generation_x_realtime']:.1f}",
                f"{item['train_seconds']:.0f} ({item['epochs']})",
                f"{item['gb_per_hour']:.3f}",
                f"{item['val_loss']:.4g} / {item['baseline_val_loss']:.4g}",
            )
        )
    print(table(rows))
    print()
    for collection, (ours, theirs) in ratios.items():
        print(
            f"ingest hot path on {collection}: stft featurizer (numpy/scipy) {ours:.0f}x real time, "
            f"librosa stft+melspectrogram {theirs:.0f}x: ratio {ours / theirs:.2f}"
        )
    print("\ntargets (spectral path):")
    for item in results:
        if item["path"] != "spectral":
            continue
        gruv = next(r for r in results if r["collection"] == item["collection"] and r["path"] == "gruv")
        print(
            f"  {item['collection']}: quality {item['quality']} {defined(item['quality'], 0.5)}, "
            f"GRUV {gruv['quality']} {defined(gruv['quality'], 0.0, at_most=True)}; "
            f"collapsed {item['collapsed']} {target(item['collapsed'], 0, at_most=True)}; "
            f"loudness {item['loudness_difference_db']} dB "
            f"{target(abs(item['loudness_difference_db'] or 99), 6.0, at_most=True)}; "
            f"generation {item['generation_x_realtime']}x {target(item['generation_x_realtime'], 10.0)}; "
            f"storage {item['gb_per_hour']} GB/h {target(item['gb_per_hour'], 0.35, at_most=True)}"
        )
    if args.figure:
        last = [item for item in results if item["collection"] == results[-1]["collection"]]
        spectrogram_figure(last, args.figure, seconds=args.seconds)
    if args.json:
        args.json.write_text(json.dumps({"command": command, "results": results, "ratios": ratios}, indent=2))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
