"""bench_models: which model kind holds notes, on the same songs and the same training budget.

Ingests the songs into ``--store`` (skipped when it holds them), trains one model per
``MODEL_ID=PRESET[@TEMPERATURE]`` of ``--models`` with ``musicflow train --preset PRESET
--max-minutes M`` (skipped when its model folder is finished), then generates ``--clips`` clips of
``--seconds`` from each with the product's own ``generate_run`` at the model's default temperature
(or ``TEMPERATURE``) and sampling (the clips, their spectrograms and ``metrics.json`` land in
``generated/<run_id>/``).

Each row: the quality axes (0 = the axis's anchor, 1 = the real continuation of the clip's seed),
**how long partials last** (``tasks.generation.metrics.audio_peak_persistence``: the runs of
spectral peaks on a linear spectrogram, 2048-sample frames every 256, the seconds the partial of an
average peak lasts; mean ± std (median) over the clips), the clips collapsed, the longest span copied from a
training song, and generation's speed in x real time (the model's steps and Griffin-Lim). Two
anchors of the partials' length are measured in the same run, on the same seconds: the real
continuations of the clips' seeds, and the same audio shuffled in 46 ms grains (the axes' anchor).

    python benchmarks/bench_models.py --store /tmp/model-store --models budget=spectral units=units
    python benchmarks/bench_models.py --store /tmp/model-store --models units=units@1.0
    python benchmarks/bench_models.py --songs SONGS --store /tmp/bm --max-minutes 2 --clips 8
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _report import MUSICFLOW, table, train_unless_done
from bench_sampling import DRASCULA, run_variant

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", default=DRASCULA, help="folder of songs [drascula-music]")
    parser.add_argument("--store", default="/tmp/bench-models/store")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-minutes", type=float, default=7.0, help="each model's training budget")
    parser.add_argument(
        "--models", nargs="+", default=["spectral=spectral", "units=units"], metavar="MODEL_ID=PRESET[@T]"
    )
    parser.add_argument("--random-seed", type=int, default=0, help="generate_run's random_seed")
    parser.add_argument(
        "--figure",
        type=Path,
        help="PNG: a training song above clip-01 of each model (bench_quality's figure)",
    )
    args = parser.parse_args(argv)
    for model in args.models:
        if "=" not in model:
            parser.error(f"invalid --models {model!r}: expected MODEL_ID=PRESET[@TEMPERATURE]")
    return args


def prepare(args: argparse.Namespace) -> None:
    """Ingest and train through the command line, as a user would; each step is skipped when done."""
    if not Path(args.songs).exists():
        sys.exit(f"{args.songs} not found (drascula-music: apt-get install drascula-music)")
    subprocess.run([*MUSICFLOW, "ingest", args.songs, "--store", args.store], check=True, cwd=ROOT)
    for model in args.models:
        model_id, _, preset = model.partition("=")
        options = ["--preset", preset.partition("@")[0], "--max-minutes", str(args.max_minutes)]
        train_unless_done(args.store, model_id, options)


def partials(report: dict[str, Any], store_url: str) -> dict[str, list[float]]:
    """How long partials last (s) in each clip of a run, in the real continuation of its seed and in
    that continuation shuffled in grains (the axes' anchor)."""
    from tasks.generation.evaluate import continuations, read_clips
    from tasks.generation.metrics import audio_peak_persistence
    from tasks.generation.quality import shuffled
    from tasks.model.repository import read_card
    from tasks.store.store import open_store

    store = open_store(store_url)
    clips, rate = read_clips(store, report)
    card = read_card(store, report["model_id"])
    seeds = [clip["seed"] for clip in report["clips"]]
    real = [
        audio
        for audio in continuations(store, card, seeds, [clip.size / rate for clip in clips])
        if audio is not None
    ]
    rng = np.random.default_rng(0)
    return {
        "clips": [audio_peak_persistence(clip, sample_rate=rate) for clip in clips],
        "real": [audio_peak_persistence(audio, sample_rate=rate) for audio in real],
        "shuffled": [
            audio_peak_persistence(shuffled(audio, sample_rate=rate, rng=rng), sample_rate=rate)
            for audio in real
        ],
    }


def spread(values: list[float]) -> str:
    """Mean ± std (median) of per-clip values: a few clips stuck on one sound pull the mean alone."""
    if not values:
        return "none"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f} ({np.median(values):.3f})"


def row(
    model_id: str, report: dict[str, Any], held: dict[str, list[float]], card: dict[str, Any]
) -> tuple[str, ...]:
    cells = [f"{model_id} ({card['config']['preset']}, {card['epochs']} epochs, T {report['temperature']:g})"]
    for scored in report["quality"]["axes"].values():
        cells.append("not scored" if "not_scored" in scored else f"{scored['score']:.3f}")
    collapsed = sum(1 for clip in report["clips"] if clip["metrics"]["collapsed"])
    real_seconds = report["seconds"] * report["count"]
    cells += [
        spread(held["clips"]),
        f"{collapsed}/{report['count']}",
        f"{report['memorisation']['longest_copy_seconds']:.2f} s",
        f"{real_seconds / report['generate_seconds']:.1f}x",
    ]
    return tuple(cells)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    prepare(args)
    from tasks.config import DEFAULT_SAMPLING, TrainConfig
    from tasks.generation.generate import default_temperature
    from tasks.model.repository import read_card
    from tasks.store.store import open_store

    rows: list[tuple[str, ...]] = []
    anchors: dict[str, list[float]] = {}
    runs: list[dict[str, Any]] = []
    for model in args.models:
        model_id, _, rest = model.partition("=")
        given = rest.partition("@")[2]
        card = read_card(open_store(args.store), model_id)
        default = default_temperature(TrainConfig.from_dict(card["config"]))
        temperature = float(given) if given else default
        began = time.perf_counter()
        report = run_variant(args, model_id, temperature, DEFAULT_SAMPLING)
        held = partials(report, args.store)
        anchors.setdefault("real", held["real"])
        anchors.setdefault("shuffled", held["shuffled"])
        rows.append(row(model_id, report, held, card))
        run = {"run": f"{args.store}/generated/{report['run_id']}", "path": card["config"]["preset"]}
        runs.append({**run, "model_id": model_id, "dataset_id": card["dataset_id"]})
        took = time.perf_counter() - began
        print(f"{'  '.join(rows[-1])} ({took:.0f} s; {report['location']})", flush=True)
        spreads = {axis: scored.get("spread") for axis, scored in report["quality"]["axes"].items()}
        print(f"  spread of other real audio: {spreads}", flush=True)
    axes = list(report["quality"]["axes"])
    print(f"\n{args.clips} clips of {args.seconds:g} s per row; 0 = the axis's anchor, 1 = the real one")
    real, mixed = spread(anchors["real"]), spread(anchors["shuffled"])
    print(f"partials (s), the real continuations: {real}; shuffled: {mixed}")
    header = ("model", *axes, "partials (s)", "collapsed", "longest copy", "x real time")
    print(table([header, *rows]))
    if args.figure:
        from bench_quality import spectrogram_figure

        spectrogram_figure(runs, args.figure, seconds=min(args.seconds, 10.0))
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
