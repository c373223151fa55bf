"""A training's life: a finished model is final (re-run, Prefect retry), keeps its best validation
epoch, says why it stopped (its epochs, patience or its wall-clock budget), is continued only by
asking for more epochs; two runs never train the same model folder at once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import keras
import pytest
from conftest import TINY_TRAIN

from tasks.config import TrainConfig
from tasks.errors import ConfigError
from tasks.model.repository import (
    CARD_FILE,
    CHECKPOINTS,
    MODEL_FILE,
    STATE_FILE,
    checkpoint_name,
    model_dir,
    read_card,
)
from tasks.model.train import ModelBusyError, train_model
from tasks.store.store import open_store


def tiny_config(epochs: int, **overrides: Any) -> TrainConfig:
    return TrainConfig.from_preset("small", epochs=epochs, **{**TINY_TRAIN, **overrides})


class ScriptedValLoss(keras.callbacks.Callback):
    """Replace each epoch's validation loss by the next scripted value (it runs before the
    checkpoint), so that when patience ends training, and which epoch is best, is known."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        assert logs is not None
        logs["val_loss"] = self.values[epoch]


def files(store_url: str, model_id: str) -> dict[str, bytes]:
    """Every file of the model folder (but the lock), by path: what a no-op run must leave as it is."""
    root = Path(store_url) / model_dir(model_id)
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "train.lock"
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store_url(tiny_dataset: tuple[str, str], tmp_path: Path) -> str:
    target = tmp_path / "store"
    shutil.copytree(tiny_dataset[0], target)
    return str(target)


def test_early_stopped_model_keeps_its_best_epoch_and_stays_final(store_url: str) -> None:
    # validation: 1.0, 0.5 (best), 0.7, 0.8 -> patience 2 ends it after epoch 4 of 8
    script = [1.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99]
    result = train_model(store_url, tiny_config(8, patience=2), callbacks=[ScriptedValLoss(script)])

    assert (result.epochs, result.stop_reason, result.best_epoch) == (4, "early_stopping", 2)
    store = open_store(store_url)
    directory = model_dir(result.model_id)
    card = read_card(store, result.model_id)
    assert card["stop_reason"] == "early_stopping" and card["best_epoch"] == 2 and card["epochs"] == 4
    assert card["history"]["val_loss"] == script[:4]
    assert card["val_loss"] == 0.5 and card["train_loss"] == card["history"]["loss"][1]
    # the final model is epoch 2's checkpoint, which pruning kept besides the last two
    assert sorted(path.name for path in (Path(store_url) / directory / CHECKPOINTS).iterdir()) == [
        "epoch-0002.keras",
        "epoch-0003.keras",
        "epoch-0004.keras",
        STATE_FILE,
    ]
    best = store.read_bytes(directory, checkpoint_name(2))
    assert sha(store.read_bytes(directory, MODEL_FILE)) == sha(best) == card["weights_sha256"]

    # the same command again (or with --epochs not beyond 4) trains nothing and rewrites nothing
    before = files(store_url, result.model_id)
    epochs_seen: list[int] = []
    for again in (
        train_model(store_url, tiny_config(8, patience=2), on_epoch=lambda e, *_: epochs_seen.append(e)),
        train_model(store_url, tiny_config(4, patience=2), extend=True),
    ):
        assert (again.epochs, again.resumed_from, again.stop_reason, again.best_epoch) == (
            4,
            4,
            "early_stopping",
            2,
        )
        assert again.card == card
    assert epochs_seen == []
    assert files(store_url, result.model_id) == before

    # killed after the checkpoints, before the card: the resumed run trains nothing either
    (Path(store_url) / directory / CARD_FILE).unlink()
    (Path(store_url) / directory / MODEL_FILE).unlink()
    healed = train_model(store_url, tiny_config(8, patience=2), on_epoch=lambda e, *_: epochs_seen.append(e))
    assert epochs_seen == []
    assert (healed.epochs, healed.stop_reason, healed.best_epoch) == (4, "early_stopping", 2)
    assert sha(store.read_bytes(directory, MODEL_FILE)) == sha(best)

    # an explicit --epochs beyond what was done continues it, with a fresh patience window
    longer = train_model(
        store_url, tiny_config(6, patience=2), extend=True, callbacks=[ScriptedValLoss(script)]
    )
    assert (longer.resumed_from, longer.epochs, longer.stop_reason, longer.best_epoch) == (
        4,
        6,
        "completed",
        2,
    )
    assert longer.history["val_loss"] == script[:6]
    assert sha(store.read_bytes(directory, MODEL_FILE)) == sha(best)  # epoch 2 is still the best


def test_completed_model_is_final_unless_more_epochs_are_asked_for(store_url: str) -> None:
    first = train_model(store_url, tiny_config(2))
    assert (first.stop_reason, first.epochs) == ("completed", 2)
    before = files(store_url, first.model_id)

    # a re-run without --epochs gets the preset's 10 but does not continue a finished model
    again = train_model(store_url, TrainConfig.from_preset("small", **{**TINY_TRAIN, "epochs": 10}))
    assert again.model_id == first.model_id and (again.epochs, again.resumed_from) == (2, 2)
    assert files(store_url, first.model_id) == before

    more = train_model(store_url, tiny_config(3), extend=True)
    assert (more.epochs, more.resumed_from, more.stop_reason) == (3, 2, "completed")
    assert more.history["loss"][:2] == first.history["loss"]
    assert more.best_epoch == 1 + more.history["val_loss"].index(min(more.history["val_loss"]))


@pytest.mark.usefixtures("prefect_server")
def test_a_prefect_retry_does_not_train_a_finished_run_again(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt trains every epoch, then fails writing its outputs (an I/O error, which
    is retried); the retry writes the card from the checkpoints without training an epoch."""
    from prefect import flow

    import tasks.model.train
    from flows.prefect_tasks import train_model_task as train_task
    from tasks.model.checkpoints import Checkpointer

    epochs_trained: list[int] = []
    checkpoint = Checkpointer.on_epoch_end

    def counting(self: Checkpointer, epoch: int, logs: dict[str, float] | None = None) -> None:
        epochs_trained.append(epoch + 1)
        checkpoint(self, epoch, logs)

    real_curve = tasks.model.train.loss_curve_png
    failures = []

    def fails_once(*args: Any, **kwargs: Any) -> bytes:
        if not failures:
            failures.append(1)
            raise OSError("injected: store unreachable")
        return real_curve(*args, **kwargs)

    monkeypatch.setattr(Checkpointer, "on_epoch_end", counting)
    monkeypatch.setattr(tasks.model.train, "loss_curve_png", fails_once)

    @flow
    def train_once() -> Any:
        return train_task(store_url, tiny_config(3), None, None, False)  # --no-resume: starts over

    result = train_once()

    assert failures == [1]  # the first attempt did fail
    assert epochs_trained == [1, 2, 3]  # and the retry trained nothing
    assert (result.epochs, result.stop_reason, result.resumed_from) == (3, "completed", 3)
    assert read_card(open_store(store_url), result.model_id)["history"] == result.history


def test_two_trainings_of_one_model_at_once(store_url: str) -> None:
    """While one run trains a model, a second run of the same model fails at once, naming the model
    and the holder; the first is not disturbed, and the lock is gone when it ends."""
    inside, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def first_epoch_waits(epoch: int, *_: Any) -> None:
        if epoch == 1:
            inside.set()
            assert release.wait(120), "the test never released the first training"

    def run_first() -> None:
        try:
            outcome["result"] = train_model(store_url, tiny_config(2), on_epoch=first_epoch_waits)
        except BaseException as error:  # reported by the main thread
            outcome["error"] = error

    first = threading.Thread(target=run_first)
    first.start()
    try:
        assert inside.wait(120), outcome.get("error")
        started = time.monotonic()
        with pytest.raises(ModelBusyError) as busy:
            train_model(store_url, tiny_config(2))
        assert time.monotonic() - started < 20  # fails fast, does not wait for the holder
    finally:
        release.set()
        first.join(120)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    message = str(busy.value)
    assert "\n" not in message
    assert f"model {result.model_id!r} is being trained by another run" in message
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message
    assert result.epochs == 2 and result.stop_reason == "completed"
    assert not (Path(store_url) / model_dir(result.model_id) / "train.lock").exists()
    assert train_model(store_url, tiny_config(2)).card == result.card  # free again, and final


# A training in its own process, so that the test can freeze it (SIGSTOP): it imports TensorFlow, says
# "ready", waits for a line on stdin, trains, and says "epoch N" after each checkpoint, then pauses
# there for PAUSE seconds (where the test freezes it: between writes, not in one).
TRAINER = """
import json, sys, time
from tasks.config import TrainConfig
from tasks.model.train import train_model
import keras
store, model_id, epochs, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
config = TrainConfig.from_preset("small", epochs=epochs, **json.loads(sys.argv[5]))
print("ready", flush=True)
sys.stdin.readline()
def on_epoch(epoch, epochs, logs):
    print(f"epoch {epoch}", flush=True)
    time.sleep(pause)
try:
    result = train_model(store, config, model_id=model_id, on_epoch=on_epoch)
except Exception as error:
    print(f"error {type(error).__name__}: {error}", flush=True)
    sys.exit(3)
print(f"done {result.epochs}", flush=True)
"""


def _trainer(store_url: str, model_id: str, *, epochs: int, pause: float) -> subprocess.Popen[str]:
    env = {**os.environ, "MUSICFLOW_LOCK_EXPIRY_S": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [
        sys.executable,
        "-c",
        TRAINER,
        store_url,
        model_id,
        str(epochs),
        str(pause),
        json.dumps(TINY_TRAIN),
    ]
    return subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _expect(process: subprocess.Popen[str], prefix: str) -> str:
    assert process.stdout is not None
    while True:
        line = process.stdout.readline()
        assert line, f"the trainer ended (rc {process.poll()}) before saying {prefix!r}"
        if line.startswith(prefix) or line.startswith("error"):
            assert line.startswith(prefix), line
            return line.strip()


def _stamps(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file of the model folder with its modification time (ns) and content hash."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, sha(path.read_bytes()))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_a_frozen_trainer_that_lost_its_lock_never_writes_again(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer frozen (SIGSTOP) past the lock's expiry (1 s here) while a second trainer (this
    process) takes the model: the second breaks the unrenewed lock, resumes from the first's
    checkpoint and finishes; the first, woken (SIGCONT), stops with a clear error before its next
    write, and the model folder is exactly as the second left it."""
    monkeypatch.setenv("MUSICFLOW_LOCK_EXPIRY_S", "1")
    model_id = "frozen-model"
    folder = Path(store_url) / model_dir(model_id)
    first = _trainer(store_url, model_id, epochs=3, pause=1.0)
    try:
        _expect(first, "ready")
        assert first.stdin is not None
        first.stdin.write("go\n")
        first.stdin.flush()
        _expect(first, "epoch 1")  # its first checkpoint is committed; it pauses 1 s
        os.kill(first.pid, signal.SIGSTOP)
        time.sleep(1.5)  # past the lock's expiry: its heartbeat is frozen too
        result = train_model(store_url, tiny_config(3), model_id=model_id)
        assert (result.resumed_from, result.epochs) == (1, 3)  # from the frozen one's checkpoint
        left = _stamps(folder)
        assert "card.json" in left and "train.lock" not in left
        os.kill(first.pid, signal.SIGCONT)
        message = _expect(first, "error")
        assert first.wait(60) == 3
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert _stamps(folder) == left  # not one write (nor a removal) after it woke
    assert message.startswith("error LockLostError: ") and "was lost" in message, message
    assert "another run took it" in message and "stopped before writing" in message
    assert read_card(open_store(store_url), model_id)["epochs"] == 3


# --- the wall-clock budget (--max-minutes) -----------------------------------------------------------


class Clock:
    """``time`` for tasks.model.train and tasks.model.checkpoints whose ``perf_counter`` runs ahead
    of the real one by ``ahead`` seconds: an epoch that "takes an hour" without waiting for it."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.ahead


class LongEpoch(keras.callbacks.Callback):
    """Epoch ``at`` (1-based) takes ``seconds`` more on ``clock`` (it runs before the checkpoint)."""

    def __init__(self, clock: Clock, at: int, seconds: float) -> None:
        super().__init__()
        self.clock, self.at, self.seconds = clock, at, seconds

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if epoch + 1 == self.at:
            self.clock.ahead += self.seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import tasks.model.checkpoints
    import tasks.model.train

    fake = Clock()
    for module in (tasks.model.train, tasks.model.checkpoints):
        monkeypatch.setattr(module, "time", fake)
    return fake


def test_a_budget_stops_at_the_end_of_the_epoch_that_crosses_it(store_url: str) -> None:
    """With the real clock: a budget of 6 ms is crossed before the first epoch ends (loading the data
    counts), so one epoch of 2 is trained; without a budget the same model trains both."""
    budgeted = train_model(store_url, tiny_config(2), max_minutes=0.0001)
    assert (budgeted.epochs, budgeted.stop_reason, budgeted.best_epoch) == (1, "budget", 1)
    card = read_card(open_store(store_url), budgeted.model_id)
    assert (card["stop_reason"], card["max_minutes"], card["epochs"], card["best_epoch"]) == (
        "budget",
        0.0001,
        1,
        1,
    )
    assert card["config"] == tiny_config(2).to_dict()  # the budget is the run's, not the model's

    unbudgeted = train_model(store_url, tiny_config(2), resume=False)
    assert unbudgeted.model_id == budgeted.model_id  # same model: the budget is not in its id
    assert (unbudgeted.epochs, unbudgeted.stop_reason, unbudgeted.card["max_minutes"]) == (
        2,
        "completed",
        None,
    )


def test_a_budget_stopped_model_keeps_its_best_epoch_and_stays_final(store_url: str, clock: Clock) -> None:
    # validation 1.0, 0.5 (best), 0.7, 0.8...; epoch 3 takes an hour: a 60-minute budget ends it there
    script = [1.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99]
    result = train_model(
        store_url,
        tiny_config(8),
        max_minutes=60,
        callbacks=[ScriptedValLoss(script), LongEpoch(clock, at=3, seconds=3600)],
    )
    assert (result.epochs, result.stop_reason, result.best_epoch) == (3, "budget", 2)
    store = open_store(store_url)
    directory = model_dir(result.model_id)
    card = read_card(store, result.model_id)
    assert (card["stop_reason"], card["max_minutes"], card["best_epoch"]) == ("budget", 60, 2)
    assert card["history"]["val_loss"] == script[:3] and card["val_loss"] == 0.5
    assert sha(store.read_bytes(directory, MODEL_FILE)) == sha(
        store.read_bytes(directory, checkpoint_name(2))
    )
    assert card["wall_seconds"] >= 3600  # the hour the third epoch took

    # the same command again, or --epochs not above 3, trains nothing and rewrites nothing
    before = files(store_url, result.model_id)
    epochs_seen: list[int] = []
    for again in (
        train_model(store_url, tiny_config(8), max_minutes=60, on_epoch=lambda e, *_: epochs_seen.append(e)),
        train_model(store_url, tiny_config(3), max_minutes=60, extend=True),
    ):
        assert (again.epochs, again.resumed_from, again.stop_reason) == (3, 3, "budget")
        assert again.card == card
    assert epochs_seen == []
    assert files(store_url, result.model_id) == before

    # killed after the checkpoints, before the card: the resumed run trains nothing either
    (Path(store_url) / directory / CARD_FILE).unlink()
    healed = train_model(store_url, tiny_config(8), on_epoch=lambda e, *_: epochs_seen.append(e))
    assert epochs_seen == []
    assert (healed.epochs, healed.stop_reason, healed.card["max_minutes"]) == (3, "budget", 60)

    # an explicit --epochs above continues, under its own budget counted from its own start: the
    # first run's started more than an hour ago, and this one trains its 3 epochs
    longer = train_model(
        store_url, tiny_config(6), max_minutes=60, extend=True, callbacks=[ScriptedValLoss(script)]
    )
    assert (longer.resumed_from, longer.epochs, longer.stop_reason, longer.best_epoch) == (
        3,
        6,
        "completed",
        2,
    )
    assert longer.history["val_loss"] == script[:6]
    assert longer.card["max_minutes"] == 60


def test_a_bad_budget_is_a_config_error_naming_it(store_url: str) -> None:
    for bad in (0, -1.5, float("nan"), float("inf"), "30", True):
        with pytest.raises(ConfigError) as raised:
            train_model(store_url, tiny_config(2), max_minutes=bad)  # type: ignore[arg-type]
        assert f"invalid max_minutes {bad!r}: must be a positive, finite number of minutes" == str(
            raised.value
        )
    assert not (Path(store_url) / "models").exists()
