"""The ``musicflow`` command: a thin front door over the flows.

Errors print as one line; bad arguments exit with code 2, other failures 1.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tasks.config import AUDIO_EXTENSIONS, LOSSES, PRESETS, SHARD_FORMATS, TRANSFORMS
from tasks.errors import ConfigError, MusicflowError, StoreError

# Nothing of the DSP/ML stack (numpy, scipy, TensorFlow, pydub, zarr, pyarrow) nor Prefect is
# imported up here: `musicflow --help` and a bad argument answer at once. Each command imports
# what it needs (tests/test_cli.py checks sys.modules after --help).

# Before Prefect is imported: no telemetry, and no INFO chatter under our progress bar
# (run logs still reach the Prefect UI at INFO).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class TransformChoice(enum.StrEnum):
    stft = "stft"
    rfft = "rfft"
    fft = "fft"


class ShardFormatChoice(enum.StrEnum):
    zarr = "zarr"
    parquet = "parquet"


class DemoFormatChoice(enum.StrEnum):
    mp3 = "mp3"
    wav = "wav"
    ogg = "ogg"
    flac = "flac"


# The choices above are spelled out for typer; they must stay those of the config
# (and DemoFormatChoice those of tasks.audio.synth.DEMO_FORMATS: tests/test_cli.py).
assert tuple(TransformChoice) == TRANSFORMS and tuple(ShardFormatChoice) == SHARD_FORMATS

app = typer.Typer(
    name="musicflow",
    help="Learn to make music from a collection of songs (ingest -> train -> generate).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

StoreOption = Annotated[
    str, typer.Option("--store", help="Store URL: a local path, file://, s3://, memory://...")
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect and Dask logs.")]
StorageOptionsOption = Annotated[
    str | None,
    typer.Option(
        "--storage-options",
        metavar="JSON",
        help="fsspec options of the store, as JSON or @FILE (credentials, endpoint), e.g. "
        '\'{"key": "...", "secret": "...", "endpoint_url": "http://127.0.0.1:9000"}\'. '
        "They stay in this process (and its Dask workers): never in flow-run parameters.",
    ),
]
SourceOptionsOption = Annotated[
    str | None,
    typer.Option(
        "--source-options",
        metavar="JSON",
        help="fsspec options of the source, as JSON or @FILE (it may be on another endpoint).",
    ),
]


# The feature options that ingest, pipeline and serve share.
FormatOption = Annotated[ShardFormatChoice, typer.Option(help="Shard format.")]
TransformOption = Annotated[
    TransformChoice, typer.Option(help="Features: stft (log-mel frames) or the seed's rfft/fft blocks.")
]
BlockSizeOption = Annotated[int, typer.Option(min=2, help="rfft/fft: samples per block.")]
SampleRateOption = Annotated[
    int | None, typer.Option(min=1000, max=384000, help="Decode rate in Hz [stft 22050, rfft/fft 44100].")
]
NFFTOption = Annotated[int | None, typer.Option(help="stft: samples per frame [1024].")]
HopLengthOption = Annotated[int | None, typer.Option(help="stft: samples between frames [256].")]
NMelsOption = Annotated[int | None, typer.Option(help="stft: mel bands, 0 = linear bins [128].")]


def _use_storage_options(
    store: str | None,
    storage_options: str | None,
    source: str | None = None,
    source_options: str | None = None,
) -> None:
    """Register the store's and the source's fsspec options in this process (bad JSON: exit 2)."""
    from tasks.store.credentials import parse_storage_options
    from tasks.store.store import register_storage_options

    parsed = [
        (url, parse_storage_options(value, name))
        for url, value, name in (
            (store, storage_options, "--storage-options"),
            (source, source_options, "--source-options"),
        )
        if url is not None
    ]
    for url, options in parsed:
        register_storage_options(url, options)


class _NoQueueProgress(logging.Filter):
    """Drops "Still processing items: N items remaining...": Prefect's events and log workers say
    so whenever a process exits while they still send what it queued (they send it all the same),
    which put a warning after the command's own last line, its result or its one-line error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Still processing items")


_NO_QUEUE_PROGRESS = _NoQueueProgress()  # one instance: addFilter skips it when already there


def _quiet_console(verbose: bool) -> None:
    if not verbose:
        for handler in ("CONSOLE", "CONSOLE_FLOW_RUNS"):
            os.environ.setdefault(f"PREFECT_LOGGING_HANDLERS_{handler}_LEVEL", "WARNING")
        for worker in ("EventsWorker", "APILogWorker"):  # Prefect's queue services log as their class
            logging.getLogger(worker).addFilter(_NO_QUEUE_PROGRESS)


def _progress_bar(console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _run_with_progress(function: Any, **kwargs: Any) -> Any:
    """Run a flow showing :mod:`flows.runtime.progress` reports: a rich progress bar on a terminal,
    one plain line per epoch or batch otherwise (cron, CI, a log file)."""
    from rich.console import Console

    from flows.runtime.progress import LinePrinter, listening

    console = Console(stderr=True)
    if not console.is_terminal:
        with listening(LinePrinter(sys.stderr)):
            return function(**kwargs)
    bars: dict[str, Any] = {}
    with _progress_bar(console) as progress:

        def listener(stage: str, done: float, total: float, message: str) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=total, message=message)
            progress.update(bars[stage], completed=done, total=total, message=message)

        with listening(listener):
            return function(**kwargs)


@app.command()
def ingest(
    source: Annotated[
        str, typer.Argument(help="Folder, file or fsspec URL of songs (searched recursively).")
    ],
    store: StoreOption,
    format: FormatOption = ShardFormatChoice.zarr,
    transform: TransformOption = TransformChoice.stft,
    block_size: BlockSizeOption = 11025,
    sample_rate: SampleRateOption = None,
    n_fft: NFFTOption = None,
    hop_length: HopLengthOption = None,
    n_mels: NMelsOption = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="LocalCluster worker processes [default: cores].")
    ] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="Existing Dask scheduler, e.g. tcp://host:8786.")
    ] = None,
    batch_mb: Annotated[float, typer.Option(min=0.001, help="Compressed audio per Dask task, in MB.")] = 32.0,
    retry_failed: Annotated[bool, typer.Option(help="Decode again songs that failed before.")] = False,
    strict: Annotated[
        bool,
        typer.Option(help="Fail every song the decoder reports errors for (default: keep concealed ones)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    storage_options: StorageOptionsOption = None,
    source_options: SourceOptionsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Decode new songs into FFT feature shards (skips songs already ingested)."""
    _quiet_console(verbose)
    _use_storage_options(store, storage_options, source, source_options)
    from flows.runtime.cluster import check_cluster_options
    from musicflow.server import ensure_prefect_api
    from tasks.audio.decode import ffmpeg_binary
    from tasks.config import ingest_config
    from tasks.ingest.worker import open_source
    from tasks.store.store import check_writable, open_store

    options: dict[str, Any] = {
        "format": format.value,
        "transform": transform.value,
        "block_size": block_size,
        "sample_rate": sample_rate,
        "n_fft": n_fft,
        "hop_length": hop_length,
        "n_mels": n_mels,
        "batch_mb": batch_mb,
        "retry_failed": retry_failed,
        "strict": strict,
    }
    ingest_config(**options)  # a bad value is one line before any server starts
    ffmpeg_binary()
    open_source(source)
    check_writable(open_store(store))
    check_cluster_options(workers=workers, dask_address=dask_address)  # before a server starts
    ensure_prefect_api()
    from flows.ingest import ingest as ingest_flow

    summary = _run_with_progress(
        ingest_flow, source=source, store=store, workers=workers, dask_address=dask_address, **options
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_ingest_summary(summary)
    if summary["songs_listed"] == 0:
        raise ConfigError(f"no audio files found in {source!r} (looked for {', '.join(AUDIO_EXTENSIONS)})")


def _print_ingest_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(soft_wrap=True)
    console.print(
        f"dataset [bold]{summary['dataset_id']}[/]: {summary['songs_ok']} songs ingested, "
        f"{summary['songs_failed']} failed, {summary['songs_skipped']} skipped, "
        f"{len(summary.get('warnings', []))} kept with decode warnings; "
        f"{summary['audio_seconds'] / 60:.1f} min of audio at {summary['x_realtime']:.0f}x real time"
    )
    for failure in summary["failures"]:
        console.print(f"  [red]failed[/] {failure['source']}: {failure['error']}", highlight=False)


@app.command()
def status(
    store: StoreOption,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON with datasets, models and generated lists.")
    ] = False,
    storage_options: StorageOptionsOption = None,
) -> None:
    """What the store holds: datasets, models and generated clips."""
    _use_storage_options(store, storage_options)
    from tasks.status import store_status

    report = store_status(_open_existing_store(store))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    sections = {
        "datasets": ["dataset_id", "songs_ok", "songs_failed", "seconds", "n_blocks", "n_features", "format"],
        "models": ["model_id", "dataset_id", "state", "epochs", "train_loss", "val_loss", "params"],
        "generated": ["run_id", "model_id", "count", "seconds", "quality", "collapsed", "location"],
    }
    for section, columns in sections.items():
        if not report.get(section):
            continue
        table = Table(title=f"{section} in {store}")
        for column in columns:
            table.add_column(column, overflow="fold")
        for item in report[section]:
            table.add_row(*(_cell(item[column]) for column in columns))
        console.print(table)
    if not any(report.get(section) for section in sections):
        console.print(f"{store} holds nothing yet: run `musicflow ingest SONGS --store {store}`")


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(item or "no") for item in value)
    return f"{value:.5g}" if isinstance(value, float) else str(value)


class LossChoice(enum.StrEnum):
    mse = "mse"
    mae = "mae"
    gaussian = "gaussian"


class PresetChoice(enum.StrEnum):
    spectral = "spectral"
    small = "small"
    gruv = "gruv"


assert tuple(LossChoice) == LOSSES and set(PresetChoice) == set(PRESETS)


@app.command()
def train(
    store: StoreOption,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset id [default: the store's only dataset].")
    ] = None,
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
    hidden: Annotated[int | None, typer.Option(min=1, help="Units of the dense and LSTM layers.")] = None,
    layers: Annotated[int | None, typer.Option(min=1, help="LSTM layers.")] = None,
    seq_len: Annotated[
        int | None, typer.Option(min=1, help="Blocks per training window [40 = 10 s].")
    ] = None,
    hop: Annotated[int | None, typer.Option(min=1, help="Blocks between windows [default: seq-len].")] = None,
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
    model is final unless --epochs asks for more epochs than it has)."""
    _quiet_console(verbose)
    _use_storage_options(store, storage_options)
    from musicflow.server import ensure_prefect_api
    from tasks.config import TrainConfig, model_options
    from tasks.model.train import default_preset, resolve_dataset

    opened = _open_existing_store(store)
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
        "input_noise": input_noise,
        "dropout": dropout,
    }
    config = TrainConfig.from_preset(
        preset.value if preset else default_preset(opened, dataset), epochs=epochs, **given
    )
    ensure_prefect_api()
    from flows.train import train as train_flow

    card = _run_with_progress(
        train_flow,
        store=store,
        dataset=dataset,
        preset=config.preset,
        epochs=epochs,  # None: the preset's, and a finished model stays final
        **model_options(config),
        resume=resume,
        model_id=model_id,
    )
    if as_json:
        typer.echo(json.dumps(card, indent=2))
        return
    from rich.console import Console

    Console(soft_wrap=True).print(
        f"model [bold]{card['model_id']}[/]: {card['epochs']} epochs, "
        f"train loss {card['train_loss']:.5g}, "
        f"validation loss {card['val_loss']:.5g} "
        f"(predicting the mean block: {card['baseline_val_loss']:.5g}), "
        f"{card['params']:,} parameters"
    )


class SeedChoice(enum.StrEnum):
    validation = "validation"
    audio = "audio"
    noise = "noise"


# SeedChoice must stay tasks.generation.generate.SEED_KINDS (tests/test_cli.py).


def _check_generate_options(
    seconds: float, count: int, temperature: float | None, seed_audio: str | None
) -> None:
    from tasks.config import check_generate_request

    check_generate_request(seconds, count, temperature, option_prefix="--")
    if seed_audio is not None:
        from tasks.ingest.worker import open_source

        open_source(seed_audio)


def _open_existing_store(store: str) -> Any:
    from tasks.store.store import open_store

    opened = open_store(store)
    if not opened.fs.exists(opened.root):
        raise StoreError(f"store not found: {store!r}")
    return opened


@app.command()
def generate(
    store: StoreOption,
    model: Annotated[str | None, typer.Option(help="Model id [default: the newest trained model].")] = None,
    seconds: Annotated[float, typer.Option(help="Length of each clip.")] = 10.0,
    count: Annotated[int, typer.Option(help="Number of clips.")] = 1,
    seed: Annotated[SeedChoice, typer.Option(help="What primes the model.")] = SeedChoice.validation,
    seed_audio: Annotated[str | None, typer.Option(help="An audio file to prime the model with.")] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            help="Spread of the samples of a spectral model (0 = its mean) [1]; noise fed back "
            "with each block of a small/gruv model [0]."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json.")] = False,
    storage_options: StorageOptionsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Generate clips from a trained model into STORE/generated/<run_id>/ (WAV, MP3, PNG, metrics)."""
    _quiet_console(verbose)
    _use_storage_options(store, storage_options)
    from musicflow.server import ensure_prefect_api
    from tasks.generation.generate import resolve_model
    from tasks.store.store import check_writable

    _check_generate_options(seconds, count, temperature, seed_audio)
    opened = _open_existing_store(store)
    resolve_model(opened, model)
    check_writable(opened)
    ensure_prefect_api()
    from flows.generate import generate as generate_flow

    report = generate_flow(
        store=store,
        model=model,
        seconds=seconds,
        count=count,
        seed=seed.value,
        seed_audio=seed_audio,
        temperature=temperature,
    )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_generated(report)


def _quality_line(quality: dict[str, Any]) -> str:
    loudness = quality.get("loudness", {})
    return (
        f"quality {quality.get('quality')} (1 = as close to the validation songs as real music, "
        f"0 = shaped noise; d_gen {quality.get('d_gen')}, d_real {quality.get('d_real')}, "
        f"d_noise {quality.get('d_noise')}); loudness {loudness.get('clips_lufs')} LUFS, "
        f"training songs {loudness.get('train_lufs')} LUFS"
    )


def _print_generated(report: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(soft_wrap=True)
    console.print(f"generated by [bold]{report['model_id']}[/] in {report['location']}", highlight=False)
    if "quality" in report:
        console.print(f"  {_quality_line(report['quality'])}", highlight=False)
    for clip in report["clips"]:
        metrics = clip["metrics"]
        state = f"[red]collapsed into {metrics['collapsed']}[/]" if metrics["collapsed"] else "ok"
        console.print(
            f"  {clip['name']}: {metrics['seconds']:.1f} s, {metrics['rms_dbfs']} dBFS, "
            f"quality {clip.get('quality', {}).get('quality')}, "
            f"centroid {metrics['spectral_centroid_hz']:.0f} Hz, {state}  ({', '.join(clip['files'])})",
            highlight=False,
        )


@app.command()
def evaluate(
    store: StoreOption,
    model: Annotated[str | None, typer.Option(help="Model id [default: the newest trained model].")] = None,
    run: Annotated[
        str | None, typer.Option(help="Generated run id [default: the model's newest run].")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print quality.json.")] = False,
) -> None:
    """Score a generated run against the model's validation songs (writes quality.json in the run)."""
    from tasks.generation.quality import evaluate as evaluate_run

    report = evaluate_run(_open_existing_store(store), model_id=model, run_id=run)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console

    console = Console(soft_wrap=True)
    console.print(f"run [bold]{report['run_id']}[/] of model {report['model_id']}", highlight=False)
    console.print(f"  {_quality_line(report)}", highlight=False)
    console.print(
        f"  scored on {report['features']} against {report['reference_songs']} validation songs "
        f"({report['reference_seconds']} s, from {report['songs_from']}); onsets per second: clips "
        f"{report['onset_rate']['clips']}, training songs {report['onset_rate']['train']}",
        highlight=False,
    )
    for name, clip in zip(report["clips"], report["per_clip"], strict=True):
        console.print(f"  {name}: quality {clip['quality']}, {clip['lufs']} LUFS", highlight=False)


@app.command()
def pipeline(
    source: Annotated[str, typer.Argument(help="Folder, file or fsspec URL of songs.")],
    store: StoreOption,
    workers: Annotated[int | None, typer.Option(min=1, help="LocalCluster worker processes.")] = None,
    dask_address: Annotated[
        str | None, typer.Option(help="Existing Dask scheduler, e.g. tcp://host:8786.")
    ] = None,
    format: FormatOption = ShardFormatChoice.zarr,
    transform: TransformOption = TransformChoice.stft,
    block_size: BlockSizeOption = 11025,
    preset: Annotated[
        PresetChoice | None, typer.Option(help="Model preset [spectral for stft, small for rfft/fft].")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs.")] = None,
    hidden: Annotated[int | None, typer.Option(min=1, help="Units of the dense and LSTM layers.")] = None,
    seq_len: Annotated[
        int | None, typer.Option(min=1, help="Blocks per training window [40 = 10 s].")
    ] = None,
    hop: Annotated[int | None, typer.Option(min=1, help="Blocks between training windows.")] = None,
    seconds: Annotated[float, typer.Option(help="Length of each generated clip.")] = 10.0,
    count: Annotated[int, typer.Option(help="Number of clips.")] = 1,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling spread (spectral) or fed-back noise (small/gruv).")
    ] = None,
    storage_options: StorageOptionsOption = None,
    source_options: SourceOptionsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Ingest -> train -> generate as one flow run (three subflows in the Prefect UI)."""
    _quiet_console(verbose)
    _use_storage_options(store, storage_options, source, source_options)
    _run_pipeline(
        source=source,
        store=store,
        workers=workers,
        dask_address=dask_address,
        format=format.value,
        transform=transform.value,
        block_size=block_size,
        preset=preset.value if preset else None,
        epochs=epochs,
        hidden=hidden,
        seq_len=seq_len,
        hop=hop,
        seconds=seconds,
        count=count,
        temperature=temperature,
    )


def _run_pipeline(*, source: str, store: str, **options: Any) -> dict[str, Any]:
    from flows.runtime.cluster import check_cluster_options
    from musicflow.server import ensure_prefect_api
    from tasks.audio.decode import ffmpeg_binary
    from tasks.ingest.worker import open_source
    from tasks.store.store import check_writable, open_store

    _check_generate_options(options["seconds"], options["count"], options["temperature"], None)
    ffmpeg_binary()
    open_source(source)
    check_writable(open_store(store))
    check_cluster_options(workers=options["workers"], dask_address=options["dask_address"])
    ensure_prefect_api()
    from flows.pipeline import pipeline as pipeline_flow

    result = _run_with_progress(pipeline_flow, source=source, store=store, **options)
    _print_ingest_summary(result["ingest"])
    card = result["train"]
    from rich.console import Console

    Console(soft_wrap=True).print(
        f"model [bold]{card['model_id']}[/]: {card['epochs']} epochs, validation loss {card['val_loss']:.5g} "
        f"(predicting the mean block: {card['baseline_val_loss']:.5g})"
    )
    _print_generated(result["generate"])
    return result


@app.command()
def serve(
    source: Annotated[str, typer.Option(help="Songs folder or URL the ingest deployment reads.")],
    store: StoreOption,
    cron: Annotated[str, typer.Option(help="Schedule of the generate deployment (UTC).")] = "0 6 * * *",
    ingest_every: Annotated[float | None, typer.Option(help="Also ingest every N seconds.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="LocalCluster worker processes.")] = None,
    dask_address: Annotated[str | None, typer.Option(help="Existing Dask scheduler.")] = None,
    format: FormatOption = ShardFormatChoice.zarr,
    transform: TransformOption = TransformChoice.stft,
    block_size: BlockSizeOption = 11025,
    sample_rate: SampleRateOption = None,
    n_fft: NFFTOption = None,
    hop_length: HopLengthOption = None,
    n_mels: NMelsOption = None,
    preset: Annotated[
        PresetChoice | None, typer.Option(help="Model preset [spectral for stft, small for rfft/fft].")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs.")] = None,
    hidden: Annotated[int | None, typer.Option(min=1, help="Units of the dense and LSTM layers.")] = None,
    layers: Annotated[int | None, typer.Option(min=1, help="LSTM layers.")] = None,
    seq_len: Annotated[int | None, typer.Option(min=1, help="Blocks per training window.")] = None,
    hop: Annotated[int | None, typer.Option(min=1, help="Blocks between training windows.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Windows per batch.")] = None,
    learning_rate: Annotated[float | None, typer.Option(min=0.0, help="RMSprop learning rate.")] = None,
    patience: Annotated[
        int | None, typer.Option(min=1, help="Stop after N epochs without val_loss gain.")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Length of each generated clip.")] = 10.0,
    count: Annotated[int, typer.Option(help="Clips per generate run.")] = 1,
    storage_options: StorageOptionsOption = None,
    source_options: SourceOptionsOption = None,
    store_block: Annotated[
        str | None,
        typer.Option(
            help="Prefect block with the store's credentials (s3-bucket/NAME, aws-credentials/NAME)."
        ),
    ] = None,
    source_block: Annotated[
        str | None, typer.Option(help="Prefect block with the source's credentials.")
    ] = None,
) -> None:
    """Serve the deployments: ingest (on demand/interval), train (when an ingest adds songs to this
    store), generate (cron). Flow runs run here, in child processes."""
    _use_storage_options(store, storage_options, source, source_options)
    _check_generate_options(seconds, count, 0.0, None)
    from deployments.serve import build_deployments
    from musicflow.server import ensure_prefect_api, ui_url
    from tasks.store.credentials import export_storage_options

    deployments = build_deployments(
        source=source,
        store=store,
        generate_cron=cron,
        ingest_every=ingest_every,
        workers=workers,
        dask_address=dask_address,
        shard_format=format.value,
        transform=transform.value,
        block_size=block_size,
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=n_mels,
        preset=preset.value if preset else None,
        epochs=epochs,
        train_options={
            "hidden": hidden,
            "layers": layers,
            "seq_len": seq_len,
            "hop": hop,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "patience": patience,
        },
        seconds=seconds,
        count=count,
        store_block=store_block,
        source_block=source_block,
    )
    api = ensure_prefect_api()
    export_storage_options()  # the flow-run processes inherit them; the API never sees them
    typer.echo(f"serving {', '.join(d.name for d in deployments)}; UI: {ui_url(api)}  (Ctrl+C to stop)")
    typer.echo("trigger an ingest: prefect deployment run 'ingest/musicflow-ingest'")
    from prefect import serve as prefect_serve

    prefect_serve(*deployments)


@app.command()
def check(
    store: StoreOption,
    repair: Annotated[
        bool, typer.Option("--repair", help="Remove orphans, re-queue lost songs, rebuild stats.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Check catalog <-> shards <-> statistics and models; exit 1 when problems are found."""
    _use_storage_options(store, storage_options)
    from tasks.check import check_store

    problems = check_store(_open_existing_store(store), repair=repair)
    if as_json:
        typer.echo(json.dumps({"problems": [problem.to_dict() for problem in problems]}, indent=2))
    else:
        for problem in problems:
            state = " (repaired)" if problem.repaired else ""
            typer.echo(f"{problem.kind}: {problem.location}: {problem.detail}{state}")
        typer.echo(f"{len(problems)} problem(s) found" + (", repaired" if repair and problems else ""))
    if problems:
        raise typer.Exit(1)


@app.command()
def synth(
    directory: Annotated[Path, typer.Argument(help="Folder to write the songs to.")],
    songs: Annotated[int, typer.Option(min=1, help="Number of songs.")] = 8,
    min_seconds: Annotated[float, typer.Option(min=0.1, help="Shortest song.")] = 8.0,
    max_seconds: Annotated[float, typer.Option(min=0.1, help="Longest song.")] = 30.0,
    seed: Annotated[int, typer.Option(help="First song's seed.")] = 0,
    format: Annotated[DemoFormatChoice, typer.Option(help="Audio format.")] = DemoFormatChoice.mp3,
) -> None:
    """Write synthetic demo songs (notes, chords, drums) as real audio files."""
    from tasks.audio.synth import write_demo_songs

    paths = write_demo_songs(
        directory, n_songs=songs, seconds=(min_seconds, max_seconds), seed=seed, format=format.value
    )
    typer.echo(f"{len(paths)} songs in {directory}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where songs, store and outputs go.")] = Path("demo"),
    songs: Annotated[int, typer.Option(min=2, help="Synthetic songs to make.")] = 12,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 8,
    seconds: Annotated[float, typer.Option(help="Length of the generated clip.")] = 10.0,
    workers: Annotated[int | None, typer.Option(min=1, help="LocalCluster worker processes.")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Run ingest -> train -> generate on synthetic songs with a local Prefect server and Dask cluster."""
    _quiet_console(verbose)
    from rich.console import Console

    from musicflow.server import ensure_prefect_api, ui_url
    from tasks.audio.decode import ffmpeg_binary
    from tasks.audio.synth import write_demo_songs

    console = Console(soft_wrap=True)
    ffmpeg_binary()
    song_dir, store = workdir / "songs", str((workdir / "store").resolve())
    paths = write_demo_songs(song_dir, n_songs=songs, seconds=(10.0, 40.0))
    console.print(f"[bold]1/3[/] {len(paths)} demo songs (mp3) in {song_dir}")
    api = ensure_prefect_api(log_dir=workdir.resolve())
    console.print(f"[bold]2/3[/] Prefect API {api}")
    console.print(
        "[bold]3/3[/] pipeline: ingest (Dask LocalCluster, log-mel frames) -> "
        "train (spectral preset) -> generate"
    )
    result = _run_pipeline(
        source=str(song_dir),
        store=store,
        workers=workers,
        dask_address=None,
        format="zarr",
        transform="stft",
        block_size=11025,
        preset="spectral",
        epochs=epochs,
        hidden=None,
        seq_len=None,
        hop=None,
        seconds=seconds,
        count=1,
        temperature=None,
    )
    clip = result["generate"]["clips"][0]
    location = result["generate"]["location"]
    console.print()
    for file in clip["files"]:
        console.print(f"output:     {location}/{file}", highlight=False)
    console.print(f"metrics:    {location}/metrics.json", highlight=False)
    console.print(f"quality:    {_quality_line(result['generate']['quality'])}", highlight=False)
    console.print(f"store:      {store}  (musicflow status --store {store})", highlight=False)
    console.print(f"Prefect UI: {ui_url(api)}  (flow runs, task runs and artifacts)", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning every expected error into one line."""
    try:
        result = app(args=argv, standalone_mode=False)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.TyperException as error:  # usage errors: bad option values, missing arguments
        _fail(
            _with_given_value(error, sys.argv[1:] if argv is None else argv), getattr(error, "exit_code", 2)
        )
    except (ConfigError, StoreError) as error:
        _fail(str(error), 2)
    except MusicflowError as error:
        _fail(str(error), 1)
    if isinstance(result, int) and result:
        sys.exit(result)


def _with_given_value(error: typer.TyperException, args: list[str]) -> str:
    """The usage error's message, naming the value given when the message does not (range checks)."""
    message = error.format_message()
    opts = getattr(getattr(error, "param", None), "opts", None) or []
    given = None
    for index, arg in enumerate(args):
        for opt in opts:
            if arg == opt and index + 1 < len(args):
                given = args[index + 1]
            elif arg.startswith(f"{opt}="):
                given = arg[len(opt) + 1 :]
    if given is None or repr(given) in message or f" {given} " in f" {message} ":
        return message
    head, _, reason = message.partition(": ")
    return f"{head}: {given!r}: {reason}" if reason else f"{message} (got {given!r})"


def _fail(message: str, code: int) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"musicflow: error: {first_line}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
