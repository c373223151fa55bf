"""Task runs one ingest makes, by collection size: the flow's own batching on a planned collection,
nothing decoded (a task run per batch to ingest it, one to commit it, one plan).

Run from the repository root::

    .venv/bin/python benchmarks/count_task_runs.py [--workdir DIR] [--workers 2]

Two collections: 10k tiny WAV songs (1 s of 8 kHz noise, 16 kB each) written to ``DIR`` once and
planned as ingest plans them (listed and stat'ed; no duplicate, so nothing hashed), and 100k songs
of 2-12 MB (seeded sizes, no files: the batching only reads sizes). Each with the flow's batching
(``flows.ingest.MAX_BATCHES``) and without it (fixed ``--batch-mb`` batches, as before), at the
default 32 MB batches and at 0.05 MB (a user's small ``--batch-mb``).
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
from _report import table

from flows.ingest import BATCHES_PER_WORKER, MAX_BATCHES
from tasks.ingest.plan import make_batches, plan_ingest
from tasks.ingest.sources import SourceFile, list_audio_files


def tiny_songs(folder: Path, count: int = 10_000) -> list[SourceFile]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"tiny-{index:05d}.wav"
        if not path.exists():
            with wave.open(str(path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(8000)
                out.writeframes((rng.standard_normal(8000) * 3000).astype("<i2").tobytes())
    return plan_ingest(list_audio_files(str(folder)), []).todo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "musicflow-task-runs")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    rng = random.Random(7)
    collections = {
        "10k tiny songs": tiny_songs(args.workdir / "tiny"),
        "100k songs of 2-12 MB": [
            SourceFile(f"/songs/{index:06d}.mp3", rng.randint(2_000_000, 12_000_000))
            for index in range(100_000)
        ],
    }
    rows = [("collection", "MB", "--batch-mb", "task runs before", "task runs now", "largest batch now (MB)")]
    for name, files in collections.items():
        for batch_mb in (32.0, 0.05):
            counts, largest = [], 0.0
            for cap in (None, MAX_BATCHES):
                batches = make_batches(
                    files,
                    batch_bytes=int(batch_mb * 2**20),
                    rounds_of=args.workers,
                    min_batches=BATCHES_PER_WORKER * args.workers,
                    max_batches=cap,
                )
                counts.append(1 + 2 * len(batches))
                largest = max(sum(item.bytes for item in batch) for batch in batches) / 2**20
            total = sum(item.bytes for item in files) / 2**20
            rows.append(
                (name, f"{total:.0f}", f"{batch_mb:g}", f"{counts[0]}", f"{counts[1]}", f"{largest:.0f}")
            )
    print(f"task runs per ingest ({args.workers} workers, MAX_BATCHES {MAX_BATCHES}): plan + 2 per batch")
    print(table(rows))
    print("command:", shlex.join(sys.orig_argv))


if __name__ == "__main__":
    main()
