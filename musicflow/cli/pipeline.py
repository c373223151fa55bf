"""``musicflow pipeline``: ingest -> train -> generate as one flow run (the pipeline flow)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from musicflow.cli.common import (
    check_generate_options,
    dask_options,
    quiet_console,
    run_with_progress,
    use_storage_options,
)
from musicflow.cli.options import (
    BlockSizeOption,
    DashboardOption,
    DaskAddressOption,
    DaskSchedulerFileOption,
    DaskSecurityOption,
    EpochsOption,
    FormatOption,
    HiddenOption,
    MaxMinutesOption,
    ModelPresetOption,
    PhaseOption,
    SamplingOption,
    SeqLenOption,
    ShardFormatChoice,
    SourceOptionsOption,
    StorageOptionsOption,
    StoreOption,
    TransformChoice,
    TransformOption,
    VerboseOption,
    WorkersOption,
)
from musicflow.cli.reports import model_line, print_generated, print_ingest_summary


def pipeline(
    source: Annotated[str, typer.Argument(help="Folder, file or fsspec URL of songs.")],
    store: StoreOption,
    workers: WorkersOption = None,
    dask_address: DaskAddressOption = None,
    dask_scheduler_file: DaskSchedulerFileOption = None,
    dask_security: DaskSecurityOption = None,
    dashboard: DashboardOption = True,
    format: FormatOption = ShardFormatChoice.zarr,
    transform: TransformOption = TransformChoice.stft,
    block_size: BlockSizeOption = 11025,
    preset: ModelPresetOption = None,
    epochs: EpochsOption = None,
    max_minutes: MaxMinutesOption = None,
    hidden: HiddenOption = None,
    seq_len: SeqLenOption = None,
    hop: Annotated[int | None, typer.Option(min=1, help="Blocks between training windows.")] = None,
    seconds: Annotated[float, typer.Option(help="Length of each generated clip.")] = 10.0,
    count: Annotated[int, typer.Option(help="Number of clips.")] = 1,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling spread (spectral) or fed-back noise (small/gruv).")
    ] = None,
    sampling: SamplingOption = None,
    phase: PhaseOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: the ingest summary, model card and generated run.")
    ] = False,
    storage_options: StorageOptionsOption = None,
    source_options: SourceOptionsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Ingest -> train -> generate as one flow run (three subflows in the Prefect UI)."""
    quiet_console(verbose)
    use_storage_options(store, storage_options, source, source_options)
    result = run_pipeline(
        source=source,
        store=store,
        **dask_options(
            workers=workers,
            dask_address=dask_address,
            dask_scheduler_file=dask_scheduler_file,
            dask_security=dask_security,
            dashboard=dashboard,
        ),
        format=format.value,
        transform=transform.value,
        block_size=block_size,
        preset=preset.value if preset else None,
        epochs=epochs,
        max_minutes=max_minutes,
        hidden=hidden,
        seq_len=seq_len,
        hop=hop,
        seconds=seconds,
        count=count,
        temperature=temperature,
        sampling=sampling.value if sampling else None,
        phase=phase.value if phase else None,
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        print_pipeline(result)


def run_pipeline(*, source: str, store: str, **options: Any) -> dict[str, Any]:
    from flows.runtime.cluster import check_cluster_options  # lazy: start-up
    from musicflow.server import ensure_prefect_api  # lazy: start-up
    from tasks.audio.ffmpeg import ffmpeg_binary  # lazy: start-up
    from tasks.ingest.sources import open_source  # lazy: start-up
    from tasks.store.store import check_writable, open_store  # lazy: start-up

    check_generate_options(options["seconds"], options["count"], options["temperature"], None)
    ffmpeg_binary()
    open_source(source)
    check_writable(open_store(store))
    cluster = ("workers", "dask_address", "dask_scheduler_file", "dask_security")
    check_cluster_options(**{key: options.get(key) for key in cluster})
    ensure_prefect_api()
    from flows.pipeline import pipeline as pipeline_flow  # lazy: start-up

    result: dict[str, Any] = run_with_progress(pipeline_flow, source=source, store=store, **options)
    return result


def print_pipeline(result: dict[str, Any]) -> None:
    """The three stages' results, as ingest, train and generate print theirs."""
    print_ingest_summary(result["ingest"])
    from rich.console import Console  # lazy: start-up

    Console(soft_wrap=True).print(model_line(result["train"]))
    print_generated(result["generate"])
