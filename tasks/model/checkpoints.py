"""The Keras callback that checkpoints training into the store (imports TensorFlow)."""

from __future__ import annotations

import math
import posixpath
import time
from collections.abc import Callable

import keras

from tasks.config import TrainConfig
from tasks.model.repository import (
    CHECKPOINTS,
    KEEP_CHECKPOINTS,
    STATE_FILE,
    STOP_BUDGET,
    STOP_COMPLETED,
    STOP_EARLY,
    EpochCallback,
    best_epoch,
    checkpoint_name,
    keras_bytes,
)
from tasks.store.store import Store


class Checkpointer(keras.callbacks.Callback):
    """Checkpoint after each finite epoch, then commit ``state.json``; note a NaN/inf loss and stop.

    Early stopping lives here rather than in ``keras.callbacks.EarlyStopping`` so that it
    counts from the saved history: a resumed run stops where an uninterrupted one would.
    ``patience_from`` is the epoch the patience window may start at (a finished model
    trained further gets a fresh window). The best validation epoch's checkpoint is
    never pruned: it becomes the final model.

    The run's budget: at the end of the epoch that finds ``time.perf_counter()`` at or past
    ``deadline`` (its checkpoint written), training stops with ``stop_reason`` ``budget``
    (unless it completed or stopped early on that epoch); ``max_minutes`` is recorded with it.

    ``fence`` (the model lock's ``ensure``) is called right before each write and removal.
    """

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
        *,
        patience_from: int = 0,
        deadline: float | None = None,
        max_minutes: float | None = None,
        fence: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.store, self.directory, self.dataset_id, self.config = store, directory, dataset_id, config
        self.history, self.on_epoch, self.started = history, on_epoch, started
        self.config_hash = config_hash
        self.patience_from = patience_from
        self.deadline, self.max_minutes = deadline, max_minutes
        self.fence = fence
        self.diverged: str | None = None
        self.stop_reason: str | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        losses = [logs.get("loss", math.nan), logs.get("val_loss", math.nan)]
        if not all(math.isfinite(value) for value in losses):
            self.diverged = "nan" if any(math.isnan(value) for value in losses) else "inf"
            self.model.stop_training = True
            return
        self.history["loss"].append(float(logs["loss"]))
        self.history["val_loss"].append(float(logs["val_loss"]))
        done = epoch + 1
        best = best_epoch(self.history["val_loss"])
        patience = self.config.patience
        if done >= self.config.epochs:
            self.stop_reason = STOP_COMPLETED
        elif patience and done - max(best, self.patience_from) >= patience:
            self.stop_reason = STOP_EARLY
            self.model.stop_training = True
        # Every write checks the model's lock first (fence): a run frozen past the lock's expiry,
        # whose model another run took meanwhile, raises here instead of overwriting its work.
        self.store.write_bytes(
            keras_bytes(self.model), self.directory, checkpoint_name(done), fence=self.fence
        )
        if self.stop_reason is None and self.deadline is not None and time.perf_counter() >= self.deadline:
            self.stop_reason = STOP_BUDGET
            self.model.stop_training = True
        state = {
            "epoch": done,
            "checkpoint": checkpoint_name(done),
            "history": self.history,
            "best_epoch": best,
            "stop_reason": self.stop_reason,
            "max_minutes": self.max_minutes,
            "dataset_id": self.dataset_id,
            "config": self.config.to_dict(),
            "config_hash": self.config_hash,
            "wall_seconds": time.perf_counter() - self.started,
        }
        self.store.write_json(state, self.directory, CHECKPOINTS, STATE_FILE, fence=self.fence)
        self._prune(keep={*range(done - KEEP_CHECKPOINTS + 1, done + 1), best})
        if self.on_epoch is not None:
            self.on_epoch(done, self.config.epochs, {"loss": losses[0], "val_loss": losses[1]})

    def _prune(self, *, keep: set[int]) -> None:
        """Remove the epoch checkpoints that are neither recent nor the best (after the commit)."""
        folder = self.store.path(self.directory, CHECKPOINTS)
        for path in self.store.fs.ls(folder, detail=False):
            name = posixpath.basename(path.rstrip("/"))
            if not (name.startswith("epoch-") and name.endswith(".keras")):
                continue
            try:
                epoch = int(name[len("epoch-") : -len(".keras")])
            except ValueError:
                continue
            if epoch not in keep:
                if self.fence is not None:
                    self.fence()
                self.store.rm(self.directory, CHECKPOINTS, name)
