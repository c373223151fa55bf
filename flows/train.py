"""Flow ``train``: an LSTM that predicts the next frames (or blocks), from the store's shards.

One task trains (it needs a whole machine); the flow publishes the loss table
and the loss curve. Running it again resumes from the last checkpoint.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.prefect_tasks import train_model_task, train_timeout_seconds
from flows.runtime import heartbeats
from flows.runtime.blocks import use_storage
from flows.runtime.images import image_markdown
from flows.runtime.names import train_run_name
from tasks.config import TrainConfig, check_max_minutes
from tasks.model.repository import LOSS_CURVE_FILE, model_dir, stop_text
from tasks.model.train import default_preset
from tasks.store.store import checked_id, open_store

# A finished run returns at once, not after its heartbeat thread's next 1-s step (see the module).
heartbeats.install()


@flow(name="train", flow_run_name=train_run_name)
def train(
    store: str,
    dataset: str | None = None,
    preset: str | None = None,
    epochs: int | None = None,
    hidden: int | None = None,
    layers: int | None = None,
    seq_len: int | None = None,
    hop: int | None = None,
    batch_size: int | None = None,
    loss: str | None = None,
    learning_rate: float | None = None,
    patience: int | None = None,
    shuffle_buffer: int | None = None,
    frames_per_step: int | None = None,
    mixtures: int | None = None,
    input_noise: float | None = None,
    dropout: float | None = None,
    units: int | None = None,
    normalize: bool = True,
    seed: int = 0,
    resume: bool = True,
    model_id: str | None = None,
    max_minutes: float | None = None,
    store_block: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) a model; returns its card (config, losses per epoch, params...).

    A finished model is final: with ``epochs`` left out, or not above the epochs it has,
    the run returns its card. ``dataset`` is what the train deployment's trigger fills
    from the ``musicflow.dataset.updated`` event. ``max_minutes`` is the run's wall-clock
    budget: training stops at the end of the epoch that crosses it and keeps the best epoch
    (the card's ``stop_reason`` is ``budget``); it is not part of the model's id.
    ``store_block`` names a Prefect block with the store's credentials (``s3-bucket/NAME``,
    ``aws-credentials/NAME``).
    """
    check_max_minutes(max_minutes)
    if model_id is not None:
        checked_id("model", model_id)  # a flow-run parameter is anybody's text: refused before any task
    logger = get_run_logger()
    use_storage(store, store_block=store_block)
    preset = preset or default_preset(open_store(store), dataset)  # by the dataset's transform
    config = TrainConfig.from_preset(
        preset,
        epochs=epochs,
        hidden=hidden,
        layers=layers,
        seq_len=seq_len,
        hop=hop,
        batch_size=batch_size,
        loss=loss,
        learning_rate=learning_rate,
        patience=patience,
        shuffle_buffer=shuffle_buffer,
        frames_per_step=frames_per_step,
        mixtures=mixtures,
        input_noise=input_noise,
        dropout=dropout,
        units=units,
        normalize=normalize,
        seed=seed,
    )
    result = train_model_task.with_options(timeout_seconds=train_timeout_seconds(max_minutes))(
        store, config, dataset, model_id, resume, epochs is not None, max_minutes
    )
    if result.resumed_from >= result.epochs:
        logger.info(
            "%s is final (%s after %d epochs, best epoch %d): nothing to train; "
            "ask for more epochs than %d to train it further",
            result.model_id,
            stop_text(result.card),
            result.epochs,
            result.best_epoch,
            result.epochs,
        )
    elif result.resumed_from:
        logger.info("resumed %s from epoch %d", result.model_id, result.resumed_from)
    logger.info(
        "%s: %s after %d epochs; kept epoch %d (validation loss %.5g)",
        result.model_id,
        stop_text(result.card),
        result.epochs,
        result.best_epoch,
        result.card["val_loss"],
    )
    _publish(store, result.card)
    return result.card


def _publish(store: str, card: dict[str, Any]) -> None:
    history = card["history"]
    create_table_artifact(
        key="train-losses",
        table=[
            {"epoch": epoch, "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6)}
            for epoch, (train_loss, val_loss) in enumerate(
                zip(history["loss"], history["val_loss"], strict=True), 1
            )
        ],
        description=f"Losses per epoch (predicting the mean block: {card['baseline_val_loss']:.4g})",
    )
    opened = open_store(store)
    curve = opened.full_url(model_dir(card["model_id"]), LOSS_CURVE_FILE)
    picture = image_markdown(opened, model_dir(card["model_id"]), LOSS_CURVE_FILE, alt="loss curve")
    create_markdown_artifact(
        key="train-summary",
        markdown=(
            f"# Model `{card['model_id']}`\n\n"
            f"- dataset: `{card['dataset_id']}`\n- epochs: {card['epochs']} "
            f"({stop_text(card)}; the model is epoch "
            f"{card.get('best_epoch', card['epochs'])}, the best validation loss)\n"
            f"- train loss: {card['train_loss']:.5g}, validation loss: {card['val_loss']:.5g} "
            f"(predicting the mean block: {card['baseline_val_loss']:.5g})\n"
            f"- parameters: {card['params']:,}\n- wall time: {card['wall_seconds']:.1f} s\n"
            f"- loss curve: `{curve}`\n\n{picture}\n"
        ),
        description="Trained model",
    )
