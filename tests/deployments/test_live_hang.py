"""Issue 26, the hang test's second half, run for real: a worker that sleeps forever inside a batch
fails that batch within its timeout, and the next scheduled tick runs.

A ``prefect server start`` subprocess and ``musicflow serve`` on a short ingest interval (the
served ingest deployment has a CANCEL_NEW concurrency slot: while one run holds it, every tick is
cancelled), into a ``faulty://`` store whose shard writes sleep for ten minutes
(:mod:`tasks.store.faults`, as in ``tests/flows/test_faults.py``). The first tick's batch is
stuck in the worker of the cluster ``serve`` keeps; ``--batch-timeout`` fails it (its tries and
their backoff), the run ends Failed and frees the slot. Then the hang is lifted, and a later tick
runs on the same kept cluster and ingests the songs (the stuck worker was restarted: on its one
thread the batch would wait behind the sleeping write). Every process is killed at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import test_live_schedules
from conftest import TINY_BLOCK
from helpers import write_periodic_songs
from test_live_schedules import BIN, Live, table

from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import dataset_dir
from tasks.store.store import open_store

pytestmark = pytest.mark.slow
live = test_live_schedules.live  # the fixture: a Prefect server and what the test starts, killed at the end

INGEST_EVERY = 4  # seconds
BATCH_TIMEOUT = 2  # seconds
# A stuck run's end: 4 tries of its one batch (3 retries), each its timeout and a restart of the
# stuck worker (the nanny's 4-s grace, then a new worker process: up to 10 s on a loaded machine),
# the retries' backoff (2, 4, 8 s and up to half again: 21 s), and the flow run's start and end.
# Without a batch timeout the batch waits 600 s and more.
STUCK_RUN_LIMIT_S = 4 * (BATCH_TIMEOUT + 10) + 21 + 30


def test_a_stuck_batch_fails_within_its_timeout_and_the_next_tick_runs(live: Live, tmp_path: Path) -> None:
    songs, store_dir, controls = tmp_path / "songs", tmp_path / "store", tmp_path / "faults.json"
    write_periodic_songs(songs, n_songs=1, seconds=2.0, block_size=TINY_BLOCK)
    store = f"faulty://{store_dir}"
    controls.write_text(json.dumps({"hang_s": 600, "hang_match": "/shards/"}))  # shard writes never return
    live.env["MUSICFLOW_FAULTS"] = str(controls)
    started = time.monotonic()
    live.start_server()
    serve = [str(BIN / "musicflow"), "serve", "--source", str(songs), "--store", store, "--workers", "1"]
    serve += ["--ingest-every", str(INGEST_EVERY), "--batch-timeout", str(BATCH_TIMEOUT)]
    serve += ["--cron", "0 0 1 1 *", "--epochs", "1", "--hidden", "8", "--seq-len", "4", "--no-dashboard"]
    live.start(serve, live.serve_log)

    def ingests() -> list[dict[str, Any]]:
        return [run for run in live.runs() if run["flow"] == "ingest"]

    def first_failed() -> dict[str, Any] | None:
        return next((run for run in ingests() if run["state_type"] == "FAILED"), None)

    stuck = live.wait_until(first_failed, 180, "the stuck ingest to fail")
    controls.write_text("{}")  # the hang is lifted: what is stuck stays stuck until its worker is restarted
    lifted = time.monotonic()
    took = _seconds(stuck["start_time"], stuck["end_time"])
    failure = f"\n{live.report()}"
    assert took < STUCK_RUN_LIMIT_S, f"the stuck run took {took:.0f} s{failure}"
    assert "1 song not ingested: TimeoutError: batch of 1 files did not finish within 2 s" in (
        stuck["state"]["message"] or ""
    ), failure

    def completed_after() -> dict[str, Any] | None:
        return next(
            (
                run
                for run in ingests()
                if run["state_type"] == "COMPLETED" and run["start_time"] > stuck["end_time"]
            ),
            None,
        )

    later = live.wait_until(completed_after, 120, "a later tick to complete")
    failure = f"\n{live.report()}"
    assert (later["created_by"] or {}).get("type") == "SCHEDULE", failure
    rows = table(live.artifacts(later["id"])["ingest-summary"])
    assert next(row["value"] for row in rows if row["metric"] == "songs ingested") == 1, failure
    (dataset,) = [path.name for path in (store_dir / "datasets").iterdir()]
    catalog = read_catalog(open_store(str(store_dir)), dataset_dir(dataset))
    assert [row.status for row in catalog] == ["ok"]
    cancelled = [run for run in ingests() if run["state_type"] == "CANCELLED"]
    print(
        f"hang test: the stuck run failed after {took:.0f} s; a later tick completed "
        f"{time.monotonic() - lifted:.0f} s after; {len(cancelled)} ticks cancelled meanwhile; "
        f"{time.monotonic() - started:.0f} s in all"
    )


def _seconds(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
