"""Generated runs in the store: ``generated/<run_id>/``.

A run folder holds its clips (``clip-NN.wav``, ``.mp3``, ``.png``) and, written last,
``metrics.json`` (a folder without it is an incomplete run); ``musicflow evaluate``
adds ``quality.json``. Generation, evaluation and ``status`` find runs through here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from tasks.store.store import Store, checked_id

GENERATED_DIR = "generated"
METRICS_FILE = "metrics.json"
QUALITY_FILE = "quality.json"


def run_dir(run_id: str) -> str:
    """Folder of a generated run inside the store (:class:`ConfigError` for an id that is not one folder)."""
    return f"{GENERATED_DIR}/{checked_id('run', run_id)}"


def new_run_id(model_id: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{model_id}-{uuid.uuid4().hex[:6]}"


def list_runs(store: Store) -> list[str]:
    """Ids of the complete runs in the store (folders with a ``metrics.json``)."""
    return [name for name in store.list_ids(GENERATED_DIR) if store.exists(GENERATED_DIR, name, METRICS_FILE)]


def has_run(store: Store, run_id: str) -> bool:
    return bool(store.exists(GENERATED_DIR, run_id, METRICS_FILE))


def read_run(store: Store, run_id: str) -> dict[str, Any]:
    """A complete run's report (its ``metrics.json``)."""
    return store.read_json(GENERATED_DIR, run_id, METRICS_FILE)


def read_runs(store: Store) -> list[dict[str, Any]]:
    """The reports of every complete run."""
    return [read_run(store, run_id) for run_id in list_runs(store)]
