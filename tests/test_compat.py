"""A store written before the code moved into stage packages still opens, trains and generates.

The fixture ``tests/data/store-before-layout`` was written by commit 07baa79 (see tests/data/README.md):
nothing in a store names a Python module (the Keras loss is registered as ``musicflow>MixtureNLL``), so a
layout change must not break it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import ROOT, musicflow

FIXTURE = ROOT / "tests" / "data" / "store-before-layout"
MODEL_ID = "spectral-2e6afd36cb"
DATASET_ID = "stft-n1024-h256-m128-sr22050-f0daef0d6a"


@pytest.fixture()
def old_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    return store


def test_old_store_reports_and_checks_clean(old_store: Path) -> None:
    status = musicflow("status", "--store", str(old_store), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert [d["dataset_id"] for d in report["datasets"]] == [DATASET_ID]
    assert report["datasets"][0]["songs_ok"] == 2
    assert [m["model_id"] for m in report["models"]] == [MODEL_ID]
    check = musicflow("check", "--store", str(old_store))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_old_store_trains_further_and_generates(old_store: Path) -> None:
    trained = musicflow(
        "train", "--store", str(old_store), "--epochs", "2",
        "--hidden", "8", "--layers", "1", "--seq-len", "8", "--hop", "4",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    card = json.loads((old_store / "models" / MODEL_ID / "card.json").read_text())
    assert card["epochs"] == 2, card  # resumed from the old checkpoint: the same model, one more epoch
    assert len(card["history"]["loss"]) == 2
    generated = musicflow(
        "generate", "--store", str(old_store), "--model", MODEL_ID, "--seconds", "1", "--json"
    )
    assert generated.returncode == 0, generated.stderr
    run = json.loads(generated.stdout)
    run_dir = old_store / "generated" / run["run_id"]
    assert (run_dir / "clip-01.wav").stat().st_size > 0
    assert (run_dir / "metrics.json").exists()
