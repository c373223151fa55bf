"""``musicflow serve``: the deployments served here (``deployments/serve.py``)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated

import typer

from musicflow.cli.common import (
    check_generate_options,
    dask_options,
    read_config_file,
    use_storage_options,
)
from musicflow.cli.options import (
    BatchTimeoutOption,
    BlockSizeOption,
    DashboardOption,
    DaskAddressOption,
    DaskSchedulerFileOption,
    DaskSecurityOption,
    EpochsOption,
    FormatOption,
    HiddenOption,
    HopLengthOption,
    MaxMinutesOption,
    ModelPresetOption,
    NFFTOption,
    NMelsOption,
    SampleRateOption,
    ShardFormatChoice,
    SourceOptionsOption,
    StorageOptionsOption,
    StoreOption,
    TransformChoice,
    TransformOption,
    WorkersOption,
)


def serve(
    source: Annotated[str, typer.Option(help="Songs folder or URL the ingest deployment reads.")],
    store: StoreOption,
    cron: Annotated[str, typer.Option(help="Schedule of the generate deployment (UTC).")] = "0 6 * * *",
    ingest_every: Annotated[float | None, typer.Option(help="Also ingest every N seconds.")] = None,
    workers: WorkersOption = None,
    batch_timeout: BatchTimeoutOption = None,
    dask_address: DaskAddressOption = None,
    dask_scheduler_file: DaskSchedulerFileOption = None,
    dask_security: DaskSecurityOption = None,
    dashboard: DashboardOption = True,
    format: FormatOption = ShardFormatChoice.zarr,
    transform: TransformOption = TransformChoice.stft,
    block_size: BlockSizeOption = 11025,
    sample_rate: SampleRateOption = None,
    n_fft: NFFTOption = None,
    hop_length: HopLengthOption = None,
    n_mels: NMelsOption = None,
    preset: ModelPresetOption = None,
    epochs: EpochsOption = None,
    max_minutes: MaxMinutesOption = None,
    hidden: HiddenOption = None,
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
    config: Annotated[
        str | None,
        typer.Option(
            metavar="FILE.toml",
            is_eager=True,
            callback=read_config_file,
            help="These options as TOML keys (ingest-every = 600, storage-options = {...}); a flag or "
            "MUSICFLOW_* variable given wins over the file.",
        ),
    ] = None,
    name: Annotated[
        str,
        typer.Option(
            help="Deployment names NAME-ingest, NAME-train, NAME-generate: one NAME per store served."
        ),
    ] = "musicflow",
) -> None:
    """Serve the deployments: ingest (on demand/interval), train (when an ingest adds songs to this
    store), generate (cron). Flow runs run here, in child processes; their ingests share one Dask
    LocalCluster kept here (started again if it dies), unless --dask-address/--dask-scheduler-file
    names a cluster."""
    use_storage_options(store, storage_options, source, source_options)
    check_generate_options(seconds, count, 0.0, None)
    cluster = dask_options(
        workers=workers,
        dask_address=dask_address,
        dask_scheduler_file=dask_scheduler_file,
        dask_security=dask_security,
        dashboard=dashboard,
    )
    from deployments.serve import build_deployments  # lazy: start-up
    from flows.runtime.cluster import KeptCluster  # lazy: start-up
    from musicflow.server import ensure_prefect_api, ui_url  # lazy: start-up
    from tasks.store.credentials import export_storage_options  # lazy: start-up

    # The runs' ingests share one cluster, kept here: its address is fixed before the deployments
    # are built (and checked), and it starts only once they are.
    kept = (
        None
        if cluster["dask_address"] or cluster["dask_scheduler_file"]
        else KeptCluster(workers=workers, dashboard=dashboard)
    )
    if kept is not None:
        cluster = {**cluster, "workers": None, "dask_address": kept.address}
    deployments = build_deployments(
        source=source,
        store=store,
        generate_cron=cron,
        ingest_every=ingest_every,
        batch_timeout=batch_timeout,
        **cluster,
        shard_format=format.value,
        transform=transform.value,
        block_size=block_size,
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=n_mels,
        preset=preset.value if preset else None,
        epochs=epochs,
        max_minutes=max_minutes,
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
        name=name,
    )
    api = ensure_prefect_api()
    export_storage_options()  # the flow-run processes inherit them; the API never sees them
    typer.echo(f"serving {', '.join(d.name for d in deployments)}; UI: {ui_url(api)}  (Ctrl+C to stop)")
    typer.echo(f"trigger an ingest: prefect deployment run 'ingest/{deployments[0].name}'")
    from prefect import serve as prefect_serve  # lazy: start-up

    with kept or nullcontext():
        if kept is not None:
            typer.echo(
                f"Dask cluster for the served runs: {kept.address}; dashboard: {kept.dashboard_link or 'off'}"
            )
        prefect_serve(*deployments)
