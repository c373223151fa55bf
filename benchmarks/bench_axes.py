"""bench_axes: what each quality axis gives fixed material, on real and synthetic songs.

No model is trained: the material is real audio and what is made of it, scored as a run's clips
would be (``tasks.generation.quality.quality_report``, the same anchors and reference):

- ``real``: the real continuations themselves (1 on every axis by construction; the row shows the
  spread: other songs' excerpts of the same size, 4 draws, mean ± std);
- ``round trip``: the continuations through the default features and back (``stft``, 128 mels,
  Griffin-Lim), and ``round trip linear`` (``--n-mels 0``, 513 linear bins);
- ``shuffled``: the continuations cut into 46 ms grains, shuffled and overlap-added (a fresh draw,
  not the anchor's own);
- ``noise``: noise shaped to the training songs' spectrum and level.

Songs are split as a model's would be: ``--clips`` validation songs (the longest first), each giving
one clip, its continuation from 3 s (a seed's length) for ``--seconds``, and the reference from
after it (up to 30 s of each); the rest are the training songs (the noise's spectrum, the spread).

    python benchmarks/bench_axes.py                       # synthetic and drascula-music, 16 x 15 s
    python benchmarks/bench_axes.py --collection synth --clips 8 --seconds 10
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np
from _report import table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DRASCULA_GLOB = "/usr/share/scummvm/drascula/audio/*.ogg"
SR = 22050
SEED_SECONDS = 3.0
REFERENCE_SECONDS = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", choices=["synth", "drascula", "both"], default="both")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    return parser.parse_args(argv)


def load(name: str) -> list[np.ndarray]:
    if name == "synth":
        from tasks.audio.synth import synthesize_song

        return [synthesize_song(seed=seed, seconds=60.0, sample_rate=SR).mean(axis=1) for seed in range(24)]
    from tasks.audio.decode import decode_audio

    paths = sorted(glob.glob(DRASCULA_GLOB))
    if not paths:
        sys.exit("drascula-music is not installed: apt-get install drascula-music")
    return [decode_audio(path, sample_rate=SR).samples for path in paths]


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
    for label, n_mels in (("round trip", 128), ("round trip linear", 0)):
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    collections = ["synth", "drascula"] if args.collection == "both" else [args.collection]
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
