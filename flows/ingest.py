"""Flow ``ingest``: songs -> FFT feature shards in the store, fanned out on Dask.

Reads top to bottom: plan (list, hash, skip known) -> one Dask task per batch
-> commit each batch as it finishes -> summary artifacts.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import as_completed

from musicflow.cluster import default_workers, make_task_runner
from musicflow.config import AUDIO_EXTENSIONS, DEFAULT_TRANSFORM, FeatureConfig, IngestConfig
from musicflow.progress import StageProgress
from tasks.audio import ffmpeg_binary
from tasks.ingest import make_batches
from tasks.prefect_tasks import commit_batch, ingest_batch, plan_ingest


@flow(name="ingest", log_prints=False)
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
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Decode every new song under ``source`` into feature shards in ``store``.

    Returns a summary: dataset_id, songs ok/failed/skipped, audio seconds,
    throughput (x real time) and the failed files with their errors.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    ffmpeg_binary()  # fail fast, here, rather than once per song on every worker
    config = IngestConfig(
        features=FeatureConfig.for_transform(
            transform,
            sample_rate=sample_rate,
            block_size=block_size,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
        ),
        shard_format=format,
        batch_mb=batch_mb,
        retry_failed=retry_failed,
    )
    runner = make_task_runner(workers=workers, dask_address=dask_address)
    dataset_id, plan = plan_ingest(source, store, config)
    n_workers = workers or default_workers()
    batches = make_batches(plan.todo, batch_bytes=int(batch_mb * 2**20), min_batches=2 * n_workers)
    logger.info(
        "dataset %s: %d files listed, %d already ingested, %d duplicates, %d to ingest in %d batches",
        dataset_id,
        plan.n_listed,
        len(plan.known),
        len(plan.duplicates),
        len(plan.todo),
        len(batches),
    )
    if plan.n_listed == 0:
        logger.warning("no audio files in %s (looked for %s)", source, ", ".join(AUDIO_EXTENSIONS))
    progress = StageProgress("ingest", len(plan.todo), description=f"Songs ingested into {dataset_id}")
    committed, results = [], []
    commit_seconds = 0.0
    if batches:
        with runner:
            futures: list[Any] = [
                runner.submit(
                    ingest_batch,
                    {"files": batch, "store_url": store, "dataset_id": dataset_id, "config": config},
                )
                for batch in batches
            ]
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                commit_started = time.perf_counter()
                committed.extend(commit_batch(store, dataset_id, result))
                commit_seconds += time.perf_counter() - commit_started
                progress.advance(len(result.rows), message=f"{len(committed)}/{len(plan.todo)} songs")
    wall = time.perf_counter() - started
    summary = _summarise(dataset_id, store, plan, committed, results, wall)
    summary["commit_seconds"] = round(commit_seconds, 3)
    _publish(summary)
    logger.info(
        "ingested %d songs (%d failed), %.1f min of audio at %.0fx real time",
        summary["songs_ok"],
        summary["songs_failed"],
        summary["audio_seconds"] / 60,
        summary["x_realtime"],
    )
    return summary


def _summarise(
    dataset_id: str, store: str, plan: Any, committed: list[Any], results: list[Any], wall: float
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
        "audio_seconds": round(audio_seconds, 3),
        "wall_seconds": round(wall, 3),
        "task_seconds": round(sum(result.task_seconds for result in results), 3),
        "x_realtime": round(audio_seconds / wall, 1) if wall > 0 else 0.0,
        "peak_worker_rss_mb": round(max((result.peak_rss_mb for result in results), default=0.0), 1),
        "shards": [result.shard for result in results if result.shard],
        "failures": [{"source": row.source, "error": row.error} for row in committed if not row.ok],
    }


def _publish(summary: dict[str, Any]) -> None:
    create_table_artifact(
        key="ingest-summary",
        table=[
            {"metric": "dataset", "value": summary["dataset_id"]},
            {"metric": "songs ingested", "value": summary["songs_ok"]},
            {"metric": "songs failed", "value": summary["songs_failed"]},
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
    if summary["failures"]:
        create_table_artifact(
            key="ingest-failures",
            table=summary["failures"],
            description="Files recorded as failed (skipped), with the decoder's error",
        )
