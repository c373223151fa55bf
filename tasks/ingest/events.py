"""The ``musicflow.dataset.updated`` event: what an ingest announces, what a training waits for.

An ingest run that commits new songs emits one event whose resource is the
dataset, labelled with the store it lives in::

    event:    musicflow.dataset.updated
    resource: prefect.resource.id    musicflow.dataset.<store key>/<dataset_id>
              prefect.resource.name  <dataset_id>
              musicflow.store        <store key>
              musicflow.dataset.id   <dataset_id>
    related:  the store (role "store"), and the ingest flow run, flow and deployment
              (Prefect adds those from the run context)
    payload:  dataset_id, store, songs_added, songs_failed

The train deployment's trigger matches ``musicflow.store`` exactly, so an
ingest into another store never trains this one, and takes the dataset id
from the payload. The store key is the store's canonical URL
(:func:`store_key`), so ``./store``, ``/abs/store`` and ``file:///abs/store``
are the same store.
"""

from __future__ import annotations

from typing import Any

from tasks.store.store import open_store

DATASET_UPDATED = "musicflow.dataset.updated"
STORE_LABEL = "musicflow.store"
DATASET_LABEL = "musicflow.dataset.id"


def store_key(store_url: str) -> str:
    """The canonical URL of a store: an absolute path on local disk, ``s3://bucket/prefix`` otherwise."""
    return open_store(store_url).full_url().rstrip("/") or "/"


def dataset_updated_event(
    store_url: str, dataset_id: str, *, songs_added: int, songs_failed: int
) -> dict[str, Any]:
    """The keyword arguments of ``prefect.events.emit_event`` for a dataset that gained songs."""
    key = store_key(store_url)
    return {
        "event": DATASET_UPDATED,
        "resource": {
            "prefect.resource.id": f"musicflow.dataset.{key}/{dataset_id}",
            "prefect.resource.name": dataset_id,
            STORE_LABEL: key,
            DATASET_LABEL: dataset_id,
        },
        "related": [{"prefect.resource.id": f"musicflow.store.{key}", "prefect.resource.role": "store"}],
        "payload": {
            "dataset_id": dataset_id,
            "store": key,
            "songs_added": songs_added,
            "songs_failed": songs_failed,
        },
    }


def should_announce(summary: dict[str, Any]) -> bool:
    """An ingest announces its dataset only when it committed new songs (not failed files only)."""
    return int(summary.get("songs_ok", 0)) > 0
