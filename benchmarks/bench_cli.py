"""How fast ``musicflow --help`` answers: this tree against another commit, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_cli.py [--baseline d4f6791] [--runs 7]

The baseline commit is extracted (``git archive``) into a temporary folder and run with the same
Python; the two are timed alternately, ``--runs`` times each, and the report gives the medians,
their ratio, and which of the heavy modules (numpy, scipy, TensorFlow, pydub, zarr, pyarrow...)
each imported to print its help.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import MUSICFLOW, ROOT, commit_tree, table, target

HEAVY = ("numpy", "scipy", "tensorflow", "keras", "pydub", "zarr", "pyarrow", "prefect", "dask", "matplotlib")
PROBE = """
import json, sys
sys.argv = ["musicflow", "--help"]
from musicflow.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""


def help_seconds(tree: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [*MUSICFLOW, "--help"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 0 and b"Usage:" in result.stdout, result.stderr.decode()
    return elapsed


def heavy_imports(tree: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return [name for name in json.loads(result.stderr.strip().splitlines()[-1]) if name in HEAVY]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="d4f6791", help="commit to compare with (before lazy imports)")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    with commit_tree(args.baseline) as baseline:
        trees = {"this tree": ROOT, f"baseline {args.baseline}": baseline}
        for tree in trees.values():
            help_seconds(tree)  # warm the file cache and the .pyc files
        times: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                times[name].append(help_seconds(tree))
        imported = {name: heavy_imports(tree) for name, tree in trees.items()}

    medians = {name: statistics.median(values) for name, values in times.items()}
    now, before = medians["this tree"], medians[f"baseline {args.baseline}"]
    rows = [("tree", "median s", "min s", "max s", "heavy modules imported")]
    for name, values in times.items():
        rows.append(
            (
                name,
                f"{medians[name]:.3f}",
                f"{min(values):.3f}",
                f"{max(values):.3f}",
                ", ".join(imported[name]) or "none",
            )
        )
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(table(rows))
    print(
        f"\n`musicflow --help`, baseline / this tree: {before / now:.1f}x faster "
        f"({target(before / now, 3.0)})"
    )
    print(f"heavy modules imported by --help in this tree: {', '.join(imported['this tree']) or 'none'}")


if __name__ == "__main__":
    main()
