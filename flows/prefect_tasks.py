"""Prefect task wrappers of the plain functions in ``tasks/``, each named after the function it
wraps with ``_task`` added (``plan_ingest_task`` wraps ``tasks.ingest.worker.plan_ingest``); the
task names the Prefect UI shows stay the functions' (``plan-ingest``, ``ingest-batch``...).

Retries live here, on I/O only, and never on errors that would repeat
(:func:`tasks.errors.is_verdict`: a :class:`~tasks.errors.MusicflowError` other
than an :class:`~tasks.errors.InfrastructureError` is a verdict, not a glitch).
Caching is off: inputs are file lists and results are committed to the store.

Every task that can hang has an end: the tasks the flows call directly have
``timeout_seconds`` (Prefect's, enforced on the flow's main thread), scaled to
their work where it is known beforehand (:func:`train_timeout_seconds`,
:func:`generate_timeout_seconds`); ``ingest-batch`` runs on a runner thread, where
Prefect's timeout cannot interrupt a blocked wait, so it bounds its own wait for
its Dask task (:func:`batch_wait_seconds`).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from flows.runtime.progress import StageProgress
from tasks.audio.decode import decode_timeout
from tasks.config import IngestConfig, TrainConfig
from tasks.dataset import repository as dataset_lib
from tasks.dataset.catalog import CatalogRow
from tasks.errors import error_text, is_verdict
from tasks.ingest import plan as plan_lib
from tasks.ingest import worker as ingest_lib
from tasks.ingest.sources import SourceFile, list_audio_files
from tasks.model import train as train_lib
from tasks.store.store import check_writable, open_store

if TYPE_CHECKING:
    from distributed import Client, Future


def _retry_unless_verdict(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as error:
        return not is_verdict(error)
    return True


IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _retry_unless_verdict,
    "cache_policy": NO_CACHE,
}


# Listing and comparing a source: its size is not known before it is listed, so one generous bound (an
# hour lists and stats millions of keys); a stuck listing fails and is retried instead of holding the run.
PLAN_TIMEOUT_S = 3600.0
# A commit: the lock (waited for at most 120 s) and one catalog segment and statistics merge, now and then
# a compaction; a retried commit is safe (it finds its own rows).
COMMIT_TIMEOUT_S = 600.0


@task(name="plan-ingest", timeout_seconds=PLAN_TIMEOUT_S, **IO_RETRIES)
def plan_ingest_task(source: str, store_url: str, config: IngestConfig) -> tuple[str, plan_lib.IngestPlan]:
    """Check the store, create/check the dataset, list and hash the source, skip known songs."""
    store = open_store(store_url)
    check_writable(store)
    dataset_id = dataset_lib.prepare_dataset(store, config)
    with store.lock(dataset_lib.dataset_dir(dataset_id), dataset_lib.LOCK_FILE):
        dataset_lib.refresh_stats(store, dataset_id)  # heals a run killed between its two commits
    files = list_audio_files(source)
    catalog = dataset_lib.read_rows(store, dataset_id)
    return dataset_id, plan_lib.plan_ingest(files, catalog, retry_failed=config.retry_failed)


@task(name="ingest-batch", **IO_RETRIES)
def ingest_batch_task(
    files: list[SourceFile],
    store_url: str,
    dataset_id: str,
    config: IngestConfig,
    storage_options: dict[str, dict[str, Any]] | None = None,
    *,
    client: Client,
    priority: int = 0,
    queued_behind_s: float = 0.0,
) -> dataset_lib.BatchResult:
    """Decode + featurise + write one shard on a Dask worker of ``client``'s cluster.

    The task run lives in the flow process and waits for its one Dask task (a retry submits
    it again): the worker runs the plain :func:`tasks.ingest.worker.ingest_batch` and needs no
    Prefect client, settings or API of its own. ``storage_options`` is the flow process's
    ``registered_storage_options()``, registered on the worker before anything is opened.
    ``priority``: the Dask task's (higher runs first), so batches queued at once keep their order.
    The wait ends after :func:`batch_limit` plus ``queued_behind_s`` (the limits of the batches
    queued on the cluster before this one, per thread: every batch is queued at once, and one at
    the back waits for those ahead) seconds: a :class:`TimeoutError`, an infrastructure error,
    retried like any other.
    """
    context = TaskRunContext.get()
    run = f"{context.task_run.id}-{context.task_run.run_count}" if context else uuid.uuid4().hex
    future = client.submit(
        ingest_lib.ingest_batch,
        files,
        store_url=store_url,
        dataset_id=dataset_id,
        config=config,
        storage_options=storage_options,
        key=f"ingest-batch-{run}",  # the Dask dashboard names the task after its task run
        pure=False,
        priority=priority,
    )
    limit = batch_limit(files, config) + queued_behind_s
    try:
        return future.result(timeout=limit)
    except TimeoutError:
        restart_stuck_worker(client, future)
        # An infrastructure error (tasks.errors.is_infrastructure): retried, then its files left unrecorded.
        raise TimeoutError(
            f"batch of {len(files)} files did not finish within {limit:.0f} s (a stuck worker or store?)"
        ) from None


# How long restarting a stuck worker may take (its nanny kills the process and starts a new one).
WORKER_RESTART_TIMEOUT_S = 60.0


def restart_stuck_worker(client: Client, future: Future[Any]) -> str | None:
    """Cancel the Dask task of ``future`` (one whose wait ran out) and restart the worker that ran it;
    that worker's address, or None when none did (it was still queued) or it could not be restarted.

    Cancelling the task does not stop its thread: a worker stuck in a store write that never returns
    would keep its one thread busy for good, and every later batch on it (the retries, and on the
    cluster ``musicflow serve`` keeps, every later scheduled ingest) would wait out its limit
    behind it. Its nanny replaces the process instead. Only a worker with a nanny can be restarted
    (a LocalCluster's, ``dask worker``'s default): another one is left as it is, with a warning.
    """
    logger = get_run_logger() if TaskRunContext.get() else logging.getLogger(__name__)

    def running_on(key: str, dask_scheduler: Any = None) -> str | None:  # sent by value: any scheduler
        task = dask_scheduler.tasks.get(key)
        worker = task.processing_on if task is not None else None
        return None if worker is None else str(worker.address)

    try:
        address = client.run_on_scheduler(running_on, future.key)
    except Exception as error:
        address = None
        logger.warning("could not find the worker of a stuck batch: %s", error_text(error))
    future.cancel()  # first: a worker lost while it still runs the task would hand it to another
    if address is None:
        return None
    try:
        logger.warning("restarting the Dask worker %s: its batch did not finish within its limit", address)
        client.restart_workers([address], timeout=WORKER_RESTART_TIMEOUT_S)
    except Exception as error:  # the batch still fails and is retried; a stuck worker is not worse
        logger.warning("could not restart the stuck Dask worker: %s", error_text(error))
        return None
    return str(address)


def batch_limit(files: list[SourceFile], config: IngestConfig) -> float:
    """How long one batch may take on a worker: ``config.batch_timeout``, else
    :func:`batch_wait_seconds`."""
    return batch_wait_seconds(files) if config.batch_timeout is None else config.batch_timeout


# What a batch may take, queued and decoded, before its task run stops waiting: twice the time limits
# of its files' decodes (each file is also bounded on the worker) plus a margin for the queue.
BATCH_WAIT_MARGIN_S = 600.0


def batch_wait_seconds(files: list[SourceFile]) -> float:
    """How long ``ingest_batch_task`` waits for its Dask task."""
    return BATCH_WAIT_MARGIN_S + 2 * sum(decode_timeout(item.bytes) for item in files)


@task(name="commit-batch", timeout_seconds=COMMIT_TIMEOUT_S, **IO_RETRIES)
def commit_batch_task(store_url: str, dataset_id: str, result: dataset_lib.BatchResult) -> list[CatalogRow]:
    """Append the batch's catalog rows (the commit point), then merge its statistics."""
    return dataset_lib.commit_batch(open_store(store_url), dataset_id, result)


# A training with a wall-clock budget stops itself between epochs; its task run ends at the latest after
# twice the budget and this margin (an epoch that overruns, the final save). Without a budget a training
# may rightly last days: no timeout (a stuck one is seen in the UI: no epoch logged).
TRAIN_TIMEOUT_MARGIN_S = 900.0


def train_timeout_seconds(max_minutes: float | None) -> float | None:
    """``timeout_seconds`` of a ``train-model`` run with that budget (None: no budget, no timeout)."""
    return None if max_minutes is None else 2 * 60 * max_minutes + TRAIN_TIMEOUT_MARGIN_S


# Generation runs at 10-60x real time on 2 cores (docs/benchmarks.md): a run ends at the latest at 0.1x
# real time of what it generates, plus this margin for loading the model and scoring the clips.
GENERATE_TIMEOUT_MARGIN_S = 600.0
GENERATE_TIMEOUT_S_PER_AUDIO_S = 10.0


def generate_timeout_seconds(seconds: float, count: int) -> float:
    """``timeout_seconds`` of a ``generate-clips`` run of ``count`` clips of ``seconds``."""
    return GENERATE_TIMEOUT_MARGIN_S + GENERATE_TIMEOUT_S_PER_AUDIO_S * seconds * count


@task(name="train-model", **{**IO_RETRIES, "retries": 1})
def train_model_task(
    store_url: str,
    config: TrainConfig,
    dataset_id: str | None,
    model_id: str | None,
    resume: bool,
    extend: bool = False,
    max_minutes: float | None = None,
) -> train_lib.TrainResult:
    """Train or resume one model (a retry resumes from the last checkpoint, and a model that
    finished is final: a retry returns its card). ``max_minutes``: the attempt's wall-clock
    budget (a retry gets its own)."""
    logger = get_run_logger()
    progress: StageProgress | None = None

    def on_epoch(epoch: int, epochs: int, logs: dict[str, float]) -> None:
        nonlocal progress
        if progress is None:
            progress = StageProgress("train", epochs, description="Epochs trained")
            progress.advance(epoch - 1)
        progress.advance(
            1, message=f"epoch {epoch}/{epochs} loss {logs['loss']:.4g} val {logs['val_loss']:.4g}"
        )
        logger.info("epoch %d/%d: loss %.5g, val_loss %.5g", epoch, epochs, logs["loss"], logs["val_loss"])

    # A retry resumes from the last checkpoint, whatever the first attempt was asked.
    context = TaskRunContext.get()
    resume = resume or (context is not None and context.task_run.run_count > 1)
    return train_lib.train_model(
        store_url,
        config,
        dataset_id=dataset_id,
        model_id=model_id,
        resume=resume,
        extend=extend,
        on_epoch=on_epoch,
        max_minutes=max_minutes,
    )


@task(name="generate-clips", **IO_RETRIES)
def generate_clips_task(
    store_url: str,
    model_id: str | None,
    seconds: float,
    count: int,
    seed: str,
    seed_audio: str | None,
    temperature: float | None,
    run_id: str,
    sampling: str | None = None,
    phase: str | None = None,
) -> dict[str, Any]:
    """Generate clips into ``generated/<run_id>/`` (a retry rewrites the same run folder)."""
    # lazy: the generation stack (0.5 s) stays out of every ingest and train run's start-up
    from tasks.generation.generate import generate_run

    return generate_run(
        open_store(store_url),
        model_id=model_id,
        seconds=seconds,
        count=count,
        seed=seed,
        seed_audio=seed_audio,
        temperature=temperature,
        run_id=run_id,
        sampling=sampling,
        phase=phase,
    )
