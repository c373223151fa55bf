"""bench_axes: what each quality axis gives fixed material, on real and synthetic songs.

No model is trained: the material is real audio and what is made of it, scored as a run's clips
would be (``tasks.generation.quality.quality_report``, the same anchors and reference):

- ``real``: the real continuations themselves (1 on every axis by construction; the row shows the
  spread: other songs' excerpts of the same size, 4 draws, mean ± std);
- ``round trip N mels``: the continuations through the default features and back (``stft``, N mel
  bands of ``--n-mels`` [128], the default phase method), and ``round trip linear`` (0, 513 linear bins);
- ``shuffled``: the continuations cut into 46 ms grains, shuffled and overlap-added (a fresh draw,
  not the anchor's own);
- ``noise``: noise shaped to the training songs' spectrum and level.

Songs are split as a model's would be: ``--clips`` validation songs (the longest first), each giving
one clip, its continuation from 3 s (a seed's length) for ``--seconds``, and the reference from
after it (up to 30 s of each); the rest are the training songs (the noise's spectrum, the spread).

    python benchmarks/bench_axes.py                       # synthetic and drascula-music, 16 x 15 s
    python benchmarks/bench_axes.py --collection synth --clips 8 --seconds 10

``--phases``: the round trip's ceiling for every phase method instead (``tasks.config.PHASES``: PGHI,
PGHI + a few Griffin-Lim iterations, Griffin-Lim), with 128 mels and with linear bins: the inverse's
speed in x real time (each clip inverted by every method in turn, the order rotated, so the machine's
load falls on all of them; the ratio to Griffin-Lim of the same features, measured in the same run),
the spectral convergence of the round trip's features to the original's (``features``) and of its
linear magnitudes (``linear``, 513 bins, whatever the features), and each axis scored against the
anchors of the real row (the same anchors for every method), with the spread of other songs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _debian import COLLECTIONS, collection_songs
from _report import table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SR = 22050
SEED_SECONDS = 3.0
REFERENCE_SECONDS = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--collection",
        choices=["synth", *COLLECTIONS, "both"],
        default="both",
        help="a collection, or both: synth and drascula",
    )
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--phases", action="store_true", help="compare the phase methods' round trips")
    parser.add_argument(
        "--n-mels",
        type=int,
        nargs="+",
        default=[128, 0],
        help="the round trips' mel bands, 0 = linear bins [128 0]",
    )
    return parser.parse_args(argv)


def load(name: str) -> list[np.ndarray]:
    if name == "synth":
        from tasks.audio.synth import synthesize_song

        return [synthesize_song(seed=seed, seconds=60.0, sample_rate=SR).mean(axis=1) for seed in range(24)]
    from tasks.audio.decode import decode_audio

    return [decode_audio(path, sample_rate=SR).samples for path in collection_songs(name)]


def measure(name: str, args: argparse.Namespace) -> list[tuple[str, ...]]:
    from tasks.config import FeatureConfig
    from tasks.features.transforms import get_transform
    from tasks.generation.quality import (
        AXES,
        average_spectrum,
        quality_report,
        rms_of,
        shaped_noise,
        shuffled,
    )

    songs = sorted(load(name), key=lambda song: -song.size)
    clip = int(args.seconds * SR)
    start = int(SEED_SECONDS * SR)
    validation, training = songs[: args.clips], songs[args.clips :]
    continuations = [song[start : start + clip] for song in validation]
    reference = [song[start + clip : start + clip + int(REFERENCE_SECONDS * SR)] for song in validation]
    reference = [song for song in reference if song.size >= 2 * SR]
    rng = np.random.default_rng(1)
    began = time.perf_counter()
    trips = {}
    for n_mels in args.n_mels:
        label = f"round trip {n_mels} mels" if n_mels else "round trip linear"
        transform = get_transform(FeatureConfig(sample_rate=SR, transform="stft", n_mels=n_mels))
        trips[label] = [
            np.clip(transform.inverse(transform.forward(item)), -1, 1)[: item.size] for item in continuations
        ]
    print(f"{name}: round trips in {time.perf_counter() - began:.1f} s", flush=True)
    spectrum, level = average_spectrum(training), rms_of(training)
    material = {
        "real": continuations,
        **trips,
        "shuffled": [shuffled(item, sample_rate=SR, rng=rng) for item in continuations],
        "noise": [shaped_noise(item.size, spectrum=spectrum, rms=level, rng=rng) for item in continuations],
    }
    rows: list[tuple[str, ...]] = []
    for label, clips in material.items():
        began = time.perf_counter()
        report = quality_report(
            clips, reference=reference, real=training, sample_rate=SR, continuations=continuations
        )
        axes = report["axes"]
        cells = []
        for axis in AXES:
            scored = axes[axis]
            cell = f"{scored['score']}"
            if label == "real":
                cell += f" (spread {scored['spread']['mean']} ± {scored['spread']['std']})"
            cells.append(cell)
        rows.append((name, label, *cells))
        print(f"  {label}: {cells} ({time.perf_counter() - began:.0f} s)", flush=True)
    return rows


def split(name: str, args: argparse.Namespace) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(continuations, reference, training songs) of a collection, as :func:`measure` splits them."""
    songs = sorted(load(name), key=lambda song: -song.size)
    clip, start = int(args.seconds * SR), int(SEED_SECONDS * SR)
    validation, training = songs[: args.clips], songs[args.clips :]
    continuations = [song[start : start + clip] for song in validation]
    reference = [song[start + clip : start + clip + int(REFERENCE_SECONDS * SR)] for song in validation]
    return continuations, [song for song in reference if song.size >= 2 * SR], training


def measure_phases(name: str, args: argparse.Namespace) -> list[tuple[str, ...]]:
    """The phase methods' round trips of the continuations: speed, spectral convergence, axes."""
    from tasks.config import PHASES, FeatureConfig
    from tasks.features.transforms import get_transform, spectral_convergence
    from tasks.generation.quality import AXES, AxisScorer, normalised, quality_report

    continuations, reference, training = split(name, args)
    audio_seconds = sum(item.size for item in continuations) / SR
    linear = get_transform(FeatureConfig(sample_rate=SR, transform="stft", n_mels=0))
    transforms = {
        label: get_transform(FeatureConfig(sample_rate=SR, transform="stft", n_mels=n_mels))
        for label, n_mels in (("128 mels", 128), ("linear", 0))
    }
    methods = [(label, phase) for label in transforms for phase in PHASES]
    transforms["128 mels"].inverse(transforms["128 mels"].forward(continuations[0][: SR // 2]), phase="pghi")
    spent = dict.fromkeys(methods, 0.0)
    trips: dict[tuple[str, str], list[np.ndarray]] = {method: [] for method in methods}
    convergence: dict[tuple[str, str], list[tuple[float, float]]] = {method: [] for method in methods}
    for index, item in enumerate(continuations):
        rows = {label: transform.forward(item) for label, transform in transforms.items()}
        truth = linear.forward(item)
        for method in methods[index % len(methods) :] + methods[: index % len(methods)]:
            label, phase = method
            began = time.perf_counter()
            audio = transforms[label].inverse(rows[label], phase=phase)
            spent[method] += time.perf_counter() - began
            trip = np.clip(audio, -1, 1)[: item.size]
            trips[method].append(trip)
            convergence[method].append(
                (
                    spectral_convergence(rows[label], transforms[label].forward(trip)),
                    spectral_convergence(truth, linear.forward(trip)),
                )
            )
    print(f"{name}: round trips of {audio_seconds:.0f} s of audio by {len(methods)} methods", flush=True)
    real = quality_report(
        continuations, reference=reference, real=training, sample_rate=SR, continuations=continuations
    )["axes"]
    scorer = AxisScorer(reference, sample_rate=SR)
    rows_out: list[tuple[str, ...]] = [
        (
            name,
            "real (spread: other songs)",
            *("",) * 4,
            *(f"1 ({real[axis]['spread']['mean']} ± {real[axis]['spread']['std']})" for axis in AXES),
        )
    ]
    for method in methods:
        label, phase = method
        analyses = scorer.analyse(trips[method])
        scores = [
            normalised(scorer.distance(axis, analyses), zero=real[axis]["d_anchor"], one=real[axis]["d_real"])
            for axis in AXES
        ]
        speed = audio_seconds / spent[method]
        ratio = spent[(label, "griffin-lim")] / spent[method]
        features_sc, linear_sc = np.mean(convergence[method], axis=0)
        rows_out.append(
            (
                name,
                f"{label}, {phase}",
                f"{speed:.1f}x",
                f"{ratio:.2f}",
                f"{features_sc:.4f}",
                f"{linear_sc:.4f}",
                *(f"{score}" for score in scores),
            )
        )
        print(f"  {rows_out[-1]}", flush=True)
    return rows_out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    collections = ["synth", "drascula"] if args.collection == "both" else [args.collection]
    if args.phases:
        header = ("collection", "round trip", "x real time", "speed vs GL", "SC features", "SC linear")
        phase_rows: list[tuple[str, ...]] = [(*header, "frames", "continuity", "tonality")]
        for name in collections:
            phase_rows += measure_phases(name, args)
        print(
            f"\n{args.clips} clips of {args.seconds:g} s per set; axes: 0 = the axis's anchor, 1 = the real "
            "continuation (the anchors of the real row)"
        )
        print(table(phase_rows))
        return
    rows: list[tuple[str, ...]] = [("collection", "material", "frames", "continuity", "tonality")]
    for name in collections:
        rows += measure(name, args)
    print(
        f"\n{args.clips} clips of {args.seconds:g} s per set; "
        "0 = the axis's anchor, 1 = the real continuation"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
