"""The CLI as an operator meets it: ``--help`` at once (no DSP/ML stack imported), one progress line
per epoch when the output is not a terminal, one-line errors for bad storage options.
(One line per ingest batch: tests/flows/test_credentials.py, whose ``musicflow ingest`` output is a pipe.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, musicflow, start_musicflow

HEAVY = ("numpy", "scipy", "tensorflow", "keras", "pydub", "zarr", "pyarrow", "prefect", "distributed")
HEAVY += ("dask", "matplotlib", "fsspec", "s3fs")

_IMPORTS_AFTER = """
import json, sys
sys.argv = ["musicflow", *json.loads(sys.argv[1])]
from musicflow.cli import main
code = 0
try:
    main()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["serve", "--help"], ["ingest", "--help"]])
def test_help_imports_none_of_the_dsp_ml_stack(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS_AFTER, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, result.stderr
    assert "Usage:" in result.stdout
    loaded = {name.split(".")[0] for name in report["modules"]}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


_WORKER_MODULES = """
import json, sys
from tasks.config import FeatureConfig
from tasks.features.stream import featurise_stream
from tasks.ingest.worker import ingest_batch
rows = []
featurise_stream(sys.argv[1], features=FeatureConfig(), sink=rows.append)
assert rows
print(json.dumps(sorted(sys.modules)))
"""


def test_ingest_workers_import_no_ml_stack(tmp_path: Path) -> None:
    """A Dask worker runs tasks.ingest.worker.ingest_batch (its Prefect task run waits in the flow
    process) and featurises songs: it imports no Prefect, and TensorFlow there would cost each
    worker ~600 MB, which a 1 GiB worker cannot spare for an hour-long song, and librosa's numba
    (2.7 s) or scipy.signal (1.3 s) would slow every worker's start."""
    import wave

    import numpy as np

    song = tmp_path / "tone.wav"
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050) * 32767).astype("<i2")
    with wave.open(str(song), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(22050)
        handle.writeframes(tone.tobytes())
    result = subprocess.run(
        [sys.executable, "-c", _WORKER_MODULES, str(song)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout.strip().splitlines()[-1]))
    loaded = {name.split(".")[0] for name in modules}
    assert not loaded & {"tensorflow", "keras", "matplotlib", "torch", "librosa", "numba", "prefect"}, sorted(
        loaded
    )
    assert not modules & {"scipy.signal", "scipy.stats"}


def test_the_clis_choices_are_the_libraries() -> None:
    from musicflow.cli.options import DemoFormatChoice, SeedChoice
    from tasks.audio.synth import DEMO_FORMATS
    from tasks.generation.generate import SEED_KINDS

    assert tuple(SeedChoice) == SEED_KINDS
    assert tuple(DemoFormatChoice) == DEMO_FORMATS


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["status", "--store", "s3://b/x", "--storage-options", "{bad json"],
            "invalid --storage-options (inline JSON of 9 characters, not shown",
        ),
        (["check", "--store", "s3://b/x", "--storage-options", "[1, 2]"], "expected a JSON object"),
        (
            ["ingest", "s3://songs", "--store", "s3://b/x", "--source-options", "nope"],
            "invalid --source-options (inline JSON of 4 characters, not shown",
        ),
        (["train", "--store", "s3://b/x", "--storage-options", "@/nonexistent/creds.json"], "cannot read"),
        (["evaluate", "--store", "s3://b/x", "--storage-options", "{"], "invalid --storage-options (inline"),
        (
            ["serve", "--source", "s", "--store", "t", "--source-options", "{"],
            "invalid --source-options (inline",
        ),
    ],
)
def test_bad_storage_options_exit_2_naming_them(args: list[str], fragment: str) -> None:
    result = musicflow(*args, env={"PREFECT_API_URL": "http://127.0.0.1:9/api"}, timeout=60)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("musicflow: error: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "value",
    [
        '{"key": "AKIA", "secret": "SENTINEL-9f3c",}',  # a trailing comma
        '{"secret": "SENTINEL-9f3c" "key": "AKIA"}',  # a missing comma
        '["SENTINEL-9f3c"]',  # valid JSON, not an object
    ],
)
def test_bad_storage_options_never_echo_the_secret(value: str) -> None:
    result = musicflow(
        "status", "--store", "s3://b/x", "--storage-options", value,
        env={"PREFECT_API_URL": "http://127.0.0.1:9/api"}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "invalid --storage-options" in result.stderr
    assert "SENTINEL" not in result.stdout + result.stderr, result.stderr


def piped_lines(command: list[str], *, env: dict[str, str], timeout: float = 240) -> list[tuple[str, bool]]:
    """Run ``musicflow COMMAND`` with its output on a pipe; every stderr line with whether the
    process was still running when the line arrived."""
    process = start_musicflow(*command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[str, bool]] = []
    deadline = time.monotonic() + timeout
    try:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append((line.rstrip("\n"), process.poll() is None))
            assert time.monotonic() < deadline, "timed out"
        process.wait(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, "\n".join(line for line, _ in lines)
    return lines


@pytest.mark.usefixtures("prefect_server")
def test_train_without_a_terminal_prints_a_line_per_epoch(
    tiny_dataset: tuple[str, str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_dataset[0], store)
    args = ["train", "--store", str(store), "--epochs", "3", "--hidden", "16", "--seq-len", "8", "--hop", "4"]

    lines = piped_lines(args, env={})

    epochs = [(line, running) for line, running in lines if " epoch " in line]
    assert [line.split(" (")[0] for line, _ in epochs] == ["train: 1/3", "train: 2/3", "train: 3/3"], lines
    assert all("loss" in line and "val" in line and line.endswith(" s]") for line, _ in epochs)
    assert epochs[0][1], "the first epoch's line only came when training was over"
    assert not any("\r" in line or "\x1b[" in line for line, _ in lines)  # no progress-bar redraws
