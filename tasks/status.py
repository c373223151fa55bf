"""What a store holds, for ``musicflow status`` (plain dicts, JSON-ready)."""

from __future__ import annotations

from typing import Any

from tasks.catalog import read_catalog
from tasks.ingest import CONFIG_FILE, dataset_dir, summarise_rows
from tasks.shards import shard_format
from tasks.store import Store


def dataset_status(store: Store, dataset_id: str) -> dict[str, Any]:
    """One dataset: id, songs ok/failed, seconds, n_blocks, n_features, format."""
    directory = dataset_dir(dataset_id)
    config = store.read_json(directory, CONFIG_FILE)
    rows = read_catalog(store, directory)
    formats = sorted({shard_format(row.shard) for row in rows if row.ok and row.shard})
    return {
        "dataset_id": dataset_id,
        **summarise_rows(rows),
        "n_features": int(config["features"]["n_features"]),
        "transform": config["features"]["transform"],
        "block_size": int(config["features"]["block_size"]),
        "sample_rate": int(config["features"]["sample_rate"]),
        "format": ",".join(formats) or config.get("shard_format", ""),
    }


def store_status(store: Store) -> dict[str, Any]:
    """Everything in the store: ``{"datasets": [...]}``."""
    datasets = [
        dataset_status(store, dataset_id)
        for dataset_id in store.list_dirs("datasets")
        if store.exists(dataset_dir(dataset_id), CONFIG_FILE)
    ]
    return {"store": store.url, "datasets": datasets}
