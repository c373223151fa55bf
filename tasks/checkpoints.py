"""The Keras callback that checkpoints training into the store (imports TensorFlow)."""

from __future__ import annotations

import math
import time

import keras

from musicflow.config import TrainConfig
from tasks.store import Store
from tasks.train import CHECKPOINTS, KEEP_CHECKPOINTS, STATE_FILE, EpochCallback, keras_bytes


class Checkpointer(keras.callbacks.Callback):
    """Checkpoint after each finite epoch, then commit ``state.json``; note a NaN/inf loss and stop."""

    def __init__(
        self,
        store: Store,
        directory: str,
        dataset_id: str,
        config: TrainConfig,
        config_hash: str,
        history: dict[str, list[float]],
        on_epoch: EpochCallback | None,
        started: float,
    ) -> None:
        super().__init__()
        self.store, self.directory, self.dataset_id, self.config = store, directory, dataset_id, config
        self.history, self.on_epoch, self.started = history, on_epoch, started
        self.config_hash = config_hash
        self.diverged: str | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        losses = [logs.get("loss", math.nan), logs.get("val_loss", math.nan)]
        if not all(math.isfinite(value) for value in losses):
            self.diverged = "nan" if any(math.isnan(value) for value in losses) else "inf"
            self.model.stop_training = True
            return
        self.history["loss"].append(float(logs["loss"]))
        self.history["val_loss"].append(float(logs["val_loss"]))
        name = f"{CHECKPOINTS}/epoch-{epoch + 1:04d}.keras"
        self.store.write_bytes(keras_bytes(self.model), self.directory, name)
        state = {
            "epoch": epoch + 1,
            "checkpoint": name,
            "history": self.history,
            "dataset_id": self.dataset_id,
            "config": self.config.to_dict(),
            "config_hash": self.config_hash,
            "wall_seconds": time.perf_counter() - self.started,
        }
        self.store.write_json(state, self.directory, CHECKPOINTS, STATE_FILE)
        stale = epoch + 1 - KEEP_CHECKPOINTS
        if stale >= 1:
            self.store.rm(self.directory, f"{CHECKPOINTS}/epoch-{stale:04d}.keras")
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, self.config.epochs, {"loss": losses[0], "val_loss": losses[1]})
