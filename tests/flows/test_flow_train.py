"""The ``train`` flow in the Prefect test harness; ``musicflow train`` and ``status`` as a user runs them."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TINY_TRAIN
from helpers import artifact_table, flow_run_artifacts, musicflow, run_cli

from tasks.config import TrainConfig
from tasks.errors import ConfigError
from tasks.model.repository import CHECKPOINTS, STATE_FILE, model_dir, read_card
from tasks.store.store import open_store


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("musicflow: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.usefixtures("prefect_server")
def test_train_flow_publishes_the_model_and_its_artifacts(
    tiny_dataset: tuple[str, str], tmp_path: Path
) -> None:
    from flows.train import train

    store_url, dataset_id = str(tmp_path / "store"), tiny_dataset[1]
    shutil.copytree(tiny_dataset[0], store_url)
    options = {key: TINY_TRAIN[key] for key in ("hidden", "seq_len", "hop", "batch_size", "learning_rate")}

    state = train(store=store_url, epochs=2, return_state=True, **options)
    card = state.result()

    assert state.is_completed()
    model_id = card["model_id"]
    assert card["dataset_id"] == dataset_id and card["epochs"] == 2
    assert card["config"]["hidden"] == 32 and card["config"]["seq_len"] == 8 and card["config"]["epochs"] == 2
    store = open_store(store_url)
    assert read_card(store, model_id) == card
    weights = store.read_bytes(model_dir(model_id), "model.keras")
    assert hashlib.sha256(weights).hexdigest() == card["weights_sha256"]
    assert store.exists(model_dir(model_id), "loss-curve.png")
    assert store.read_json(model_dir(model_id), CHECKPOINTS, STATE_FILE)["epoch"] == 2

    artifacts = flow_run_artifacts(str(state.state_details.flow_run_id))
    assert {"train-losses", "train-summary", "train-progress"} <= set(artifacts), set(artifacts)
    table = artifact_table(artifacts["train-losses"])
    assert [row["epoch"] for row in table] == [1, 2]
    for row, train_loss, val_loss in zip(
        table, card["history"]["loss"], card["history"]["val_loss"], strict=True
    ):
        assert row["train_loss"] == pytest.approx(train_loss, abs=1e-6)
        assert row["val_loss"] == pytest.approx(val_loss, abs=1e-6)
    summary = artifacts["train-summary"].data
    assert model_id in summary and dataset_id in summary and "loss-curve.png" in summary
    curve = base64.b64encode(store.read_bytes(model_dir(model_id), "loss-curve.png")).decode()
    assert f"![loss curve](data:image/png;base64,{curve})" in summary  # shown in the UI, not a path
    assert artifacts["train-progress"].data == pytest.approx(100.0)  # the task's progress, all epochs

    # the same flow again resumes the same model to more epochs
    again = train(store=store_url, epochs=3, **options)
    assert again["model_id"] == model_id and again["epochs"] == 3
    assert again["history"]["loss"][:2] == card["history"]["loss"]


@pytest.mark.usefixtures("prefect_server")
def test_cli_train_then_status(tiny_dataset: tuple[str, str], tmp_path: Path) -> None:
    store_url, dataset_id = str(tmp_path / "store"), tiny_dataset[1]
    shutil.copytree(tiny_dataset[0], store_url)
    args = ["--store", store_url, "--epochs", "1", "--hidden", "32", "--seq-len", "8", "--hop", "4"]
    args += ["--shuffle-buffer", "16"]

    result = musicflow("train", *args, "--json")

    assert result.returncode == 0, result.stderr
    assert "InitializeLog" not in result.stderr and "oneDNN" not in result.stderr  # TF's start-up lines
    card = json.loads(result.stdout)
    assert card["epochs"] == 1 and card["dataset_id"] == dataset_id
    expected = TrainConfig.from_preset("small", epochs=1, hidden=32, seq_len=8, hop=4, shuffle_buffer=16)
    assert card["config"] == expected.to_dict()

    status = musicflow("status", "--store", store_url, "--json")
    assert status.returncode == 0, status.stderr
    models = json.loads(status.stdout)["models"]
    assert len(models) == 1
    model = models[0]
    assert model["model_id"] == card["model_id"]
    assert model["dataset_id"] == dataset_id
    assert model["epochs"] == 1
    assert model["train_loss"] == pytest.approx(card["history"]["loss"][0])
    assert model["val_loss"] == pytest.approx(card["history"]["val_loss"][0])
    assert model["params"] == card["params"] == 4 * (32 * 32 * 2 + 32) + 1026 * 32 + 32 + 32 * 1026 + 1026

    table = musicflow("status", "--store", store_url)
    assert table.returncode == 0 and card["model_id"][:10] in table.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--loss", "foo"], ["--loss", "foo"]),
        (["--preset", "nope"], ["--preset", "nope"]),
        (["--epochs", "0"], ["--epochs", "'0'"]),
        (["--seq-len=-1"], ["--seq-len", "'-1'"]),
        (["--hidden", "x"], ["--hidden", "'x'"]),
    ],
)
def test_bad_train_options_exit_2_naming_them(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    (tmp_path / "store").mkdir()
    result = musicflow("train", "--store", str(tmp_path / "store"), *args)
    assert_one_line_error(result, 2, *fragments)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("model_id", ["../escape", "../../escape", "a/b"])
def test_a_model_id_that_climbs_out_of_the_store_is_refused(
    tiny_dataset: tuple[str, str], tmp_path: Path, model_id: str
) -> None:
    """The same id as a command-line option and as a flow-run parameter (what a deployment or the UI
    passes): one line naming it, exit 2, and nothing written inside or outside the store."""
    store_url = str(tmp_path / "inside" / "store")
    shutil.copytree(tiny_dataset[0], store_url)
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    result = musicflow("train", "--store", store_url, "--epochs", "1", "--model-id", model_id)
    assert_one_line_error(result, 2, f"invalid model id '{model_id}'")
    from flows.train import train

    with pytest.raises(ConfigError, match="invalid model id"):
        train(store=store_url, epochs=1, model_id=model_id)
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before


@pytest.mark.usefixtures("prefect_server")  # if the check came too late, no real server gets started
def test_train_on_a_store_without_dataset(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    result = musicflow("train", "--store", str(tmp_path / "store"), "--epochs", "1")
    assert_one_line_error(result, 2, "no dataset", str(tmp_path / "store"))
    assert not (tmp_path / "store" / "models").exists()


@pytest.mark.usefixtures("prefect_server")
def test_train_on_a_missing_store(tmp_path: Path) -> None:
    result = musicflow("train", "--store", str(tmp_path / "nowhere"), "--epochs", "1")
    assert_one_line_error(result, 2, "store not found", "nowhere")


@pytest.mark.usefixtures("prefect_server")
def test_a_training_budget_through_the_flow_the_cli_and_status(
    tiny_dataset: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A budget of 6 ms is crossed in the first epoch (loading the data counts): the flow's card,
    its train-summary artifact, ``musicflow train``'s line and ``musicflow status --json`` say ``budget``."""
    from flows.pipeline import pipeline
    from flows.train import train

    store_url = str(tmp_path / "store")
    shutil.copytree(tiny_dataset[0], store_url)
    options = {key: TINY_TRAIN[key] for key in ("hidden", "seq_len", "hop", "batch_size", "learning_rate")}

    state = train(store=store_url, epochs=3, max_minutes=0.0001, return_state=True, **options)
    card = state.result()
    assert (card["epochs"], card["stop_reason"], card["best_epoch"], card["max_minutes"]) == (
        1,
        "budget",
        1,
        0.0001,
    )
    summary = flow_run_artifacts(str(state.state_details.flow_run_id))["train-summary"].data
    assert "- epochs: 1 (budget of 0.0001 min; the model is epoch 1" in summary
    assert train(store=store_url, **options) == card  # the same command without --epochs: final

    code, out, err = run_cli(capsys, "status", "--store", store_url, "--json")
    assert code == 0, err
    (model,) = json.loads(out)["models"]
    assert (model["model_id"], model["stop_reason"]) == (card["model_id"], "budget")

    # the command line (another model: the flow's defaults for batch size and learning rate)
    args = ["--store", store_url, "--epochs", "3", "--hidden", "32", "--seq-len", "8", "--hop", "4"]
    code, out, err = run_cli(capsys, "train", *args, "--max-minutes", "0.0001")
    assert code == 0, err
    assert ": 1 epochs (budget of 0.0001 min; kept epoch 1)" in out, out

    # bad flow parameters are ConfigErrors naming the value, before anything is trained or ingested
    for bad in (0, float("nan")):  # every bad value: test_train_lifecycle.py and the CLI's tests
        with pytest.raises(ConfigError, match=f"invalid max_minutes {float(bad)!r}"):
            train(store=store_url, epochs=3, max_minutes=bad, **options)
        with pytest.raises(ConfigError, match=f"invalid max_minutes {float(bad)!r}"):
            pipeline(source=str(tmp_path / "songs"), store=str(tmp_path / "other"), max_minutes=bad)
    for bad_request, fragment in (
        ({"sampling": "chaos"}, "invalid sampling 'chaos'"),
        ({"phase": "chaos"}, "invalid phase 'chaos'"),
        ({"seconds": 0}, "seconds 0"),
    ):
        with pytest.raises(ConfigError, match=fragment):  # before minutes of ingest and training, not after
            pipeline(source=str(tmp_path / "songs"), store=str(tmp_path / "other"), **bad_request)
    assert not (tmp_path / "other").exists()
