"""Flow ``ingest``: songs -> feature shards in the store (log-mel frames by default), fanned out on Dask.

Reads top to bottom: plan (list, compare with the catalog) -> one task run per
batch, largest first, each waiting in this process for its Dask task -> commit
each batch as it finishes -> summary artifacts. A song's content errors are the
``failed`` rows its batch returns. A batch or a commit that still fails after its
retries failed for the machinery (:func:`tasks.errors.is_infrastructure`; the
worker records every content error itself): a batch is retried file by file, and
a file that still fails, or a commit that does, is left unrecorded, for the next
run to try again; the run then fails with one line saying how many songs and
why. Nothing new to ingest: no Dask cluster is started at all.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.prefect_tasks import batch_limit, commit_batch_task, ingest_batch_task, plan_ingest_task
from flows.runtime import heartbeats
from flows.runtime.blocks import use_storage
from flows.runtime.cluster import (
    check_cluster_options,
    cluster_threads,
    dashboard_link,
    dask_client,
    default_workers,
)
from flows.runtime.names import ingest_run_name
from flows.runtime.progress import StageProgress, notify
from tasks.audio.ffmpeg import ffmpeg_binary
from tasks.config import AUDIO_EXTENSIONS, DEFAULT_TRANSFORM, ingest_config
from tasks.dataset.catalog import display_text
from tasks.dataset.repository import BatchResult, hold_ingest
from tasks.errors import InfrastructureError, error_text, is_verdict
from tasks.ingest.events import dataset_updated_event, should_announce
from tasks.ingest.plan import make_batches
from tasks.ingest.sources import SourceFile
from tasks.store import direct
from tasks.store.store import open_store, registered_storage_options

# A finished run returns at once, not after its heartbeat thread's next 1-s step (see the module).
heartbeats.install()

# Batches per worker, at least, in whole rounds of one per worker (largest first, so every worker
# stays busy to the end). Each batch more costs a task run and a commit: 0.6 s of CPU between the
# worker, the flow and the Prefect server (measured: 20 min of songs, 4 batches vs 2 on 2 workers,
# 13.0 vs 10.1-10.7 CPU s, 170x vs 197x real time).
BATCHES_PER_WORKER = 1
# At most about this many batches per ingest, whatever the collection: batches grow with it
# (tasks.ingest.plan.grown_batch_bytes). Each batch is two task runs (ingest + commit), so 100k
# songs make ~260 task runs, not the ~25k of fixed 32 MB batches; a worker still holds one song
# at a time (the shard writer streams), so a larger batch costs no worker memory.
MAX_BATCHES = 128
# The flow process holds one waiting thread per batch in flight: a cap far above what the batch
# sizing makes (MAX_BATCHES), for the file-by-file retries of failed batches.
MAX_BATCHES_IN_FLIGHT = 256


def run_batches(files: list[SourceFile], *, batch_mb: float, n_workers: int) -> list[list[SourceFile]]:
    """The batches an ingest run cuts ``files`` into for ``n_workers`` Dask threads: at most
    ``batch_mb`` each (more in a large collection, :data:`MAX_BATCHES`), whole rounds of at least
    :data:`BATCHES_PER_WORKER` per thread, largest first."""
    batches = make_batches(
        files,
        batch_bytes=int(batch_mb * 2**20),
        min_batches=BATCHES_PER_WORKER * n_workers,
        rounds_of=n_workers,
        max_batches=MAX_BATCHES,
    )
    batches.sort(key=lambda batch: -sum(item.bytes for item in batch))  # largest first
    return batches


def batches_in_flight(n_batches: int, threads: int) -> int:
    """Batch task runs submitted at once: every pending batch (up to :data:`MAX_BATCHES_IN_FLIGHT`),
    so the scheduler sees all the work there is and an adaptive cluster scales up to it, and never
    fewer than two per thread present (one running, one queued: a worker that finishes a batch
    starts the next at once). The order stays largest first through the tasks' Dask priority."""
    return max(1, min(max(n_batches, 2 * threads), max(MAX_BATCHES_IN_FLIGHT, 2 * threads)))


# Rows of the failures and warnings tables: a collection with thousands of bad files would make a
# table artifact the UI cannot show; the catalog keeps every one of them.
TABLE_ROWS = 50


@flow(name="ingest", flow_run_name=ingest_run_name, log_prints=False)
def ingest(
    source: str,
    store: str,
    format: str = "zarr",
    transform: str = DEFAULT_TRANSFORM,
    block_size: int = 11025,
    sample_rate: int | None = None,
    n_fft: int | None = None,
    hop_length: int | None = None,
    n_mels: int | None = None,
    batch_mb: float = 32.0,
    workers: int | None = None,
    dask_address: str | None = None,
    dask_scheduler_file: str | None = None,
    dask_security: dict[str, Any] | None = None,
    dashboard: bool = True,
    retry_failed: bool = False,
    strict: bool = False,
    max_seconds: float | None = None,
    batch_timeout: float | None = None,
    announce: bool = True,
    store_block: str | None = None,
    source_block: str | None = None,
) -> dict[str, Any]:
    """Decode every new song under ``source`` into feature shards in ``store``.

    Returns a summary: dataset_id, songs ok/failed/skipped, audio seconds,
    throughput (x real time), the failed files with their errors and the kept
    songs that decoded with warnings; bad files never fail the run. When new
    songs were committed and ``announce`` is on, emits ``musicflow.dataset.updated``
    (what the train deployment is triggered by; the pipeline turns it off, it
    trains anyway). ``store_block``/``source_block`` name Prefect blocks with the
    credentials of the store/source (``s3-bucket/NAME``, ``aws-credentials/NAME``).
    ``max_seconds`` (default 4 h) is the longest song kept; a longer one is a failed row.
    ``dask_address``/``dask_scheduler_file`` (with ``dask_security`` for TLS) run it on an existing
    cluster, else a LocalCluster of ``workers`` starts here, its dashboard on unless ``dashboard``
    is off; the dashboard's link is logged and shown (``flows.runtime.progress.notify``).

    ``batch_timeout`` (seconds; default 600 s plus twice its files' decode limits) is how long
    a batch may take before it counts as stuck and is retried.

    Songs that the machinery (store, source, cluster) kept from being ingested, after every
    retry, are left unrecorded and listed in the summary's ``not_ingested``: the run then
    raises :class:`~tasks.errors.InfrastructureError` (the flow run is Failed) once its
    summary is published, with the summary attached; a plain re-run tries them again.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    use_storage(store, store_block=store_block, source=source, source_block=source_block)
    ffmpeg_binary()  # fail fast, here, rather than once per song on every worker
    direct.enabled()  # and a bad MUSICFLOW_DIRECT_IO here, not in every batch's writes
    config = ingest_config(
        format=format,
        transform=transform,
        block_size=block_size,
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=n_mels,
        batch_mb=batch_mb,
        retry_failed=retry_failed,
        strict=strict,
        max_seconds=max_seconds,
        batch_timeout=batch_timeout,
    )
    cluster_options: dict[str, Any] = {
        "workers": workers,
        "dask_address": dask_address,
        "dask_scheduler_file": dask_scheduler_file,
        "dask_security": dask_security,
    }
    check_cluster_options(**cluster_options)
    dataset_id, plan = plan_ingest_task(source, store, config)
    logger.info(
        "dataset %s: %d files listed, %d already ingested, %d duplicates, %d to ingest",
        dataset_id,
        plan.n_listed,
        len(plan.known),
        len(plan.duplicates),
        len(plan.todo),
    )
    if plan.n_listed == 0:
        logger.warning("no audio files in %s (looked for %s)", source, ", ".join(AUDIO_EXTENSIONS))
    progress = StageProgress("ingest", len(plan.todo), description=f"Songs ingested into {dataset_id}")
    committed: list[Any] = []
    results: list[BatchResult] = []
    not_ingested: list[dict[str, str]] = []  # files left unrecorded: {"source", "error"}
    commit_seconds = 0.0
    if plan.todo:  # only then a Dask cluster: a re-run with nothing new is stat checks only
        # The ingest lock: while this run writes shards, check --repair removes none it has not committed.
        with (
            dask_client(**cluster_options, dashboard=dashboard) as client,
            hold_ingest(open_store(store), dataset_id),
        ):
            link = dashboard_link(client) if dashboard else None
            if link:
                logger.info("Dask dashboard: %s", link)
                notify(f"Dask dashboard: {link}")
            # Batches for the cluster's threads (an external cluster's, not this machine's cores).
            threads = cluster_threads(client)
            n_workers = threads or workers or default_workers()
            batches = run_batches(plan.todo, batch_mb=batch_mb, n_workers=n_workers)
            logger.info("%d songs in %d batches on %d Dask threads", len(plan.todo), len(batches), threads)
            runner: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(
                max_workers=batches_in_flight(len(batches), threads)
            )

            # The limits of the batches queued and not yet done, for the wait of each new one: it
            # is queued behind them, which may take up to their limits spread over the threads.
            outstanding: dict[int, float] = {}

            def submit(batch: list[Any], priority: int = 0) -> Any:
                parameters = {
                    "files": batch,
                    "store_url": store,
                    "dataset_id": dataset_id,
                    "config": config,
                    "storage_options": registered_storage_options(),
                    "client": client,
                    "priority": priority,
                    "queued_behind_s": sum(outstanding.values()) / max(threads, 1),
                }
                future = runner.submit(ingest_batch_task, parameters)
                outstanding[id(future)] = batch_limit(batch, config)
                return future

            with runner:
                # Largest first on the cluster too: all are queued there at once (see batches_in_flight).
                pending = [
                    (submit(batch, len(batches) - index), batch) for index, batch in enumerate(batches)
                ]
                while pending:
                    retries = []
                    futures = {id(future): (future, batch) for future, batch in pending}
                    for future in as_completed([future for future, _ in pending]):
                        _, batch = futures[id(future)]
                        outstanding.pop(id(future), None)
                        try:
                            result = future.result()
                        except Exception as error:  # after its retries: not a song's content (see above)
                            if is_verdict(error):
                                raise
                            reason = _reason(error)
                            if len(batch) > 1:
                                logger.warning("a batch of %d files failed (%s): retrying them one by one",
                                               len(batch), reason)  # fmt: skip
                                retries += [(submit([item]), [item]) for item in batch]
                                continue
                            logger.warning("%s not ingested: %s", display_text(batch[0].uri), reason)
                            not_ingested.append({"source": display_text(batch[0].uri), "error": reason})
                            progress.advance(1, message=f"{len(committed)}/{len(plan.todo)} songs")
                            continue
                        commit_started = time.perf_counter()
                        try:
                            committed.extend(commit_batch_task(store, dataset_id, result))
                        except Exception as error:  # after its retries: the store's
                            if is_verdict(error):
                                raise
                            reason = _reason(error)
                            logger.warning("a commit of %d songs failed: %s", len(result.rows), reason)
                            not_ingested += [{"source": display_text(row.source), "error": reason}
                                             for row in result.rows]  # fmt: skip
                        else:
                            results.append(result)
                        commit_seconds += time.perf_counter() - commit_started
                        progress.advance(len(result.rows), message=f"{len(committed)}/{len(plan.todo)} songs")
                    pending = retries
    wall = time.perf_counter() - started
    summary = _summarise(dataset_id, store, plan, committed, results, wall, not_ingested)
    summary["commit_seconds"] = round(commit_seconds, 3)
    summary["announced"] = announce and should_announce(summary)
    _publish(summary)
    if summary["announced"]:
        emit_event(
            **dataset_updated_event(
                store, dataset_id, songs_added=summary["songs_ok"], songs_failed=summary["songs_failed"]
            )
        )
    logger.info(
        "ingested %d songs (%d failed, %d with warnings), %.1f min of audio at %.0fx real time",
        summary["songs_ok"],
        summary["songs_failed"],
        len(summary["warnings"]),
        summary["audio_seconds"] / 60,
        summary["x_realtime"],
    )
    if not_ingested:
        line = not_ingested_line(not_ingested)
        logger.error(line)
        raise InfrastructureError(line, summary=summary)
    return summary


def _reason(error: BaseException) -> str:
    return display_text(error_text(error))[:300]


def not_ingested_line(not_ingested: list[dict[str, str]]) -> str:
    """``N songs not ingested: <the commonest reason>; re-run to retry``: what a run that left songs
    unrecorded fails with."""
    reasons: dict[str, int] = {}
    for item in not_ingested:
        reasons[item["error"]] = reasons.get(item["error"], 0) + 1
    reason = max(reasons, key=lambda text: reasons[text])
    others = f" (and {len(reasons) - 1} other errors)" if len(reasons) > 1 else ""
    n = len(not_ingested)
    return f"{n} song{'s' if n != 1 else ''} not ingested: {reason}{others}; re-run to retry"


def _summarise(
    dataset_id: str,
    store: str,
    plan: Any,
    committed: list[Any],
    results: list[Any],
    wall: float,
    not_ingested: list[dict[str, str]],
) -> dict[str, Any]:
    ok = [row for row in committed if row.ok]
    audio_seconds = sum(row.seconds for row in ok)
    return {
        "dataset_id": dataset_id,
        "store": store,
        "songs_listed": plan.n_listed,
        "songs_ok": len(ok),
        "songs_failed": len(committed) - len(ok),
        "songs_skipped": len(plan.known) + len(plan.duplicates),
        "songs_not_ingested": len(not_ingested),
        "audio_seconds": round(audio_seconds, 3),
        "wall_seconds": round(wall, 3),
        "task_seconds": round(sum(result.task_seconds for result in results), 3),
        "x_realtime": round(audio_seconds / wall, 1) if wall > 0 else 0.0,
        "peak_worker_rss_mb": round(max((result.peak_rss_mb for result in results), default=0.0), 1),
        "shards": [result.shard for result in results if result.shard],
        "failures": [
            {"source": display_text(row.source), "error": row.error} for row in committed if not row.ok
        ],
        "warnings": [
            {"source": display_text(row.source), "warnings": row.warnings} for row in ok if row.warnings
        ],
        "not_ingested": not_ingested,
    }


def _publish(summary: dict[str, Any]) -> None:
    create_table_artifact(
        key="ingest-summary",
        table=[
            {"metric": "dataset", "value": summary["dataset_id"]},
            {"metric": "songs ingested", "value": summary["songs_ok"]},
            {"metric": "songs failed", "value": summary["songs_failed"]},
            {"metric": "songs not ingested (a re-run retries)", "value": summary["songs_not_ingested"]},
            {"metric": "songs kept with decode warnings", "value": len(summary["warnings"])},
            {
                "metric": "songs skipped (already ingested or duplicate)",
                "value": summary["songs_skipped"],
            },
            {"metric": "hours of audio", "value": round(summary["audio_seconds"] / 3600, 3)},
            {"metric": "throughput (x real time)", "value": summary["x_realtime"]},
            {"metric": "wall time (s)", "value": summary["wall_seconds"]},
        ],
        description=f"Ingest into {summary['store']}",
    )
    catalog = f"musicflow catalog --store {summary['store']} --dataset {summary['dataset_id']}"
    if summary["failures"]:
        create_table_artifact(
            key="ingest-failures",
            table=summary["failures"][:TABLE_ROWS],
            description="Files recorded as failed (skipped), with the decoder's error"
            + _more(len(summary["failures"]), f"`{catalog} --status failed`"),
        )
    if summary["not_ingested"]:
        create_table_artifact(
            key="ingest-not-ingested",
            table=summary["not_ingested"],
            description="Files left unrecorded by store, source or cluster errors (a re-run retries them)",
        )
    if summary["warnings"]:
        create_table_artifact(
            key="ingest-warnings",
            table=summary["warnings"][:TABLE_ROWS],
            description="Songs kept although the decoder reported (concealed) errors"
            + _more(len(summary["warnings"]), "the catalog's `warnings` column"),
        )


def _more(n_rows: int, where: str) -> str:
    """What a capped table says about the rows it leaves out."""
    if n_rows <= TABLE_ROWS:
        return ""
    return f". The first {TABLE_ROWS} of {n_rows}: {n_rows - TABLE_ROWS} more in {where}"
