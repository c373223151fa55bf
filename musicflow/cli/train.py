"""``musicflow train``: a model trained (or resumed) on a dataset of the store (the train flow)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from musicflow.cli.common import (
    open_existing_store,
    quiet_console,
    run_with_progress,
    use_storage_options,
)
from musicflow.cli.options import (
    DatasetOption,
    HiddenOption,
    LossChoice,
    MaxMinutesOption,
    PresetChoice,
    SeqLenOption,
    StorageOptionsOption,
    StoreOption,
    VerboseOption,
)
from musicflow.cli.reports import model_line
from tasks.config import TrainConfig, model_options


def train(
    store: StoreOption,
    dataset: DatasetOption = None,
    preset: Annotated[
        PresetChoice | None,
        typer.Option(
            help="spectral (mixture density, for stft), small or gruv (the seed's) "
            "[spectral for stft datasets, small for rfft/fft]."
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Epochs in all [10 for small]; a resumed run continues to it, and a finished "
            "model is trained further only when it is given and above its epochs.",
        ),
    ] = None,
    max_minutes: MaxMinutesOption = None,
    hidden: HiddenOption = None,
    layers: Annotated[int | None, typer.Option(min=1, help="LSTM layers.")] = None,
    seq_len: SeqLenOption = None,
    hop: Annotated[
        int | None, typer.Option(min=1, help="Steps between windows [spectral: 16; small/gruv: seq-len].")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Windows per batch.")] = None,
    loss: Annotated[LossChoice | None, typer.Option(help="Loss function.")] = None,
    learning_rate: Annotated[float | None, typer.Option(min=0.0, help="RMSprop learning rate.")] = None,
    patience: Annotated[
        int | None, typer.Option(min=1, help="Stop after N epochs without val_loss gain.")
    ] = None,
    shuffle_buffer: Annotated[
        int | None,
        typer.Option(
            min=1, help="Windows held for shuffling [256]; each is (seq-len + 1) x features x 4 bytes."
        ),
    ] = None,
    frames_per_step: Annotated[
        int | None, typer.Option(min=1, help="Rows the model predicts per step [spectral: 4].")
    ] = None,
    mixtures: Annotated[int | None, typer.Option(min=1, help="Gaussian loss: mixture components.")] = None,
    units: Annotated[
        int | None, typer.Option(help="Units loss: discrete units, k-means centroids of steps [units: 512].")
    ] = None,
    input_noise: Annotated[
        float | None, typer.Option(min=0.0, help="Std of noise added to training inputs.")
    ] = None,
    dropout: Annotated[float | None, typer.Option(min=0.0, max=0.99, help="Dropout after encode.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = True,
    model_id: Annotated[
        str | None, typer.Option(help="Model folder name [default: preset + config hash].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the model card as JSON.")] = False,
    storage_options: StorageOptionsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Train an LSTM to predict the next frames (resumes from the last checkpoint; a finished
    model, stopped by its epochs, --patience or --max-minutes, is final unless --epochs asks for
    more epochs than it has)."""
    quiet_console(verbose)
    use_storage_options(store, storage_options)
    from musicflow.server import ensure_prefect_api  # lazy: start-up
    from tasks.dataset.repository import resolve_dataset  # lazy: start-up
    from tasks.model.train import default_preset  # lazy: start-up
    from tasks.store.store import checked_id  # lazy: start-up

    if model_id is not None:
        checked_id("model", model_id)  # "../x" never reaches a path: one line before anything runs
    opened = open_existing_store(store)
    resolve_dataset(opened, dataset)  # a one-line error before any server starts
    given = {
        "hidden": hidden,
        "layers": layers,
        "seq_len": seq_len,
        "hop": hop,
        "batch_size": batch_size,
        "loss": loss.value if loss else None,
        "learning_rate": learning_rate,
        "patience": patience,
        "shuffle_buffer": shuffle_buffer,
        "frames_per_step": frames_per_step,
        "mixtures": mixtures,
        "units": units,
        "input_noise": input_noise,
        "dropout": dropout,
    }
    config = TrainConfig.from_preset(
        preset.value if preset else default_preset(opened, dataset), epochs=epochs, **given
    )
    ensure_prefect_api()
    from flows.train import train as train_flow  # lazy: start-up

    card = run_with_progress(
        train_flow,
        store=store,
        dataset=dataset,
        preset=config.preset,
        epochs=epochs,  # None: the preset's, and a finished model stays final
        **model_options(config),
        resume=resume,
        model_id=model_id,
        max_minutes=max_minutes,
    )
    if as_json:
        typer.echo(json.dumps(card, indent=2))
        return
    from rich.console import Console  # lazy: start-up

    Console(soft_wrap=True).print(f"{model_line(card)}, {card['params']:,} parameters")
