"""What the benchmarks share: the `musicflow` command line (and training through it once), target
verdicts, a plain-text table, another commit's tree, and the raw ffmpeg decode the targets call the
decoding speed limit."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The `musicflow` command as the benchmarks run it in a subprocess (the tree on PYTHONPATH or cwd).
MUSICFLOW = [sys.executable, "-m", "musicflow.cli"]


def train_unless_done(store_url: str, model_id: str, options: list[str]) -> None:
    """``musicflow train --store STORE --model-id ID OPTIONS`` as a user would run it, skipped when
    the store already holds that model finished (a re-run of a benchmark reuses it)."""
    from tasks.model.repository import read_finished_card
    from tasks.store.store import open_store

    if read_finished_card(open_store(store_url), model_id) is not None:
        print(f"{model_id}: reused", flush=True)
        return
    began = time.perf_counter()
    command = [*MUSICFLOW, "train", "--store", store_url, "--model-id", model_id, *options]
    subprocess.run(command, check=True, cwd=ROOT)
    print(f"{model_id}: trained in {time.perf_counter() - began:.0f} s", flush=True)


@contextlib.contextmanager
def commit_tree(revision: str) -> Iterator[Path]:
    """The files of ``revision`` (``git archive``) in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="musicflow-tree-") as folder:
        archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
        yield Path(folder)


def ffmpeg_f32_mono(path: Path, *, sample_rate: int, buffered: bool = False) -> int:
    """Samples of ``path`` by the decoding speed limit, ``ffmpeg -f f32le -ac 1`` into memory (the
    ffmpeg pydub is configured with). ``buffered``: with ingest's ``-flush_packets 0``
    (``tasks.audio.decode.BUFFERED_OUTPUT``: 32 kB writes, not one per decoded frame)."""
    from tasks.audio.decode import BUFFERED_OUTPUT
    from tasks.audio.ffmpeg import ffmpeg_binary

    ffmpeg, extra = ffmpeg_binary(), list(BUFFERED_OUTPUT) if buffered else []
    command = [ffmpeg, "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(sample_rate)]
    pcm = subprocess.run([*command, *extra, "-"], capture_output=True, check=True).stdout
    return len(pcm) // 4


def verdict(value: float, limit: float, *, at_most: bool = False) -> str:
    """ "ok" when ``value`` meets the target ``limit`` (``>=``, or ``<=`` with ``at_most``), else "MISSED"."""
    ok = value <= limit if at_most else value >= limit
    return "ok" if ok else "MISSED"


def target(value: float, limit: float, *, at_most: bool = False) -> str:
    """The target and its verdict, e.g. ">= 0.7 MISSED"."""
    return f"{'<=' if at_most else '>='} {limit:g} {verdict(value, limit, at_most=at_most)}"


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
