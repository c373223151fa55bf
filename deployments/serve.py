"""The musicflow deployments, built in code and served by ``musicflow serve``.

Their names start with the serve's name (``--name``, default ``musicflow``), so that several
stores are served on one server; with the default:

- ``musicflow-ingest``: on demand, and every ``ingest_every`` seconds if given,
  to pick up new songs in the source; one at a time (a run that finds another
  one running is cancelled: the running one picks the songs up, or the next);
- ``musicflow-train``: triggered by the ``musicflow.dataset.updated`` event
  that an ingest emits when it commits new songs to *this* store
  (:mod:`tasks.ingest.events`), with the event's dataset id as its ``dataset``
  parameter; one at a time (the next waits for its turn). New songs give a new
  model; a finished model is final; ``max_minutes`` is each run's training budget;
- ``musicflow-generate``: on a cron schedule (daily at 06:00 UTC by default).

Credentials never go into the parameters (the UI shows them): the deployments
name Prefect blocks (``store_block``/``source_block``), or the flow-run
processes inherit what ``musicflow serve`` registered (``tasks.store.credentials``); the
flows load the blocks (``flows.runtime.blocks``).
``prefect.yaml`` beside this file declares the same deployments for ``prefect deploy``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from cronsim import CronSim, CronSimError
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.generate import generate
from flows.ingest import ingest
from flows.train import train
from tasks.config import DEFAULT_PRESETS, DEFAULT_TRANSFORM, TrainConfig, check_max_minutes, ingest_config
from tasks.errors import ConfigError
from tasks.ingest.events import DATASET_UPDATED, STORE_LABEL, store_key

DEFAULT_GENERATE_CRON = "0 6 * * *"
DATASET_ID_TEMPLATE = "{{ event.payload.dataset_id }}"  # rendered by the server when the trigger fires
DEFAULT_NAME = "musicflow"  # deployments NAME-ingest, NAME-train, NAME-generate
# Letters, digits, '-', '_' and '.': a deployment name Prefect's CLI and URLs take as it is.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TRAIN_OPTIONS = ("hidden", "layers", "seq_len", "hop", "batch_size", "learning_rate", "patience")

# Ingests never overlap: an interval tick that finds one running is cancelled (it would only wait
# to list the same files). Trainings of a store queue up, one at a time.
INGEST_CONCURRENCY = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
TRAIN_CONCURRENCY = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def dataset_updated_trigger(store: str) -> DeploymentEventTrigger:
    """Fire once for each ``musicflow.dataset.updated`` event of ``store``; the run trains the
    event's dataset."""
    key = store_key(store)
    return DeploymentEventTrigger(
        name="train-on-new-songs",
        description=f"Train when an ingest commits new songs to {key}",
        expect={DATASET_UPDATED},
        match={STORE_LABEL: key},
        parameters={"dataset": DATASET_ID_TEMPLATE},
    )


def deployment_names(name: str = DEFAULT_NAME) -> list[str]:
    """The names of the three deployments served under ``name`` (:class:`ConfigError` for a bad one)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"invalid deployment name {name!r}: use 1-64 letters, digits, '-', '_' or '.', starting with "
            "a letter or digit"
        )
    return [f"{name}-ingest", f"{name}-train", f"{name}-generate"]


def build_deployments(
    *,
    source: str,
    store: str,
    name: str = DEFAULT_NAME,
    generate_cron: str = DEFAULT_GENERATE_CRON,
    ingest_every: float | None = None,
    batch_timeout: float | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    dask_scheduler_file: str | None = None,
    dask_security: dict[str, Any] | None = None,
    dashboard: bool = True,
    shard_format: str = "zarr",
    transform: str = DEFAULT_TRANSFORM,
    block_size: int = 11025,
    sample_rate: int | None = None,  # None: the transform's default rate
    n_fft: int | None = None,
    hop_length: int | None = None,
    n_mels: int | None = None,
    preset: str | None = None,  # None: the train flow picks it by the dataset's transform
    epochs: int | None = None,
    max_minutes: float | None = None,  # each train run's wall-clock budget; None: none
    train_options: dict[str, Any] | None = None,
    seconds: float = 10.0,
    count: int = 1,
    store_block: str | None = None,
    source_block: str | None = None,
) -> list[Any]:
    """The three deployments (``RunnerDeployment`` objects), ready for ``prefect.serve``.

    ``train_options`` are the train flow's model options (``hidden``, ``seq_len``...);
    every value is checked here, so a bad one fails before anything is served. ``name`` prefixes
    the deployments' names (``NAME-ingest``...), so that several stores are served on one server.
    """
    ingest_name, train_name, generate_name = deployment_names(name)
    _check_cron(generate_cron)
    if ingest_every is not None and ingest_every <= 0:
        raise ConfigError(f"invalid ingest interval {ingest_every!r}: must be positive seconds")
    features: dict[str, Any] = {
        "format": shard_format,
        "transform": transform,
        "block_size": block_size,
        "sample_rate": sample_rate,  # None: the transform's default rate
        "n_fft": n_fft,
        "hop_length": hop_length,
        "n_mels": n_mels,
    }
    ingest_config(**features, batch_timeout=batch_timeout)
    model = {key: value for key, value in (train_options or {}).items() if value is not None}
    unknown = sorted(set(model) - set(TRAIN_OPTIONS))
    if unknown:
        raise ConfigError(f"invalid train options {unknown!r}: expected some of {', '.join(TRAIN_OPTIONS)}")
    TrainConfig.from_preset(preset or DEFAULT_PRESETS[transform], epochs=epochs, **model)
    check_max_minutes(max_minutes)
    blocks = {"store_block": store_block} if store_block else {}
    ingest_deployment = ingest.to_deployment(
        name=ingest_name,
        interval=ingest_every,
        parameters=_given(
            source=source,
            store=store,
            **features,
            workers=workers,
            batch_timeout=batch_timeout,
            dask_address=dask_address,
            dask_scheduler_file=dask_scheduler_file,
            dask_security=dask_security,
            dashboard=None if dashboard else False,
            source_block=source_block,
            **blocks,
        ),
        concurrency_limit=INGEST_CONCURRENCY,
        description="Decode new songs into feature shards; announces the songs it adds",
        tags=["musicflow"],
    )
    train_deployment = train.to_deployment(
        name=train_name,
        triggers=[dataset_updated_trigger(store)],
        parameters=_given(
            store=store, preset=preset, epochs=epochs, max_minutes=max_minutes, **model, **blocks
        ),
        concurrency_limit=TRAIN_CONCURRENCY,
        description="Train the LSTM when an ingest adds songs to this store",
        tags=["musicflow"],
    )
    generate_deployment = generate.to_deployment(
        name=generate_name,
        schedules=[Cron(generate_cron, timezone="UTC")],
        parameters=_given(store=store, seconds=seconds, count=count, **blocks),
        description="Generate clips from the newest model",
        tags=["musicflow"],
    )
    return [ingest_deployment, train_deployment, generate_deployment]


def serve_deployments(**options: Any) -> None:
    """Serve the deployments until interrupted (runs scheduled and triggered flow runs here)."""
    serve(*build_deployments(**options))


def _given(**parameters: Any) -> dict[str, Any]:
    """The parameters that were given (None means the flow's default)."""
    return {key: value for key, value in parameters.items() if value is not None}


def _check_cron(expression: str) -> None:
    try:
        CronSim(expression, dt.datetime.now(dt.UTC))
    except CronSimError as error:
        raise ConfigError(f"invalid cron schedule {expression!r}: {error}") from error
