"""What users of other CLIs expect of ``musicflow``: ``--version``, ``--json`` on every command that
reports, ``--storage-options`` on every command that opens the store, one exit-code rule (2 a usage
error, 1 a failed run, 0 a completed one), and output that fits an 80-column terminal."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
from helpers import ROOT, run_cli

from musicflow.cli import app

OLD_STORE = ROOT / "tests" / "data" / "store-before-layout"
DATASET_ID = "stft-n1024-h256-m128-sr22050-f0daef0d6a"
# serve serves deployments (its runs report in the Prefect UI) and report writes a page (its
# report is the page); every other command reports.
REPORTING = {
    "ingest",
    "status",
    "catalog",
    "train",
    "generate",
    "evaluate",
    "pipeline",
    "check",
    "synth",
    "demo",
}
# synth and demo make their own songs and store; serve opens the store it serves.
OPENS_THE_STORE = (REPORTING - {"synth", "demo"}) | {"serve", "report"}


def _options() -> dict[str, set[str]]:
    group: Any = typer.main.get_command(app)  # a TyperGroup (typer's own click)
    return {
        name: {opt for param in command.params for opt in param.opts}
        for name, command in group.commands.items()
    }


def test_version_is_the_packages(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--version")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (code, out) == (0, f"musicflow {version}\n"), err


def test_every_reporting_command_has_json_and_every_store_command_storage_options() -> None:
    options = _options()
    assert set(options) == REPORTING | OPENS_THE_STORE, (
        "a new command: say whether it reports, opens the store"
    )
    assert [name for name in sorted(REPORTING) if "--json" not in options[name]] == []
    assert [name for name in sorted(OPENS_THE_STORE) if "--storage-options" not in options[name]] == []


def test_a_service_that_does_not_answer_fails_the_run_with_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a usage error: the arguments were right, the Prefect API was down (it exited 2 before)."""
    (tmp_path / "songs").mkdir()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    code, _, err = run_cli(capsys, "ingest", str(tmp_path / "songs"), "--store", str(tmp_path / "store"))
    assert code == 1, err
    (line,) = err.strip().splitlines()
    assert line.startswith("musicflow: error: ") and "is not answering" in line


def test_a_store_that_fails_while_read_exits_1_and_a_missing_one_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    shutil.copytree(OLD_STORE, store)
    (store / "datasets" / DATASET_ID / "catalog" / "000000000002.parquet").write_bytes(
        b"cut short by a crash"
    )

    code, _, err = run_cli(capsys, "status", "--store", str(store))
    assert code == 1, err  # a store failure, not a bad argument (it exited 2 before)
    assert "unreadable" in err and len(err.strip().splitlines()) == 1

    code, _, err = run_cli(capsys, "status", "--store", str(tmp_path / "nowhere"))
    assert code == 2 and "store not found" in err, err


def test_status_fits_80_columns_with_whole_ids(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 80 columns a table column wrapped the dataset id over four lines."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(capsys, "status", "--store", str(OLD_STORE))
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert any(DATASET_ID in line for line in lines), out
    assert any("spectral-2e6afd36cb" in line for line in lines), out
    report = json.loads(run_cli(capsys, "status", "--store", str(OLD_STORE), "--json")[1])
    assert report["datasets"][0]["songs_ok"] == 2


def test_synth_json_lists_the_songs_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--songs", "2", "--min-seconds", "0.5", "--max-seconds", "0.5", "--format", "wav", "--json"]
    code, out, err = run_cli(capsys, "synth", str(tmp_path / "songs"), *args)
    assert code == 0, err
    written = json.loads(out)
    assert written["directory"] == str(tmp_path / "songs")
    assert sorted(written["songs"]) == sorted(str(path) for path in (tmp_path / "songs").iterdir())
    assert len(written["songs"]) == 2
