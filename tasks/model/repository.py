"""The model repository: what ``models/<model_id>/`` holds and how it is read and written.

``STORE/models/<model_id>/``::

    checkpoints/epoch-0003.keras   model + optimizer state after epoch 3 (the last two epochs
                                   and the best validation epoch are kept)
    checkpoints/state.json         last complete epoch, history, best epoch, why it stopped
                                   (written last: the commit)
    train.lock                     held by the run training the model
    model.keras                    the final model: the best validation epoch
    normalization.npz              mean/std the model's inputs were scaled with
    card.json                      config, dataset, losses per epoch, best epoch, stop reason,
                                   params, versions, wall time (written last: a finished model)
    loss-curve.png

Training (:mod:`tasks.model.train`, :mod:`tasks.model.checkpoints`), generation, ``status``
and ``check`` all read and write models through this module.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.config import FeatureConfig, TrainConfig
from tasks.dataset.repository import list_datasets, read_features
from tasks.errors import ConfigError, MusicflowError, StoreError
from tasks.model.network import mixture_nll_class, output_size
from tasks.model.tfload import load_tensorflow
from tasks.model.windows import Normalizer
from tasks.store.store import Store, checked_id

MODELS_DIR = "models"
CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
CARD_FILE = "card.json"
MODEL_FILE = "model.keras"
NORMALIZATION_FILE = "normalization.npz"
LOSS_CURVE_FILE = "loss-curve.png"
TRAIN_LOCK_FILE = "train.lock"
KEEP_CHECKPOINTS = 2  # the last epochs kept, besides the best one

# Why a finished training stopped (the card's ``stop_reason``).
STOP_COMPLETED = "completed"  # it trained every epoch asked for
STOP_EARLY = "early_stopping"  # --patience epochs without a better validation loss
STOP_INTERRUPTED = "stopped"  # a callback stopped it before the last epoch
STOP_BUDGET = "budget"  # the run's wall-clock budget (--max-minutes) ran out during its last epoch

# ``on_epoch(epoch, epochs, logs)``: called after each epoch is checkpointed.
EpochCallback = Callable[[int, int, dict[str, float]], None]


class CheckpointError(MusicflowError):
    """A checkpoint cannot be read."""


class ModelMismatchError(MusicflowError):
    """A model's card does not match its weights or its dataset."""


def model_dir(model_id: str) -> str:
    """Folder of a model inside the store (:class:`ConfigError` for an id that is not one folder)."""
    return f"{MODELS_DIR}/{checked_id('model', model_id)}"


def checkpoint_name(epoch: int) -> str:
    return f"{CHECKPOINTS}/epoch-{epoch:04d}.keras"


def best_epoch(val_losses: list[float]) -> int:
    """The 1-based epoch of the lowest validation loss (the first one on a tie); 0 when none."""
    return int(np.argmin(val_losses)) + 1 if val_losses else 0


# --- cards ------------------------------------------------------------------------------------------


def read_card(store: Store, model_id: str) -> dict[str, Any]:
    return store.read_json(model_dir(model_id), CARD_FILE)


def read_finished_card(store: Store, model_id: str) -> dict[str, Any] | None:
    """The card of a finished model, or None (no card: never finished, or still training)."""
    directory = model_dir(model_id)
    if not store.exists(directory, CARD_FILE):
        return None
    try:
        return dict(store.read_json(directory, CARD_FILE))
    except ValueError as error:
        raise CheckpointError(
            f"{store.full_url(directory, CARD_FILE)} is corrupt ({error}): rerun with --no-resume"
        ) from error


def stop_text(card: dict[str, Any]) -> str:
    """Why a model (its card or its ``state.json``) stopped, for a reader: ``completed``,
    ``early_stopping``, ``budget of 30 min``..."""
    reason = str(card.get("stop_reason") or STOP_COMPLETED)
    budget = card.get("max_minutes")
    return f"{reason} of {budget:g} min" if reason == STOP_BUDGET and budget else reason


def list_models(store: Store) -> list[str]:
    """Ids of the finished models in the store (folders with a card)."""
    return [name for name in store.list_ids(MODELS_DIR) if store.exists(model_dir(name), CARD_FILE)]


def resolve_model(store: Store, model_id: str | None) -> str:
    """The model named, or the newest finished model in the store."""
    available = list_models(store)
    if model_id is not None:
        if model_id not in available:
            raise ConfigError(
                f"no trained model {model_id!r} in store {store.url!r} "
                f"(has: {', '.join(available) or 'none'})"
            )
        return model_id
    if not available:
        raise ConfigError(f"no trained model in store {store.url!r}: run `musicflow train` first")
    return max(available, key=lambda name: read_card(store, name).get("created_at", ""))


# --- weights ----------------------------------------------------------------------------------------


def weights_sha256(weights: bytes) -> str:
    """The digest a card records of its ``model.keras`` (``weights_sha256``)."""
    return hashlib.sha256(weights).hexdigest()


def foreign_weights_digest(card: dict[str, Any], weights: bytes) -> str | None:
    """The sha256 of ``weights`` when they are not the file ``card`` describes; None when they are."""
    digest = weights_sha256(weights)
    return None if digest == card.get("weights_sha256") else digest


class UnsafeModelError(StoreError):
    """A ``.keras`` file that would run code as it loads."""


def load_keras(data: bytes) -> Any:
    """A Keras model from the bytes of a ``.keras`` file."""
    load_tensorflow()
    import keras  # lazy: TensorFlow is slow to import; keeps start-up fast

    mixture_nll_class()  # registered before a model that uses it is deserialised
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            # safe_mode: a file that would run Python code as it loads (a Lambda layer's function)
            # is refused, not run: a store's models may come from anyone who can write to it.
            return keras.models.load_model(path, safe_mode=True)
        except ValueError as error:
            if "safe_mode" not in str(error):
                raise
            raise UnsafeModelError(
                "refused to load a model file that holds Python code (a Lambda layer): musicflow "
                "loads only models it can read without running their code"
            ) from None


def keras_bytes(model: Any) -> bytes:
    """The bytes of ``model`` saved as a ``.keras`` file (weights, config, optimizer state)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        with open(path, "rb") as handle:
            return handle.read()


# --- normalisation ----------------------------------------------------------------------------------


def normalization_bytes(normalizer: Normalizer) -> bytes:
    """``normalization.npz``: the mean and std the model's inputs are scaled with."""
    buffer = io.BytesIO()
    np.savez(buffer, mean=normalizer.mean, std=normalizer.std)
    return buffer.getvalue()


def read_normalization(store: Store, model_id: str) -> Normalizer:
    with np.load(io.BytesIO(store.read_bytes(model_dir(model_id), NORMALIZATION_FILE))) as arrays:
        return Normalizer(arrays["mean"].astype(np.float32), arrays["std"].astype(np.float32))


# --- a trained model, checked -----------------------------------------------------------------------


@dataclass
class LoadedModel:
    model_id: str
    card: dict[str, Any]
    model: Any
    normalizer: Normalizer
    features: FeatureConfig
    config: TrainConfig


def load_trained_model(store: Store, model_id: str) -> LoadedModel:
    """Load a model after checking its card against the weights file and the dataset.

    Raises :class:`ModelMismatchError` when ``model.keras`` is not the file the
    card describes (the seed's generator silently loaded the wrong weights),
    or the card's dataset or shapes do not match.
    """
    directory = model_dir(model_id)
    card = read_card(store, model_id)
    weights = store.read_bytes(directory, MODEL_FILE)
    digest = foreign_weights_digest(card, weights)
    if digest is not None:
        raise ModelMismatchError(
            f"model {model_id!r}: {MODEL_FILE} (sha256 {digest[:12]}) is not the file its card describes "
            f"(sha256 {str(card.get('weights_sha256'))[:12]}): retrain it or restore the file"
        )
    dataset_id = card["dataset_id"]
    if dataset_id not in list_datasets(store):
        raise ModelMismatchError(
            f"model {model_id!r} was trained on dataset {dataset_id!r}, which is not in the store"
        )
    features = read_features(store, dataset_id)
    config = TrainConfig.from_dict(card["config"])
    model = load_keras(weights)
    expected = output_size(features.n_features, config)
    if model.output_shape[-1] != expected:
        raise ModelMismatchError(
            f"model {model_id!r} outputs {model.output_shape[-1]} values per step, "
            f"dataset {dataset_id!r} with its config needs {expected}"
        )
    return LoadedModel(model_id, card, model, read_normalization(store, model_id), features, config)
