"""The model repository (tasks/model/repository.py): what it refuses to load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import pytest
from helpers import ROOT, musicflow

from tasks.model.repository import UnsafeModelError, keras_bytes, load_keras, weights_sha256


def lambda_model_bytes() -> bytes:
    inputs = keras.Input((4,))
    return keras_bytes(keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)))


def test_a_model_file_holding_python_code_is_refused() -> None:
    with pytest.raises(UnsafeModelError, match="holds Python code"):
        load_keras(lambda_model_bytes())
    inputs = keras.Input((4,))
    plain = keras_bytes(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    assert load_keras(plain).output_shape == (None, 2)  # what musicflow writes still loads


@pytest.mark.usefixtures("prefect_server")
def test_generate_refuses_a_planted_lambda_model(tmp_path: Path) -> None:
    """Someone with write access to the store swaps a model's weights (and its card's digest) for a
    file that runs code as it loads: the generate run fails on it (the flow run's log has the
    traceback), the command ends on one line saying why, exit 1 (a failed run: the store holds a bad
    file, the arguments were fine), and nothing is generated."""
    store = tmp_path / "store"
    shutil.copytree(ROOT / "tests" / "data" / "store-before-layout", store)
    model = store / "models" / "spectral-2e6afd36cb"
    planted = lambda_model_bytes()
    (model / "model.keras").write_bytes(planted)
    card = json.loads((model / "card.json").read_text())
    card["weights_sha256"] = weights_sha256(planted)
    (model / "card.json").write_text(json.dumps(card))
    result = musicflow("generate", "--store", str(store), "--seconds", "1")
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("musicflow: error: refused to load a model file that holds Python code"), last
    assert not list(store.glob("generated/*/clip-*"))
