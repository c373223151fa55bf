"""Training with a checkpoint after every epoch, resume, and a model card.

What a model folder holds is :mod:`tasks.model.repository`'s. A finished model (a card)
is final: training it again returns its card, unless more epochs than it has are asked
for explicitly (``extend``). A run may have a wall-clock budget (``max_minutes``): a property
of the run, not of the model (it is not in the config or its hash).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.config import DEFAULT_PRESETS, TrainConfig, check_max_minutes
from tasks.dataset.repository import STATS_FILE, dataset_dir, read_features, resolve_dataset
from tasks.errors import ConfigError, MusicflowError, StoreError, first_line
from tasks.model.network import (
    assign_units,
    baseline_loss,
    build_model,
    fit_units,
    step_features,
    unit_fit_steps,
    units_baseline_loss,
)
from tasks.model.repository import (
    CARD_FILE,
    CHECKPOINTS,
    LOSS_CURVE_FILE,
    MODEL_FILE,
    NORMALIZATION_FILE,
    STATE_FILE,
    STOP_COMPLETED,
    STOP_INTERRUPTED,
    TRAIN_LOCK_FILE,
    CheckpointError,
    EpochCallback,
    best_epoch,
    checkpoint_name,
    keras_bytes,
    load_keras,
    model_dir,
    normalization_bytes,
    read_finished_card,
    weights_sha256,
)
from tasks.model.tfload import load_tensorflow
from tasks.model.windows import Normalizer, SongWindows, load_split, make_tf_dataset, steps_per_epoch
from tasks.store.store import HeldLock, Store, open_store


class TrainingDivergedError(MusicflowError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ModelBusyError(MusicflowError):
    """Another live run is training the same model (it holds the model folder's lock)."""


@dataclass
class TrainResult:
    model_id: str
    dataset_id: str
    epochs: int
    history: dict[str, list[float]]
    params: int
    resumed_from: int
    wall_seconds: float
    baseline_val_loss: float
    card: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = "completed"
    best_epoch: int = 0


def default_preset(store: Store, dataset_id: str | None) -> str:
    """The preset for a dataset when none is named: ``spectral`` for stft features, the seed's
    ``small`` for its FFT blocks (``DEFAULT_PRESETS``)."""
    return DEFAULT_PRESETS[read_features(store, resolve_dataset(store, dataset_id)).transform]


def default_model_id(dataset_id: str, config: TrainConfig, songs_hash: str) -> str:
    """``<preset>-<hash>``: the same command on the same songs resumes the same model,
    and new songs in the dataset give a new model."""
    return f"{config.preset}-{config.model_hash(dataset_id, songs_hash)}"


def songs_hash(song_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(song_ids)).encode()).hexdigest()[:12]


def train_model(
    store_url: str,
    config: TrainConfig,
    *,
    dataset_id: str | None = None,
    model_id: str | None = None,
    resume: bool = True,
    extend: bool = False,
    on_epoch: EpochCallback | None = None,
    callbacks: list[Any] | None = None,
    max_minutes: float | None = None,
) -> TrainResult:
    """Train (or resume training) a model on a dataset of the store.

    A finished model (its card says why it stopped: ``completed``, ``early_stopping``...)
    is final: training it again, or a Prefect retry, returns its card and trains
    nothing, unless ``extend`` asks for more epochs than it was trained. The final
    ``model.keras`` is the epoch with the best validation loss, not the last one.
    While it trains, the run holds the model folder's lock: a second run on the same
    model fails at once with :class:`ModelBusyError`.

    Parameters
    ----------
    store_url : str
    config : TrainConfig
    dataset_id : str, optional
        Defaults to the store's only dataset.
    model_id : str, optional
        Defaults to ``<preset>-<hash of dataset and config>``, so running the
        same command again resumes the same model.
    resume : bool
        Continue from the last complete checkpoint (same epoch count, one
        continuous history); ``False`` starts over.
    extend : bool
        Train a finished model further, to ``config.epochs``, when that is more
        than the epochs it has (the CLI sets it when ``--epochs`` is given).
    on_epoch : callable, optional
        ``on_epoch(epoch, epochs, logs)`` after each epoch is checkpointed.
    callbacks : list of keras callbacks, optional
        Extra callbacks for ``model.fit`` (they run before the checkpoint of each epoch).
    max_minutes : float, optional
        This run's wall-clock budget, counted from this call (loading the data and the model
        count): training stops at the end of the epoch that crosses it (at least one epoch is
        trained), keeps the best epoch, and the card says ``stop_reason: "budget"``. A model
        stopped by its budget is finished: continuing it takes ``extend`` with more epochs,
        under that run's own budget (or none). :class:`ConfigError` unless positive and finite.
    """
    check_max_minutes(max_minutes)
    deadline = None if max_minutes is None else time.perf_counter() + 60.0 * max_minutes
    load_tensorflow()

    started = time.perf_counter()
    store = open_store(store_url)
    dataset_id = resolve_dataset(store, dataset_id)
    features = read_features(store, dataset_id)
    train_rows, val_rows = load_split(store, dataset_id, val_fraction=config.val_fraction, seed=config.seed)
    songs = songs_hash([row.song_id for row in train_rows + val_rows])
    config_hash = config.model_hash(dataset_id, songs)
    model_id = model_id or default_model_id(dataset_id, config, songs)
    n_features = features.n_features
    needed = (config.seq_len + 1) * config.frames_per_step
    if max(row.n_blocks for row in train_rows + val_rows) < needed:
        longest = max(row.seconds for row in train_rows + val_rows)
        raise ConfigError(
            f"every song is shorter than {window_size_text(config)} = {needed} blocks "
            f"({needed * features.block_seconds:.2f} s; the longest is {longest:.2f} s): "
            "use a smaller --seq-len"
        )
    normalizer = (
        Normalizer.from_dataset(store, dataset_id) if config.normalize else Normalizer.identity(n_features)
    )
    train_windows = make_windows(store_url, dataset_id, train_rows, config, normalizer)
    val_windows = make_windows(store_url, dataset_id, val_rows, config, normalizer)
    for name, windows in (("training", train_windows), ("validation", val_windows)):
        if windows.n_windows == 0:
            raise ConfigError(
                f"the {name} songs give no window of {window_size_text(config)} = {needed} blocks: "
                "use a smaller --seq-len or ingest longer songs"
            )

    directory = model_dir(model_id)
    with hold_model(store, model_id) as held:
        _check_identity(store, directory, model_id, dataset_id, config_hash)
        finished = read_finished_card(store, model_id) if resume else None
        if finished is not None and not (extend and config.epochs > finished["epochs"]):
            return _result_from_card(finished, resumed_from=finished["epochs"])
        return _train(
            store,
            config,
            features=features,
            dataset_id=dataset_id,
            rows=(train_rows, val_rows),
            windows=(train_windows, val_windows),
            normalizer=normalizer,
            model_id=model_id,
            config_hash=config_hash,
            resume=resume,
            extend=extend,
            on_epoch=on_epoch,
            callbacks=callbacks,
            started=started,
            deadline=deadline,
            max_minutes=max_minutes,
            fence=held.ensure,
        )


def _train(
    store: Store,
    config: TrainConfig,
    *,
    features: Any,
    dataset_id: str,
    rows: tuple[list[Any], list[Any]],
    windows: tuple[SongWindows, SongWindows],
    normalizer: Normalizer,
    model_id: str,
    config_hash: str,
    resume: bool,
    extend: bool,
    on_epoch: EpochCallback | None,
    callbacks: list[Any] | None,
    started: float,
    deadline: float | None,
    max_minutes: float | None,
    fence: Callable[[], None],
) -> TrainResult:
    """Train under the model's lock; ``fence`` (the lock's ``ensure``) runs right before every write
    to the model folder, so a run that lost the lock (frozen past its expiry while another run took
    the model) stops before its next write."""
    import keras

    train_rows, val_rows = rows
    train_windows, val_windows = windows
    n_features = features.n_features
    directory = model_dir(model_id)
    state = _load_state(store, directory) if resume else None
    if state is not None:
        model = _load_checkpoint(store, directory, state["checkpoint"])
        initial_epoch, history = (
            int(state["epoch"]),
            {key: list(values) for key, values in state["history"].items()},
        )
        prior_seconds = float(state.get("wall_seconds", 0.0))
        stop_reason = state.get("stop_reason")  # set when the run stopped (completed, early stopping, budget)
        budget = state.get("max_minutes")  # the budget of the run that trained the last epoch
    else:
        if resume and store.exists(directory, CARD_FILE):
            raise CheckpointError(
                f"model {model_id!r} has a card but no checkpoint in "
                f"{store.full_url(directory, CHECKPOINTS)} to continue from: rerun with --no-resume"
            )
        fence()
        store.rm(directory, CARD_FILE)  # first: a card means a complete model
        store.rm(directory, CHECKPOINTS)
        model = build_model(n_features, config, unit_codebook(train_windows, config))
        initial_epoch, history, prior_seconds, stop_reason = 0, {"loss": [], "val_loss": []}, 0.0, None
        budget = None
    store.write_bytes(normalization_bytes(normalizer), directory, NORMALIZATION_FILE, fence=fence)

    # A run that stopped is final unless asked for more epochs; then patience counts afresh.
    wants_more = config.epochs > initial_epoch and (stop_reason is None or extend)
    from tasks.model.checkpoints import Checkpointer  # lazy: it imports Keras; keeps start-up fast

    checkpoint = Checkpointer(
        store,
        directory,
        dataset_id,
        config,
        config_hash,
        history,
        on_epoch,
        started - prior_seconds,
        patience_from=initial_epoch if stop_reason is not None else 0,
        deadline=deadline,
        max_minutes=max_minutes,
        fence=fence,
    )
    codebook = model_codebook(model, config)
    if wants_more:
        train_data = make_tf_dataset(
            train_windows,
            n_features=step_features(n_features, config),
            batch_size=config.batch_size,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            first_epoch=initial_epoch,
            repeat=True,
            codebook=codebook,
        )
        val_data = make_tf_dataset(
            val_windows,
            n_features=step_features(n_features, config),
            batch_size=config.batch_size,
            codebook=codebook,
        )
        model.fit(
            train_data,
            validation_data=val_data,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch(train_windows, config.batch_size),
            initial_epoch=initial_epoch,
            callbacks=[keras.callbacks.TerminateOnNaN(), *(callbacks or []), checkpoint],
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=0,
        )
        stop_reason = checkpoint.stop_reason or (
            STOP_COMPLETED if len(history["loss"]) >= config.epochs else STOP_INTERRUPTED
        )
        if len(history["loss"]) > initial_epoch:
            budget = max_minutes
    if checkpoint.diverged is not None:
        kept = len(history["loss"])
        raise TrainingDivergedError(
            f"loss became {checkpoint.diverged} at epoch {kept + 1}; kept the last good checkpoint "
            f"(epoch {kept}) in {store.full_url(directory, CHECKPOINTS)}: "
            "lower --learning-rate or check the data"
        )
    stop_reason = stop_reason or STOP_COMPLETED

    baseline = mean_block_loss(val_windows, config, normalizer, codebook)
    weights, best = _best_weights(store, directory, history, model)
    wall = time.perf_counter() - checkpoint.started
    card: dict[str, Any] = {
        "model_id": model_id,
        "dataset_id": dataset_id,
        "features": features.to_dict(),
        "config": config.to_dict(),
        "config_hash": config_hash,
        "epochs": len(history["loss"]),
        "history": history,
        "stop_reason": stop_reason,
        "max_minutes": budget,
        "best_epoch": best,
        "train_loss": history["loss"][best - 1],
        "val_loss": history["val_loss"][best - 1],
        "baseline_val_loss": baseline,
        "params": int(model.count_params()),
        "train_songs": [row.song_id for row in train_rows],
        "val_songs": [row.song_id for row in val_rows],
        "stats": store.full_url(dataset_dir(dataset_id), STATS_FILE),
        "normalization": NORMALIZATION_FILE,
        "weights_sha256": weights_sha256(weights),
        "wall_seconds": round(wall, 3),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    store.write_bytes(weights, directory, MODEL_FILE, fence=fence)
    store.write_bytes(
        loss_curve_png(history, baseline, title=model_id, best_epoch=best),
        directory,
        LOSS_CURVE_FILE,
        fence=fence,
    )
    store.write_json(card, directory, CARD_FILE, fence=fence)  # last: a card means a complete model
    return _result_from_card(card, resumed_from=initial_epoch)


def _result_from_card(card: dict[str, Any], *, resumed_from: int) -> TrainResult:
    return TrainResult(
        model_id=card["model_id"],
        dataset_id=card["dataset_id"],
        epochs=card["epochs"],
        history=card["history"],
        params=card["params"],
        resumed_from=resumed_from,
        wall_seconds=card["wall_seconds"],
        baseline_val_loss=card["baseline_val_loss"],
        card=card,
        stop_reason=card.get("stop_reason", STOP_COMPLETED),
        best_epoch=card.get("best_epoch", card["epochs"]),
    )


def _best_weights(
    store: Store, directory: str, history: dict[str, list[float]], model: Any
) -> tuple[bytes, int]:
    """The ``.keras`` bytes of the best validation epoch (its checkpoint is never pruned) and its number."""
    best = best_epoch(history["val_loss"])
    if best and store.exists(directory, checkpoint_name(best)):
        return store.read_bytes(directory, checkpoint_name(best)), best
    # A checkpoint folder from before best epochs were kept: the last epoch is what there is.
    return keras_bytes(model), len(history["loss"])


@contextlib.contextmanager
def hold_model(store: Store, model_id: str) -> Iterator[HeldLock]:
    """Hold ``models/<model_id>/train.lock`` for the block and yield it; :class:`ModelBusyError` at
    once when another live run holds it (the store's lock renews itself while held, and breaks one
    its holder stopped renewing for the lock expiry, ``MUSICFLOW_LOCK_EXPIRY_S``)."""
    directory = model_dir(model_id)
    with contextlib.ExitStack() as stack:
        try:
            held = stack.enter_context(store.lock(directory, TRAIN_LOCK_FILE, timeout=0))
        except StoreError as error:
            if not store.exists(directory, TRAIN_LOCK_FILE):
                raise
            raise ModelBusyError(
                f"model {model_id!r} is being trained by another run ({_lock_holder(store, directory)}): "
                "wait for it to finish, or train another --model-id"
            ) from error
        yield held


def _lock_holder(store: Store, directory: str) -> str:
    try:
        holder = json.loads(store.read_bytes(directory, TRAIN_LOCK_FILE))
        stamp = holder.get("since", holder.get("time"))  # "time": a lock from before "since"
        since = dt.datetime.fromtimestamp(float(stamp), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"pid {holder['pid']} on {holder['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"holder of {store.full_url(directory, TRAIN_LOCK_FILE)}"


def _check_identity(store: Store, directory: str, model_id: str, dataset_id: str, config_hash: str) -> None:
    """Refuse a model folder that holds another dataset's or another config's model."""
    for name in (f"{CHECKPOINTS}/{STATE_FILE}", CARD_FILE):
        if not store.exists(directory, name):
            continue
        try:
            existing = store.read_json(directory, name)
        except ValueError as error:
            raise CheckpointError(
                f"{store.full_url(directory, name)} is corrupt ({error}): rerun with --no-resume"
            ) from error
        theirs = (existing.get("dataset_id"), existing.get("config_hash"))
        ours = (dataset_id, config_hash)
        if theirs != ours:
            raise ConfigError(
                f"model {model_id!r} belongs to dataset {theirs[0]!r} with config/songs hash {theirs[1]!r}, "
                f"not dataset {ours[0]!r} with config/songs hash {ours[1]!r}: choose another --model-id"
            )


def _load_state(store: Store, directory: str) -> dict[str, Any] | None:
    if not store.exists(directory, CHECKPOINTS, STATE_FILE):
        return None
    try:
        state = store.read_json(directory, CHECKPOINTS, STATE_FILE)
        return state if state["epoch"] and state["checkpoint"] else None
    except (ValueError, KeyError) as error:
        raise CheckpointError(
            f"checkpoint state in {store.full_url(directory, CHECKPOINTS)} is corrupt ({error}): "
            "rerun with --no-resume to start over"
        ) from error


def _load_checkpoint(store: Store, directory: str, name: str) -> Any:
    try:
        return load_keras(store.read_bytes(directory, name))
    except Exception as error:  # a truncated zip, a missing file, a bad config: all mean the same
        reason = first_line(error)[:200]
        raise CheckpointError(
            f"checkpoint {store.full_url(directory, name)} is corrupt ({reason}): "
            "rerun with --no-resume to start over"
        ) from error


def window_size_text(config: TrainConfig) -> str:
    return "seq_len + 1" if config.frames_per_step == 1 else "(seq_len + 1) x frames_per_step"


def make_windows(
    store_url: str, dataset_id: str, rows: list[Any], config: TrainConfig, normalizer: Normalizer
) -> SongWindows:
    """The training (or validation) windows of ``rows``, in steps of ``config.frames_per_step`` rows."""
    return SongWindows(
        store_url,
        dataset_id,
        rows,
        seq_len=config.seq_len,
        hop=config.hop,
        normalizer=normalizer,
        frames_per_step=config.frames_per_step,
    )


def unit_codebook(windows: SongWindows, config: TrainConfig) -> np.ndarray | None:
    """A ``units`` model's codebook: the k-means centroids of the training songs' normalised steps
    (:func:`tasks.model.network.fit_units`); None for the other losses."""
    if config.loss != "units":
        return None
    found = sum(windows.n_steps(row) for row in windows.rows)
    if found < config.units:
        raise ConfigError(
            f"invalid units {config.units!r}: the training songs have only {found} steps of "
            f"{config.frames_per_step} frames to fit them on: use fewer --units or ingest more songs"
        )
    # Only the steps the fit draws are read, a piece of a song at a time (never the songs whole).
    steps = windows.gather_steps(unit_fit_steps(found, seed=config.seed))
    return fit_units(steps, config.units, seed=config.seed)


def model_codebook(model: Any, config: TrainConfig) -> np.ndarray | None:
    """The codebook a ``units`` model holds (its ``units`` layer's weights); None for the others."""
    if config.loss != "units":
        return None
    return np.asarray(model.get_layer("units").get_weights()[0], dtype=np.float32)


def mean_block_loss(
    windows: SongWindows, config: TrainConfig, normalizer: Normalizer, codebook: np.ndarray | None = None
) -> float:
    """Loss of always predicting the dataset's mean block (for ``gaussian``: its per-feature
    Gaussian; for ``units``: the validation units' own frequencies): the bar a model must clear."""
    if codebook is not None:
        ids = [assign_units(targets, codebook) for _, targets in windows.iter_windows()]
        summed, values = units_baseline_loss(np.concatenate(ids)) if ids else (0.0, 0)
        return summed / max(values, 1)
    mean_block = np.tile(normalizer.apply(normalizer.mean[None, :])[0], config.frames_per_step)
    total, count = 0.0, 0
    for _, targets in windows.iter_windows():
        summed, values = baseline_loss(targets - mean_block, config)
        total += summed
        count += values
    return total / max(count, 1)


def loss_curve_png(
    history: dict[str, list[float]], baseline: float, *, title: str, best_epoch: int | None = None
) -> bytes:
    """The train/validation loss per epoch, with the mean-block baseline (and the kept epoch), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    epochs = np.arange(1, len(history["loss"]) + 1)
    axes.plot(epochs, history["loss"], marker="o", label="train")
    axes.plot(epochs, history["val_loss"], marker="o", label="validation")
    axes.axhline(baseline, color="grey", linestyle="--", label="predict the mean block")
    if best_epoch:
        axes.axvline(best_epoch, color="green", linestyle=":", label=f"kept: epoch {best_epoch}")
    axes.set(xlabel="epoch", ylabel="loss", title=title)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def versions() -> dict[str, str]:
    """Versions of what made a model: musicflow (and git commit), Python, TensorFlow, Keras, numpy."""
    tf = load_tensorflow()
    import keras

    found = {
        "musicflow": importlib.metadata.version("musicflow"),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            timeout=5,
        )
        if commit.returncode == 0:
            found["git"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return found
