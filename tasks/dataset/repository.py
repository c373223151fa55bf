"""The dataset repository: where a dataset lives in the store and how it is read and committed.

``STORE/datasets/<dataset_id>/``::

    config.json        the feature config (what a row of a shard means)
    catalog/           one row per song, the single source of truth: a log of Parquet
                       segments and snapshots (:mod:`tasks.dataset.catalog`)
    catalog.lock       held while committing (:meth:`tasks.store.store.Store.lock`)
    ingests/<token>.lock  one per ingest run in progress, renewed while it runs (:func:`hold_ingest`):
                       ``check --repair`` leaves unreferenced shards alone while one is live
    shards/            feature shards (:mod:`tasks.dataset.shards`) with their statistics sidecars
    stats.json         per-feature statistics of the shards the catalog references, and
                       the catalog version they cover

Ingest, training, generation, status and ``check`` all go through this
module; none of it decodes audio, so training and generation never import
the decoder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import FeatureConfig, IngestConfig
from tasks.dataset.catalog import (
    STATUS_FAILED,
    STATUS_OK,
    CatalogLog,
    CatalogRow,
    catalog_log,
    read_catalog,
    read_catalog_table,
    table_to_rows,
)
from tasks.dataset.shards import SCHEMA_VERSION, read_blocks, read_shard_stats, stats_name
from tasks.dataset.stats import FeatureStats, merge_all
from tasks.errors import ConfigError, StoreError
from tasks.store.store import HeldLock, Store, checked_id

DATASETS_DIR = "datasets"
CONFIG_FILE = "config.json"
LOCK_FILE = "catalog.lock"
INGESTS_DIR = "ingests"
STATS_FILE = "stats.json"


def dataset_dir(dataset_id: str) -> str:
    """Folder of a dataset inside the store (:class:`ConfigError` for an id that is not one folder)."""
    return posixpath.join(DATASETS_DIR, checked_id("dataset", dataset_id))


@dataclass(frozen=True)
class BatchResult:
    """What one batch task returns: small metadata, never arrays."""

    rows: list[CatalogRow]
    shard: str | None
    audio_seconds: float
    task_seconds: float
    peak_rss_mb: float


def prepare_dataset(store: Store, config: IngestConfig) -> str:
    """Create the dataset folder and its ``config.json`` (or check it); returns the dataset id."""
    features = config.features
    dataset_id = features.dataset_id
    directory = dataset_dir(dataset_id)
    if store.exists(directory, CONFIG_FILE):
        stored = FeatureConfig.from_dict(store.read_json(directory, CONFIG_FILE)["features"])
        if stored != features:
            raise StoreError(f"dataset {dataset_id!r} holds features {stored}, not {features}")
    else:
        store.write_json(
            {
                "dataset_id": dataset_id,
                "schema_version": SCHEMA_VERSION,
                "features": features.to_dict(),
                "shard_format": config.shard_format,
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
            directory,
            CONFIG_FILE,
        )
    return dataset_id


@contextlib.contextmanager
def hold_ingest(store: Store, dataset_id: str) -> Iterator[HeldLock]:
    """Mark an ingest run in progress for the block: a lock file of its own under ``ingests/``,
    renewed while it runs (and left behind, stale, by a killed run). While one is live,
    ``check --repair`` removes no unreferenced shard: it may be a batch still writing or about to
    commit."""
    name = f"{uuid.uuid4().hex}.lock"
    # Lost (this run stopped renewing it past the expiry): not an error in itself; a commit whose
    # shard check --repair removed meanwhile is refused by commit_batch.
    with store.lock(dataset_dir(dataset_id), INGESTS_DIR, name, timeout=0, raise_if_lost=False) as held:
        yield held


def live_ingests(store: Store, dataset_id: str, *, clear_stale: bool = False) -> int:
    """How many ingest runs of the dataset are in progress (their lock renewed within the lock
    expiry, by the store's clock); ``clear_stale`` removes the lock files of dead runs."""
    directory = dataset_dir(dataset_id)
    folder = store.path(directory, INGESTS_DIR)
    store.fs.invalidate_cache(folder)
    if not store.fs.exists(folder):
        return 0
    live = 0
    for entry in store.fs.ls(folder, detail=False):
        name = posixpath.basename(str(entry).rstrip("/"))
        if not name.endswith(".lock"):
            continue
        if store.lock_is_live(directory, INGESTS_DIR, name):
            live += 1
        elif clear_stale:
            store.break_stale_lock(directory, INGESTS_DIR, name)
    return live


def commit_batch(store: Store, dataset_id: str, result: BatchResult) -> list[CatalogRow]:
    """Commit a batch under the dataset's lock: catalog rows first (the commit point), then statistics.

    The rows go into one new catalog segment, and the batch's shard statistics
    are merged into ``stats.json``: the cost is the batch's, not the catalog's.
    Concurrent runs can decode the same song; the first commit keeps it. When
    some of a shard's songs are dropped that way, the shard's statistics are
    recomputed from the songs it keeps (a shard left with none is removed), so
    ``stats.json`` stays exact.
    """
    directory = dataset_dir(dataset_id)
    with store.lock(directory, LOCK_FILE):
        if result.shard and any(row.ok for row in result.rows) and not store.exists(directory, result.shard):
            # Removed as an orphan (this run stopped renewing its ingest lock for longer than the lock
            # expiry, then ``check --repair`` ran): rows must never point at a missing shard.
            raise StoreError(
                f"the shard {result.shard} of this batch is gone before its commit (removed by "
                "check --repair while this run was stopped?): its songs are not recorded, and the "
                "next ingest decodes them again"
            )
        log = catalog_log(store, directory)
        fresh = log.append(result.rows)
        # A retried commit (the first attempt committed, then failed before it returned) finds its
        # rows committed with its own shard: they are this batch's, not duplicates to drop.
        ours = [
            row
            for row in result.rows
            if row.ok and row not in fresh and log.shard.get(row.song_id) == row.shard
        ]
        added = fresh + ours
        kept = [row for row in added if row.ok]
        dropped = [row for row in result.rows if row.ok and row not in added]
        if result.shard and dropped:
            if kept:
                recompute_shard_stats(store, dataset_id, result.shard, kept)
            else:
                store.rm(directory, result.shard)
                store.rm(directory, stats_name(result.shard))
        new_shard = result.shard if any(row.ok for row in fresh) else None
        if not _add_to_stats(store, dataset_id, log, fresh, shard=new_shard):
            refresh_stats(store, dataset_id)
        before = log.version
        if log.compact_if_due() and not _bump_stats_version(store, directory, before, log.version):
            refresh_stats(store, dataset_id)
    return added


def recompute_shard_stats(store: Store, dataset_id: str, shard: str, rows: list[CatalogRow]) -> FeatureStats:
    """Rewrite a shard's statistics sidecar from the blocks of ``rows`` (the songs it keeps); returns it."""
    directory = dataset_dir(dataset_id)
    blocks = [read_blocks(store, directory, shard, offset=row.offset, n_blocks=row.n_blocks) for row in rows]
    stats = merge_all([FeatureStats.from_features(item) for item in blocks], blocks[0].shape[1])
    store.write_bytes(stats.to_npz(), directory, stats_name(shard))
    return stats


def _add_to_stats(
    store: Store, dataset_id: str, log: CatalogLog, added: list[CatalogRow], *, shard: str | None
) -> bool:
    """Merge one just-committed segment into ``stats.json``; False when stats.json is not the version
    before it (then :func:`refresh_stats` catches up)."""
    directory = dataset_dir(dataset_id)
    if not added or not store.exists(directory, STATS_FILE):
        return False
    stored = store.read_json(directory, STATS_FILE)
    if stored.get("version") != log.version - 1:
        return False
    total = FeatureStats.from_json(stored)
    if shard:
        total = total.merge(read_shard_stats(store, directory, shard))
    _write_stats(store, directory, total, log.version)
    return True


def _bump_stats_version(store: Store, directory: str, old: int, new: int) -> bool:
    """After a compaction (same songs, a new version): stats.json of ``old`` now covers ``new``."""
    if not store.exists(directory, STATS_FILE):
        return False
    stored = store.read_json(directory, STATS_FILE)
    if stored.get("version") != old:
        return False
    _write_stats(store, directory, FeatureStats.from_json(stored), new)
    return True


def _write_stats(store: Store, directory: str, stats: FeatureStats, version: int) -> None:
    store.write_json({**stats.to_json(), "version": version}, directory, STATS_FILE, indent=None)


def refresh_stats(store: Store, dataset_id: str, *, rebuild: bool = False) -> FeatureStats:
    """Bring ``stats.json`` in line with the shards the catalog references.

    ``stats.json`` names the catalog version it covers: the shards of the
    segments committed since are merged in (a run killed between its two
    commits). Everything is rebuilt from the statistics sidecars of all
    referenced shards when that history is gone (compacted or rewritten by
    ``check --repair``), when ``stats.json`` is missing or from before the log,
    or when ``rebuild``.
    """
    directory = dataset_dir(dataset_id)
    n_features = FeatureConfig.from_dict(store.read_json(directory, CONFIG_FILE)["features"]).n_features
    log = catalog_log(store, directory)
    log.refresh()
    if store.exists(directory, STATS_FILE) and not rebuild:
        stored = store.read_json(directory, STATS_FILE)
        current = FeatureStats.from_json(stored)
        version = stored.get("version")
        if version == log.version:
            return current
        if isinstance(version, int) and version < log.version:
            changes = log.changes_since(version)
            if changes is not None:
                shards = sorted({row.shard for row in changes if row.ok and row.shard})
                total = current.merge(
                    merge_all([read_shard_stats(store, directory, shard) for shard in shards], n_features)
                )
                _write_stats(store, directory, total, log.version)
                return total
    rows = table_to_rows(log.read_table())  # and log.version is the version of these rows
    shards = sorted({row.shard for row in rows if row.ok and row.shard})
    total = merge_all([read_shard_stats(store, directory, shard) for shard in shards], n_features)
    _write_stats(store, directory, total, log.version)
    return total


def read_stats(store: Store, dataset_id: str) -> FeatureStats:
    return FeatureStats.from_json(store.read_json(dataset_dir(dataset_id), STATS_FILE))


def summarise_rows(rows: Iterable[CatalogRow]) -> dict[str, float]:
    """Counts and totals of catalog rows, for artifacts and ``musicflow status``."""
    rows = list(rows)
    ok = [row for row in rows if row.ok]
    return {
        "songs_ok": len(ok),
        "songs_failed": len(rows) - len(ok),
        "seconds": round(sum(row.seconds for row in ok), 3),
        "n_blocks": sum(row.n_blocks for row in ok),
    }


def list_datasets(store: Store) -> list[str]:
    """Ids of the datasets in the store (folders with a ``config.json``), sorted."""
    return [name for name in store.list_ids(DATASETS_DIR) if store.exists(dataset_dir(name), CONFIG_FILE)]


def resolve_dataset(store: Store, dataset_id: str | None) -> str:
    """The dataset meant: the one named, or the only one in the store (train, the CLI)."""
    available = list_datasets(store)
    if dataset_id is not None:
        if dataset_id not in available:
            raise ConfigError(
                f"no dataset {dataset_id!r} in store {store.url!r} (has: {', '.join(available) or 'none'})"
            )
        return dataset_id
    if not available:
        raise ConfigError(f"no dataset in store {store.url!r}: run `musicflow ingest` first")
    if len(available) > 1:
        raise ConfigError(
            f"store {store.url!r} has {len(available)} datasets, choose one with --dataset: "
            + ", ".join(available)
        )
    return available[0]


def read_config(store: Store, dataset_id: str) -> dict[str, Any]:
    """The dataset's ``config.json``; :class:`ConfigError` naming the dataset when there is none."""
    if not store.exists(dataset_dir(dataset_id), CONFIG_FILE):
        raise ConfigError(f"no dataset {dataset_id!r} in store {store.url!r}")
    config: dict[str, Any] = store.read_json(dataset_dir(dataset_id), CONFIG_FILE)
    return config


def schema_version(config: dict[str, Any]) -> int:
    """The data-format version a dataset was created with (its ``config.json``; 1 before it said)."""
    return int(config.get("schema_version", 1))


CATALOG_STATUSES = (STATUS_OK, STATUS_FAILED)


def catalog_view(store: Store, dataset_id: str, *, status: str | None = None) -> pa.Table:
    """The dataset's current catalog (one row per song, as musicflow reads it), only the songs of
    ``status`` when given: what ``musicflow catalog`` prints and exports."""
    if status is not None and status not in CATALOG_STATUSES:
        raise ConfigError(f"invalid status {status!r}: expected one of {', '.join(CATALOG_STATUSES)}")
    read_config(store, dataset_id)  # a one-line error naming the dataset when there is none
    table = read_catalog_table(store, dataset_dir(dataset_id))
    return table if status is None else table.filter(pc.equal(table.column("status"), status))


def read_features(store: Store, dataset_id: str) -> FeatureConfig:
    """The feature config the dataset's shards were made with."""
    return FeatureConfig.from_dict(read_config(store, dataset_id)["features"])


def read_rows(store: Store, dataset_id: str, *, ok_only: bool = False) -> list[CatalogRow]:
    """The dataset's catalog rows in commit order (only ``ok`` songs with ``ok_only``)."""
    rows = read_catalog(store, dataset_dir(dataset_id))
    return [row for row in rows if row.ok] if ok_only else rows


def read_song(store: Store, dataset_id: str, row: CatalogRow, *, n_blocks: int | None = None) -> np.ndarray:
    """One song's feature rows (the first ``n_blocks`` of them), shape [n, n_features] float32."""
    if not row.ok or row.shard is None:
        raise StoreError(f"song {row.song_id[:12]} of dataset {dataset_id!r} has no blocks ({row.status})")
    return read_blocks(
        store,
        dataset_dir(dataset_id),
        row.shard,
        offset=row.offset,
        n_blocks=row.n_blocks if n_blocks is None else min(n_blocks, row.n_blocks),
    )
