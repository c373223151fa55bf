"""Training at library level (``tasks.model.train.train_model``): learning, the model card, resume,
checkpoints on S3, and every bad input refused with a message that names it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from conftest import STFT_FEATURES, STFT_TRAIN, TINY_BLOCK, TINY_TRAIN, UNITS_TRAIN
from helpers import ingest_direct, write_periodic_songs

from tasks.config import FeatureConfig, IngestConfig, TrainConfig
from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import dataset_dir
from tasks.dataset.shards import read_blocks
from tasks.errors import ConfigError
from tasks.model.repository import CHECKPOINTS, STATE_FILE, CheckpointError, load_keras, model_dir, read_card
from tasks.model.train import TrainingDivergedError, train_model
from tasks.model.windows import Normalizer, SongWindows, cut_windows, load_split, make_tf_dataset, split_songs
from tasks.store.store import open_store


def tiny_config(epochs: int, **overrides: Any) -> TrainConfig:
    return TrainConfig.from_preset("small", epochs=epochs, **{**TINY_TRAIN, **overrides})


# The model kinds, each with its small dataset fixture: the seed's (rfft blocks, MSE), the spectral
# model (stft frames, mixture density with input noise and dropout) and the units model (stft frames,
# a softmax over k-means units of steps, with input noise and dropout).
KINDS = {
    "rfft": ("tiny_dataset", tiny_config),
    "stft": ("stft_dataset", lambda epochs: TrainConfig.from_preset("spectral", epochs=epochs, **STFT_TRAIN)),
    "units": ("stft_dataset", lambda epochs: TrainConfig.from_preset("units", epochs=epochs, **UNITS_TRAIN)),
}


def copy_store(store_url: str, tmp_path: Path, name: str = "store") -> str:
    target = tmp_path / name
    shutil.copytree(store_url, target)
    return str(target)


def state_of(store_url: str, model_id: str) -> dict[str, Any]:
    return open_store(store_url).read_json(model_dir(model_id), CHECKPOINTS, STATE_FILE)


def checkpoint_files(store_url: str, model_id: str) -> list[str]:
    store = open_store(store_url)
    folder = store.path(model_dir(model_id), CHECKPOINTS)
    return sorted(Path(path).name for path in store.fs.ls(folder, detail=False))


def song_blocks(store_url: str, dataset_id: str, song_id: str) -> np.ndarray:
    store = open_store(store_url)
    rows = {row.song_id: row for row in read_catalog(store, dataset_dir(dataset_id))}
    row = rows[song_id]
    return read_blocks(store, dataset_dir(dataset_id), row.shard, offset=row.offset, n_blocks=row.n_blocks)


def ingest_songs(
    tmp_path: Path, store_url: str, *, n_songs: int, seconds: float = 3.0, block: int = TINY_BLOCK
) -> str:
    songs = tmp_path / f"songs-{n_songs}-{block}"
    write_periodic_songs(songs, n_songs=n_songs, seconds=seconds, block_size=block)
    return ingest_direct(songs, store_url, IngestConfig(features=FeatureConfig(block_size=block)))


# ---------------------------------------------------------------------------------------------
# Learning and the model card


def test_model_learns_the_periodic_songs(tiny_model: tuple[str, str]) -> None:
    store_url, model_id = tiny_model
    card = read_card(open_store(store_url), model_id)
    val = card["history"]["val_loss"]
    assert len(val) == 3
    assert val[-1] < 0.85 * val[0], val
    assert val[-1] < 0.9 * card["baseline_val_loss"], (val, card["baseline_val_loss"])


def test_baseline_is_the_mean_block_loss(tiny_model: tuple[str, str]) -> None:
    """Recomputed by hand: MSE of predicting the (normalised) mean block for every validation target."""
    store_url, model_id = tiny_model
    store = open_store(store_url)
    card = read_card(store, model_id)
    normalizer = Normalizer.from_dataset(store, card["dataset_id"])
    targets = []
    for song_id in card["val_songs"]:
        blocks = normalizer.apply(song_blocks(store_url, card["dataset_id"], song_id))
        targets.append(cut_windows(blocks, seq_len=TINY_TRAIN["seq_len"], hop=TINY_TRAIN["hop"])[1])
    # the mean block, normalised, is all zeros: the baseline is the mean square of the targets
    expected = float(np.mean(np.square(np.concatenate(targets).astype(np.float64))))
    assert card["baseline_val_loss"] == pytest.approx(expected, rel=1e-5)


def test_model_card(tiny_dataset: tuple[str, str], tiny_model: tuple[str, str]) -> None:
    store_url, model_id = tiny_model
    store = open_store(store_url)
    card = read_card(store, model_id)
    config = tiny_config(3)

    assert card["model_id"] == model_id and model_id.startswith("small-")
    assert card["dataset_id"] == tiny_dataset[1]
    assert card["config"] == config.to_dict()
    assert card["features"]["block_size"] == TINY_BLOCK and card["features"]["n_features"] == 1026
    history = card["history"]
    assert card["epochs"] == len(history["loss"]) == len(history["val_loss"]) == 3
    assert all(np.isfinite(history["loss"])) and all(np.isfinite(history["val_loss"]))
    best = card["best_epoch"]
    assert history["val_loss"][best - 1] == min(history["val_loss"])
    assert (
        card["train_loss"] == history["loss"][best - 1] and card["val_loss"] == history["val_loss"][best - 1]
    )
    assert card["stop_reason"] == "completed"
    # Dense(1026 -> 32), LSTM(32), Dense(32 -> 1026)
    assert card["params"] == (1026 * 32 + 32) + 4 * (32 * 32 + 32 * 32 + 32) + (32 * 1026 + 1026)
    assert len(card["val_songs"]) == 1 and len(card["train_songs"]) == 3
    catalog_ids = [row.song_id for row in read_catalog(store, dataset_dir(card["dataset_id"])) if row.ok]
    assert (card["train_songs"], card["val_songs"]) == split_songs(catalog_ids, val_fraction=0.25, seed=0)
    assert card["wall_seconds"] > 0
    assert {"tensorflow", "keras", "numpy", "python", "musicflow"} <= set(card["versions"])

    directory = model_dir(model_id)
    weights = store.read_bytes(directory, "model.keras")
    assert card["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert store.read_bytes(directory, "loss-curve.png")[:8] == b"\x89PNG\r\n\x1a\n"
    saved = np.load(store.path(directory, "normalization.npz"))
    normalizer = Normalizer.from_dataset(store, card["dataset_id"])
    np.testing.assert_array_equal(saved["mean"], normalizer.mean)
    np.testing.assert_array_equal(saved["std"], normalizer.std)

    # model.keras is the kept model: it scores the card's (best) validation loss
    model = load_keras(weights)
    assert model.count_params() == card["params"]
    rows = {row.song_id: row for row in read_catalog(store, dataset_dir(card["dataset_id"]))}
    windows = SongWindows(
        store_url,
        card["dataset_id"],
        [rows[song] for song in card["val_songs"]],
        seq_len=config.seq_len,
        hop=config.hop,
        normalizer=normalizer,
    )
    data = make_tf_dataset(windows, n_features=1026, batch_size=config.batch_size)
    assert model.evaluate(data, verbose=0) == pytest.approx(card["val_loss"], rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Resume


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_resume_continues_the_history(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    fixture, tiny_config = KINDS[kind]
    store_url = copy_store(request.getfixturevalue(fixture)[0], tmp_path)
    first = train_model(store_url, tiny_config(2))
    assert (first.epochs, first.resumed_from) == (2, 0)
    assert state_of(store_url, first.model_id)["epoch"] == 2

    reported: list[tuple[int, int, dict[str, float]]] = []
    resumed = train_model(
        store_url, tiny_config(4), extend=True, on_epoch=lambda *call: reported.append(call)
    )

    assert resumed.model_id == first.model_id  # same command, same model
    assert (resumed.epochs, resumed.resumed_from) == (4, 2)
    assert resumed.history["loss"][:2] == first.history["loss"]
    assert resumed.history["val_loss"][:2] == first.history["val_loss"]
    assert len(resumed.history["loss"]) == len(resumed.history["val_loss"]) == 4
    assert [(epoch, epochs) for epoch, epochs, _ in reported] == [(3, 4), (4, 4)]  # epochs 3-4 were trained
    assert [logs["val_loss"] for *_, logs in reported] == resumed.history["val_loss"][2:]
    card = read_card(open_store(store_url), first.model_id)
    assert card["history"] == resumed.history and card["epochs"] == 4
    assert card["config"]["epochs"] == 4
    assert state_of(store_url, first.model_id)["epoch"] == 4
    kept = sorted({3, 4, resumed.best_epoch})  # the last two epochs and the best one
    assert checkpoint_files(store_url, first.model_id) == [f"epoch-{n:04d}.keras" for n in kept] + [
        STATE_FILE
    ]

    # asked again: nothing left to train
    again = train_model(store_url, tiny_config(4))
    assert (again.epochs, again.resumed_from, again.history) == (4, 4, resumed.history)

    # --no-resume starts over, and an uninterrupted run of 4 epochs is the resumed run, epoch for epoch
    fresh = train_model(store_url, tiny_config(4), resume=False)
    assert (fresh.epochs, fresh.resumed_from) == (4, 0)
    # The spectral and units models' input noise and dropout draw other random numbers after a resume
    # than in one uninterrupted run (measured: 1.6 % apart at epoch 4), the seed's model none.
    tolerance = 1e-5 if kind == "rfft" else 0.1
    assert fresh.history["loss"][:2] == pytest.approx(resumed.history["loss"][:2], rel=1e-5)
    assert fresh.history["loss"] == pytest.approx(resumed.history["loss"], rel=tolerance)
    assert fresh.history["val_loss"] == pytest.approx(resumed.history["val_loss"], rel=tolerance)
    assert state_of(store_url, first.model_id)["epoch"] == 4


def test_checkpoints_round_trip_through_s3(request: pytest.FixtureRequest, s3_bucket: str) -> None:
    """The default (stft, spectral) model; checkpoints are bytes to the store whatever the kind."""
    fixture, tiny_config = KINDS["stft"]
    local_store, local_id = request.getfixturevalue(fixture)
    store_url = f"{s3_bucket}/store"
    songs = Path(local_store).parent / "songs"
    features = FeatureConfig.for_transform("stft", **STFT_FEATURES)
    dataset_id = ingest_direct(songs, store_url, IngestConfig(features=features))
    assert dataset_id == local_id

    first = train_model(store_url, tiny_config(1))
    store = open_store(store_url)
    assert store.fs.exists(store.path(model_dir(first.model_id), CHECKPOINTS, "epoch-0001.keras"))
    assert state_of(store_url, first.model_id)["epoch"] == 1

    resumed = train_model(store_url, tiny_config(2), extend=True)

    assert (resumed.epochs, resumed.resumed_from) == (2, 1)
    assert resumed.history["loss"][:1] == first.history["loss"]
    assert resumed.history["val_loss"][:1] == first.history["val_loss"]
    card = read_card(store, first.model_id)
    assert card["epochs"] == 2 and card["dataset_id"] == dataset_id
    assert (
        card["weights_sha256"]
        == hashlib.sha256(store.read_bytes(model_dir(first.model_id), "model.keras")).hexdigest()
    )


# ---------------------------------------------------------------------------------------------
# Bad input


def test_store_without_dataset(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no dataset in store") as error:
        train_model(str(tmp_path / "empty"), tiny_config(1))
    assert str(tmp_path / "empty") in str(error.value)


def test_unknown_dataset_id(tiny_dataset: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match="no dataset 'rfft-nope'") as error:
        train_model(tiny_dataset[0], tiny_config(1), dataset_id="rfft-nope")
    assert tiny_dataset[1] in str(error.value)  # lists what the store has


def test_one_song_is_too_few_for_a_validation_split(tmp_path: Path) -> None:
    store_url = str(tmp_path / "store")
    ingest_songs(tmp_path, store_url, n_songs=1)
    with pytest.raises(ConfigError, match="at least 2 songs, the dataset has 1"):
        train_model(store_url, tiny_config(1))
    assert not (tmp_path / "store" / "models").exists()


def test_songs_shorter_than_a_window(tiny_dataset: tuple[str, str]) -> None:
    # 3 s songs at 1024 samples per block: about 130 blocks, fewer than 201
    with pytest.raises(ConfigError, match=r"seq_len \+ 1 = 201 blocks") as error:
        train_model(tiny_dataset[0], tiny_config(1, seq_len=200, hop=200))
    assert "--seq-len" in str(error.value)
    assert not (Path(tiny_dataset[0]) / "models").exists()


@pytest.mark.parametrize("short_part", ["training", "validation"])
def test_split_part_without_a_window(tmp_path: Path, short_part: str) -> None:
    """One long and one 6-block song: with seq_len 8, the part holding the short one has no window."""
    songs = tmp_path / "songs"
    write_periodic_songs(songs, n_songs=1, seconds=3.0, block_size=TINY_BLOCK)
    [short] = write_periodic_songs(
        tmp_path / "short", n_songs=2, seconds=6 * TINY_BLOCK / 44100, block_size=TINY_BLOCK
    )[1:]
    short.rename(songs / "short.wav")
    store_url = str(tmp_path / "store")
    dataset_id = ingest_direct(songs, store_url, IngestConfig(features=FeatureConfig(block_size=TINY_BLOCK)))
    rows = {row.song_id: row for row in read_catalog(open_store(store_url), dataset_dir(dataset_id))}
    short_id = next(song for song, row in rows.items() if row.n_blocks == 6)

    def short_in_validation(seed: int) -> bool:
        val = load_split(open_store(store_url), dataset_id, val_fraction=0.25, seed=seed)[1]
        return short_id in [row.song_id for row in val]

    seed = next(seed for seed in range(50) if short_in_validation(seed) == (short_part == "validation"))
    with pytest.raises(
        ConfigError, match=f"the {short_part} songs give no window of seq_len \\+ 1 = 9 blocks"
    ):
        train_model(store_url, tiny_config(1, seed=seed))


def test_checkpoint_of_another_config_is_refused(tiny_model: tuple[str, str], tmp_path: Path) -> None:
    store_url = copy_store(tiny_model[0], tmp_path)
    model_id = tiny_model[1]
    theirs = read_card(open_store(store_url), model_id)["config_hash"]
    with pytest.raises(ConfigError, match=f"model '{model_id}' belongs to") as error:
        train_model(store_url, tiny_config(4, hidden=16), model_id=model_id)
    message = str(error.value)
    assert theirs in message
    ours = TrainConfig.from_preset("small", epochs=4, **{**TINY_TRAIN, "hidden": 16})
    songs = read_card(open_store(store_url), model_id)
    assert ours.model_hash(songs["dataset_id"], _songs_hash(songs)) in message
    assert "--model-id" in message
    assert read_card(open_store(store_url), model_id)["config"]["hidden"] == 32  # untouched


def _songs_hash(card: dict[str, Any]) -> str:
    from tasks.model.train import songs_hash

    return songs_hash(card["train_songs"] + card["val_songs"])


@pytest.mark.parametrize("model_id", ["../escape", "../../escape", "nested/escape"])
def test_a_model_id_that_climbs_out_of_the_store_is_refused(
    tiny_model: tuple[str, str], tmp_path: Path, model_id: str
) -> None:
    store_url = copy_store(tiny_model[0], tmp_path / "inside")
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=f"invalid model id '{model_id}'"):
        train_model(store_url, tiny_config(1), model_id=model_id)
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before  # nothing written, in or out


def test_checkpoint_of_another_dataset_is_refused(tiny_model: tuple[str, str], tmp_path: Path) -> None:
    store_url = copy_store(tiny_model[0], tmp_path)
    model_id = tiny_model[1]
    theirs = read_card(open_store(store_url), model_id)["dataset_id"]
    other = ingest_songs(tmp_path, store_url, n_songs=2, seconds=1.5, block=512)
    assert other != theirs
    with pytest.raises(ConfigError, match=f"model '{model_id}' belongs to dataset '{theirs}'") as error:
        train_model(store_url, tiny_config(1), dataset_id=other, model_id=model_id)
    assert f"not dataset '{other}'" in str(error.value)


@pytest.mark.parametrize("damaged", ["checkpoint", "state"])
def test_corrupt_checkpoint(tiny_model: tuple[str, str], tmp_path: Path, damaged: str) -> None:
    store_url = copy_store(tiny_model[0], tmp_path)
    model_id = tiny_model[1]
    folder = Path(store_url) / model_dir(model_id) / CHECKPOINTS
    target = folder / ("epoch-0003.keras" if damaged == "checkpoint" else STATE_FILE)
    target.write_bytes(b"\x00garbage, not a keras zip nor json" * 10)

    with pytest.raises(CheckpointError, match="--no-resume") as error:
        train_model(store_url, tiny_config(4), extend=True)
    assert "corrupt" in str(error.value)
    if damaged == "checkpoint":
        assert str(target) in str(error.value)

    if damaged == "checkpoint":  # --no-resume gets past it
        fresh = train_model(store_url, tiny_config(1), resume=False)
        assert (fresh.epochs, fresh.resumed_from) == (1, 0)
        assert json.loads((folder / STATE_FILE).read_text())["epoch"] == 1


class PoisonWeights(keras.callbacks.Callback):
    """Make every weight NaN at the start of epoch ``at`` (0-based): the loss becomes NaN."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if epoch == self.at:
            for variable in self.model.trainable_variables:
                variable.assign(np.full(variable.shape, np.nan, dtype="float32"))


def test_nan_loss_keeps_the_last_good_checkpoint(tiny_dataset: tuple[str, str], tmp_path: Path) -> None:
    store_url = copy_store(tiny_dataset[0], tmp_path)
    with pytest.raises(TrainingDivergedError) as error:
        train_model(store_url, tiny_config(4), callbacks=[PoisonWeights(at=2)])
    message = str(error.value)
    assert "nan at epoch 3" in message and "epoch 2" in message and "--learning-rate" in message

    [model_id] = [path.name for path in (Path(store_url) / "models").iterdir()]
    assert not (Path(store_url) / model_dir(model_id) / "card.json").exists()  # no complete model
    state = state_of(store_url, model_id)
    assert state["epoch"] == 2 and state["checkpoint"] == "checkpoints/epoch-0002.keras"
    assert len(state["history"]["loss"]) == 2 and all(np.isfinite(state["history"]["loss"]))
    good = load_keras(open_store(store_url).read_bytes(model_dir(model_id), state["checkpoint"]))
    assert all(np.isfinite(np.asarray(w)).all() for w in good.get_weights())
    assert "epoch-0003.keras" not in checkpoint_files(store_url, model_id)

    resumed = train_model(store_url, tiny_config(4))  # without the poison, from epoch 2
    assert (resumed.resumed_from, resumed.epochs) == (2, 4)
    assert resumed.history["loss"][:2] == state["history"]["loss"]


class FreezeFrom(keras.callbacks.Callback):
    """Learning rate 0 from epoch ``at`` (0-based): the weights, and so val_loss, stop changing."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if epoch == self.at:
            self.model.optimizer.learning_rate.assign(0.0)


def test_early_stopping(tiny_dataset: tuple[str, str], tmp_path: Path) -> None:
    store_url = copy_store(tiny_dataset[0], tmp_path)
    result = train_model(store_url, tiny_config(6, patience=1), callbacks=[FreezeFrom(at=2)])
    # epochs 1-2 learn; epoch 3 does not improve val_loss, so patience 1 stops there
    assert result.epochs == 3, result.history
    val = result.history["val_loss"]
    assert val[2] == val[1] and val[1] < val[0]
    card = read_card(open_store(store_url), result.model_id)
    assert card["epochs"] == 3 and card["config"]["patience"] == 1
