"""The musicflow deployments, built in code and served by ``musicflow serve``.

- ``musicflow-ingest``: on demand, and every ``ingest_every`` seconds if given,
  to pick up new songs in the source;
- ``musicflow-train``: triggered by every completed ``ingest`` flow run (a
  Prefect deployment event trigger); new songs give a new model, the same
  songs resume the last one;
- ``musicflow-generate``: on a cron schedule (daily at 06:00 UTC by default).

``prefect.yaml`` beside this file declares the same deployments for ``prefect deploy``.
"""

from __future__ import annotations

from typing import Any

from prefect.events import DeploymentEventTrigger

from musicflow.errors import ConfigError

DEFAULT_GENERATE_CRON = "0 6 * * *"
INGEST_COMPLETED = "prefect.flow-run.Completed"


def ingest_completed_trigger(store: str) -> DeploymentEventTrigger:
    """Fire once for each completed flow run of the ``ingest`` flow."""
    return DeploymentEventTrigger(
        name="train-after-ingest",
        description="Train when an ingest flow run completes",
        expect={INGEST_COMPLETED},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": "ingest"},
        parameters={"store": store},
    )


def build_deployments(
    *,
    source: str,
    store: str,
    generate_cron: str = DEFAULT_GENERATE_CRON,
    ingest_every: float | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    preset: str | None = None,  # None: the train flow picks it by the dataset's transform
    epochs: int | None = None,
    seconds: float = 10.0,
    count: int = 1,
) -> list[Any]:
    """The three deployments (``RunnerDeployment`` objects), ready for ``prefect.serve``."""
    from prefect.schedules import Cron

    from flows.generate import generate
    from flows.ingest import ingest
    from flows.train import train

    _check_cron(generate_cron)
    if ingest_every is not None and ingest_every <= 0:
        raise ConfigError(f"invalid ingest interval {ingest_every!r}: must be positive seconds")
    ingest_deployment = ingest.to_deployment(
        name="musicflow-ingest",
        interval=ingest_every,
        parameters={"source": source, "store": store, "workers": workers, "dask_address": dask_address},
        description="Decode new songs into feature shards",
        tags=["musicflow"],
    )
    train_deployment = train.to_deployment(
        name="musicflow-train",
        triggers=[ingest_completed_trigger(store)],
        parameters={"store": store, "preset": preset, "epochs": epochs},
        description="Train the LSTM after each completed ingest",
        tags=["musicflow"],
    )
    generate_deployment = generate.to_deployment(
        name="musicflow-generate",
        schedules=[Cron(generate_cron, timezone="UTC")],
        parameters={"store": store, "seconds": seconds, "count": count},
        description="Generate clips from the newest model",
        tags=["musicflow"],
    )
    return [ingest_deployment, train_deployment, generate_deployment]


def serve_deployments(**options: Any) -> None:
    """Serve the deployments until interrupted (runs scheduled and triggered flow runs here)."""
    from prefect import serve

    serve(*build_deployments(**options))


def _check_cron(expression: str) -> None:
    import datetime as dt

    from cronsim import CronSim, CronSimError

    try:
        CronSim(expression, dt.datetime.now(dt.UTC))
    except CronSimError as error:
        raise ConfigError(f"invalid cron schedule {expression!r}: {error}") from error
