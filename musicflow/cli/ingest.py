"""``musicflow ingest``: new songs of a source into the store's feature shards (the ingest flow)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from musicflow.cli.common import (
    dask_options,
    quiet_console,
    run_with_progress,
    use_storage_options,
)
from musicflow.cli.options import (
    BatchTimeoutOption,
    BlockSizeOption,
    DashboardOption,
    DaskAddressOption,
    DaskSchedulerFileOption,
    DaskSecurityOption,
    FormatOption,
    HopLengthOption,
    NFFTOption,
    NMelsOption,
    SampleRateOption,
    ShardFormatChoice,
    SourceOptionsOption,
    StorageOptionsOption,
    StoreOption,
    TransformChoice,
    TransformOption,
    VerboseOption,
)
from musicflow.cli.reports import print_ingest_summary
from tasks.config import AUDIO_EXTENSIONS, ingest_config
from tasks.errors import ConfigError, InfrastructureError


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
        int | None,
        typer.Option(
            min=1, envvar="MUSICFLOW_WORKERS", help="LocalCluster worker processes [default: cores]."
        ),
    ] = None,
    dask_address: DaskAddressOption = None,
    dask_scheduler_file: DaskSchedulerFileOption = None,
    dask_security: DaskSecurityOption = None,
    dashboard: DashboardOption = True,
    batch_mb: Annotated[float, typer.Option(min=0.001, help="Compressed audio per Dask task, in MB.")] = 32.0,
    retry_failed: Annotated[bool, typer.Option(help="Decode again songs that failed before.")] = False,
    strict: Annotated[
        bool,
        typer.Option(help="Fail every song the decoder reports errors for (default: keep concealed ones)."),
    ] = False,
    max_seconds: Annotated[
        float | None,
        typer.Option(help="Longest song kept, in seconds [14400 = 4 h]; a longer one is a failed row."),
    ] = None,
    batch_timeout: BatchTimeoutOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    storage_options: StorageOptionsOption = None,
    source_options: SourceOptionsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Decode new songs into feature shards, log-mel frames by default (skips songs already ingested).

    Exit code 1 when store, source or cluster errors kept songs from being ingested after every
    retry: they are left unrecorded, and running the same command again tries them again."""
    quiet_console(verbose)
    use_storage_options(store, storage_options, source, source_options)
    from musicflow.server import ensure_prefect_api  # lazy: start-up
    from tasks.audio.ffmpeg import ffmpeg_binary  # lazy: start-up
    from tasks.ingest.sources import open_source  # lazy: start-up
    from tasks.store.store import check_writable, open_store  # lazy: start-up

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
        "max_seconds": max_seconds,
        "batch_timeout": batch_timeout,
    }
    ingest_config(**options)  # a bad value is one line before any server starts
    ffmpeg_binary()
    open_source(source)
    check_writable(open_store(store))
    cluster = dask_options(
        workers=workers,
        dask_address=dask_address,
        dask_scheduler_file=dask_scheduler_file,
        dask_security=dask_security,
        dashboard=dashboard,
    )  # before a server starts
    ensure_prefect_api()
    from flows.ingest import ingest as ingest_flow  # lazy: start-up

    try:
        summary = run_with_progress(ingest_flow, source=source, store=store, **cluster, **options)
    except InfrastructureError as error:  # songs left unrecorded: what was done, then the one line (exit 1)
        if error.summary is not None:
            _print_summary(error.summary, as_json)
        raise
    _print_summary(summary, as_json)
    if summary["songs_listed"] == 0:
        raise ConfigError(f"no audio files found in {source!r} (looked for {', '.join(AUDIO_EXTENSIONS)})")


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        print_ingest_summary(summary)
