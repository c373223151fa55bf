"""bench_sampling: how a spectral model's samples are drawn, scored on the quality axes.

Ingests the songs into ``--store`` (skipped when it holds them), trains two spectral models with
``musicflow train`` (``e1``: 1 epoch; ``budget``: ``--max-minutes``; each skipped when its model
folder is finished), then generates ``--clips`` clips of ``--seconds`` per variant with the
product's own ``generate_run`` (the clips, ``metrics.json`` and its axes land in
``generated/<run_id>/`` as ``musicflow generate`` writes them):

- the 1-epoch model and the budget model at today's default (the score must rank training);
- the budget model under each sampling variant: ``TEMPERATURE/SAMPLING[/PHASE]`` (``--variants``),
  e.g. ``0.7/independent`` (today's default), ``0.3/independent``, ``0/independent`` (the component's
  mean), ``0.7/sticky``, ``0.7/smooth``, ``0.7/sticky-smooth``; ``PHASE`` is the phase method
  (``tasks.config.PHASES``, default ``DEFAULT_PHASE``), e.g. ``0.7/smooth-frames/pghi-gl``.

Each row: every axis's score (0 = its anchor, 1 = the real continuation), the spread (other real
audio of the same size, mean ± std), the clips collapsed, and generation's speed in x real time
(the model's steps and the phase reconstruction; not the scoring), the same per CPU second of the
process (less sensitive to a shared machine's load), and the phase reconstruction's share of the
wall time (``to_audio``: the features' inverse).

    python benchmarks/bench_sampling.py                          # drascula-music, 16 x 15 s, 10 min
    python benchmarks/bench_sampling.py --store /tmp/bs --max-minutes 7 --variants 0.7/independent 0.7/sticky
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _report import MUSICFLOW, table, train_unless_done

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DRASCULA = "/usr/share/scummvm/drascula/audio"
VARIANTS = [
    "0.7/independent",
    "0.3/independent",
    "0/independent",
    "0.7/sticky",
    "0.7/smooth",
    "0.7/sticky-smooth",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", default=DRASCULA, help="folder of songs [drascula-music]")
    parser.add_argument("--store", default="/tmp/bench-sampling/store")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--max-minutes", type=float, default=10.0, help="the budget model's training budget")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, metavar="TEMPERATURE/SAMPLING")
    parser.add_argument("--skip-epoch", action="store_true", help="no 1-epoch model (sampling only)")
    parser.add_argument("--random-seed", type=int, default=0, help="generate_run's random_seed")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> None:
    """Ingest and train through the command line, as a user would; each step is skipped when done."""
    if not Path(args.songs).exists():
        sys.exit(f"{args.songs} not found (drascula-music: apt-get install drascula-music)")
    subprocess.run([*MUSICFLOW, "ingest", args.songs, "--store", args.store], check=True, cwd=ROOT)
    models = [("budget", ["--max-minutes", str(args.max_minutes)])]
    if not args.skip_epoch:
        models.insert(0, ("e1", ["--epochs", "1"]))
    for model_id, options in models:
        train_unless_done(args.store, model_id, options)


def run_variant(
    args: argparse.Namespace, model_id: str, temperature: float, sampling: str, phase: str | None = None
) -> dict[str, Any]:
    """One run of ``generate_run``, its report with the seconds spent generating the clips and, of
    them, inverting the features (``to_audio``), and each clip's CPU seconds (``clip_cpu_seconds``:
    the first includes what a process pays once, numba's compilation of the phase reconstruction
    and TensorFlow's tracing)."""
    import tasks.generation.generate as generate
    from tasks.store.store import open_store

    spent = [0.0, 0.0, 0.0]
    clip_cpu: list[float] = []  # per clip: the first one also pays the process's one-time costs
    generate_clip, to_audio = generate.generate_clip, generate.to_audio

    def timer(call: Any, slot: int) -> Any:
        def timed(*call_args: Any, **call_options: Any) -> Any:
            began, cpu = time.perf_counter(), time.process_time()
            try:
                return call(*call_args, **call_options)
            finally:
                spent[slot] += time.perf_counter() - began
                if slot == 0:  # CPU seconds of this process's threads: what a busy machine's wall time hides
                    clip_cpu.append(time.process_time() - cpu)
                    spent[2] += clip_cpu[-1]

        return timed

    suffix = f"-{phase}" if phase else ""
    # The same calls, timed: the steps and the phase reconstruction, and the reconstruction alone.
    generate.generate_clip, generate.to_audio = timer(generate_clip, 0), timer(to_audio, 1)
    try:
        report = generate.generate_run(
            open_store(args.store),
            model_id=model_id,
            seconds=args.seconds,
            count=args.clips,
            temperature=temperature,
            sampling=sampling,
            phase=phase,
            random_seed=args.random_seed,
            run_id=f"bench-{model_id}-{temperature:g}-{sampling}{suffix}-r{args.random_seed}",
        )
    finally:
        generate.generate_clip, generate.to_audio = generate_clip, to_audio
    report["generate_seconds"], report["inverse_seconds"], report["generate_cpu_seconds"] = spent
    report["clip_cpu_seconds"] = clip_cpu
    return report


def row(label: str, report: dict[str, Any]) -> tuple[str, ...]:
    cells = [label]
    for scored in report["quality"]["axes"].values():
        if "not_scored" in scored:
            cells.append("not scored")
            continue
        spread = scored.get("spread", {})
        cells.append(f"{scored['score']:.3f} (spread {spread.get('mean'):.3f} ± {spread.get('std'):.3f})")
    collapsed = sum(1 for clip in report["clips"] if clip["metrics"]["collapsed"])
    real_seconds = report["seconds"] * report["count"]
    cells += [
        f"{collapsed}/{report['count']}",
        f"{real_seconds / report['generate_seconds']:.1f}x",
        f"{real_seconds / report['generate_cpu_seconds']:.1f}x",
        f"{report['inverse_seconds'] / report['generate_seconds']:.0%}",
    ]
    return tuple(cells)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    prepare(args)
    runs: list[tuple[str, str, float, str, str | None]] = []
    if not args.skip_epoch:
        runs.append(("e1 (1 epoch)", "e1", 0.7, "independent", None))
    for variant in args.variants:
        temperature, _, rest = variant.partition("/")
        sampling, _, phase = rest.partition("/")
        sampling = sampling or "independent"
        runs.append((f"budget {variant}", "budget", float(temperature), sampling, phase or None))
    rows: list[tuple[str, ...]] = []
    for label, model_id, temperature, sampling, phase in runs:
        began = time.perf_counter()
        report = run_variant(args, model_id, temperature, sampling, phase)
        rows.append(row(label, report))
        took = time.perf_counter() - began
        print(f"{'  '.join(rows[-1])} ({took:.0f} s; {report['location']})", flush=True)
    axes = list(report["quality"]["axes"])
    print(f"\n{args.clips} clips of {args.seconds:g} s per row; 0 = the axis's anchor, 1 = the real one")
    speed = ("x real time", "per CPU s", "inverse share")
    header = ("model temperature/sampling[/phase]", *axes, "collapsed", *speed)
    print(table([header, *rows]))


if __name__ == "__main__":
    main()
