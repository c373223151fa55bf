"""Flow ``pipeline``: ingest -> train -> generate, one flow run with three subflows."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.generate import generate
from flows.ingest import ingest
from flows.runtime.names import pipeline_run_name
from flows.train import train
from tasks.config import DEFAULT_TRANSFORM, check_generate_request, check_max_minutes


@flow(name="pipeline", flow_run_name=pipeline_run_name)
def pipeline(
    source: str,
    store: str,
    format: str = "zarr",
    transform: str = DEFAULT_TRANSFORM,
    block_size: int = 11025,
    workers: int | None = None,
    dask_address: str | None = None,
    dask_scheduler_file: str | None = None,
    dask_security: dict[str, Any] | None = None,
    dashboard: bool = True,
    preset: str | None = None,
    epochs: int | None = None,
    hidden: int | None = None,
    seq_len: int | None = None,
    hop: int | None = None,
    max_minutes: float | None = None,
    seconds: float = 10.0,
    count: int = 1,
    temperature: float | None = None,
    store_block: str | None = None,
    source_block: str | None = None,
    sampling: str | None = None,
    phase: str | None = None,
) -> dict[str, Any]:
    """Ingest new songs, train (or resume) a model on the dataset, generate clips from it.

    Its ingest does not announce the new songs (``announce=False``): the train deployment's
    trigger would train a second time what this flow trains next. ``max_minutes`` is the
    training's wall-clock budget (see the train flow), checked before anything is ingested, as
    is the generate request (``seconds``, ``count``, ``temperature``, ``sampling``, ``phase``).
    """
    check_max_minutes(max_minutes)
    check_generate_request(seconds, count, temperature, sampling=sampling, phase=phase)
    ingested = ingest(
        source=source,
        store=store,
        format=format,
        transform=transform,
        block_size=block_size,
        workers=workers,
        dask_address=dask_address,
        dask_scheduler_file=dask_scheduler_file,
        dask_security=dask_security,
        dashboard=dashboard,
        announce=False,
        store_block=store_block,
        source_block=source_block,
    )
    card = train(
        store=store,
        dataset=ingested["dataset_id"],
        preset=preset,
        epochs=epochs,
        hidden=hidden,
        seq_len=seq_len,
        hop=hop,
        max_minutes=max_minutes,
        store_block=store_block,
    )
    generated = generate(
        store=store,
        model=card["model_id"],
        seconds=seconds,
        count=count,
        temperature=temperature,
        store_block=store_block,
        sampling=sampling,
        phase=phase,
    )
    return {"ingest": ingested, "train": card, "generate": generated}
