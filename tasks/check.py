"""Store consistency: catalog <-> shards <-> statistics, and models' weights <-> cards.

:func:`check_store` lists every problem; with ``repair`` it removes orphans,
drops catalog rows whose blocks are gone (so the next ingest decodes those
songs again) and rebuilds statistics.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass

from tasks.dataset.catalog import (
    CatalogLog,
    catalog_log,
    has_catalog,
    table_to_rows,
    version_file,
    write_catalog,
)
from tasks.dataset.repository import (
    LOCK_FILE,
    STATS_FILE,
    dataset_dir,
    list_datasets,
    live_ingests,
    recompute_shard_stats,
    refresh_stats,
)
from tasks.dataset.shards import SHARDS_DIR, read_blocks, read_shard_stats, shard_format, stats_name
from tasks.model.repository import (
    CARD_FILE,
    MODEL_FILE,
    MODELS_DIR,
    foreign_weights_digest,
    model_dir,
    read_card,
)
from tasks.store.store import Store, lock_expiry

# A shard written to more recently than this (by the store's clock) may belong to an ingest run in
# progress (a run whose ingest lock is live keeps every shard, whatever its age).
ORPHAN_MIN_AGE_S = 3600.0


@dataclass(frozen=True)
class Problem:
    """One inconsistency: what kind, where, in words, and whether it was repaired."""

    kind: str
    location: str
    detail: str
    repaired: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_store(
    store: Store, *, repair: bool = False, orphan_min_age: float = ORPHAN_MIN_AGE_S
) -> list[Problem]:
    """Every problem in the store's datasets and models (repaired where possible with ``repair``)."""
    problems: list[Problem] = []
    for dataset_id in list_datasets(store):
        problems += check_dataset(store, dataset_id, repair=repair, orphan_min_age=orphan_min_age)
    for model_id in store.list_ids(MODELS_DIR):
        problems += check_model(store, model_id)
    return problems


def check_dataset(store: Store, dataset_id: str, *, repair: bool, orphan_min_age: float) -> list[Problem]:
    directory = dataset_dir(dataset_id)
    with store.lock(directory, LOCK_FILE) as held:
        problems = _unreadable_catalog(store, directory, repair=repair)
        if any(not problem.repaired for problem in problems):
            return problems  # the catalog cannot be read: nothing else can be checked
        log = catalog_log(store, directory)
        rows = table_to_rows(log.read_table())
        version = log.version
        broken: set[str] = set()
        by_shard: dict[str, list] = {}
        for row in rows:
            if row.ok and row.shard:
                by_shard.setdefault(row.shard, []).append(row)
        for shard, shard_rows in sorted(by_shard.items()):
            where = f"{directory}/{shard}"
            if not store.exists(directory, shard):
                broken.update(row.song_id for row in shard_rows)
                problems.append(
                    Problem(
                        "missing-shard", where, f"referenced by {len(shard_rows)} songs but absent", repair
                    )
                )
                continue
            try:
                end = max(row.offset + row.n_blocks for row in shard_rows)
                tail = read_blocks(store, directory, shard, offset=end - 1, n_blocks=1)
                short = tail.shape[0] != 1
            except Exception as error:  # unreadable shard: same remedy as a missing one
                problems.append(Problem("unreadable-shard", where, str(error).splitlines()[0][:200], repair))
                broken.update(row.song_id for row in shard_rows)
                continue
            if short:
                broken.update(row.song_id for row in shard_rows)
                problems.append(
                    Problem("truncated-shard", where, f"has fewer than the {end} blocks referenced", repair)
                )
                continue
            expected = sum(row.n_blocks for row in shard_rows)
            counted = _sidecar_count(store, directory, shard)
            if counted != expected:
                problems.append(
                    Problem(
                        "shard-stats", where, f"statistics count {counted} blocks, catalog {expected}", repair
                    )
                )
                if repair:
                    recompute_shard_stats(store, dataset_id, shard, shard_rows)
        ingests = live_ingests(store, dataset_id, clear_stale=repair)
        problems += _orphans(
            store, directory, set(by_shard), repair=repair, min_age=orphan_min_age, ingests=ingests
        )
        if repair and broken:
            kept = [row for row in rows if row.song_id not in broken]
            held.ensure()  # still ours (renewed all along): nobody committed since the rows were read
            # ...and based_on refuses the write anyway if a commit got in: never a stale view.
            write_catalog(store, directory, kept, [], based_on=version)
            for shard in {row.shard for row in rows if row.song_id in broken and row.shard}:
                store.rm(directory, shard)  # what is left of it: the songs are decoded again
                store.rm(directory, stats_name(shard))
        stats_problem = _stats_problem(
            store, directory, log.version if repair and broken else version, rows, broken
        )
        if stats_problem:
            problems.append(Problem("dataset-stats", f"{directory}/{STATS_FILE}", stats_problem, repair))
        if repair and (broken or stats_problem or any(p.kind == "shard-stats" for p in problems)):
            refresh_stats(store, dataset_id, rebuild=True)
        return problems


def _sidecar_count(store: Store, directory: str, shard: str) -> int | None:
    try:
        return read_shard_stats(store, directory, shard).count
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None


def _stats_problem(store: Store, directory: str, version: int, rows: list, broken: set[str]) -> str:
    referenced = any(row.ok and row.song_id not in broken for row in rows)
    if not store.exists(directory, STATS_FILE):
        return "stats.json is missing" if referenced else ""
    stored = store.read_json(directory, STATS_FILE)
    expected = sum(row.n_blocks for row in rows if row.ok and row.song_id not in broken)
    if stored.get("version") != version:
        return f"stats.json covers catalog version {stored.get('version')}, the catalog is at {version}"
    if int(stored.get("count", -1)) != expected:
        return f"stats.json counts {stored.get('count')} blocks, the catalog {expected}"
    return ""


def _unreadable_catalog(store: Store, directory: str, *, repair: bool) -> list[Problem]:
    """Catalog versions that do not decode. The newest ones (what a crash before their data reached
    the disk leaves: a zero-length or cut-short file) are set aside with ``repair``: their batches'
    songs are then not in the catalog, so the next ingest decodes them again, and their shards are
    orphans. An unreadable version with readable ones after it is reported, never repaired: the
    versions after it would be read without it."""
    log = CatalogLog(store, directory)
    unreadable = log.unreadable_versions()
    if not unreadable:
        return []
    versions = log.versions()
    trailing = set()
    for version in reversed(versions):
        if version not in {found for found, _ in unreadable}:
            break
        trailing.add(version)
    problems = []
    for version, reason in unreadable:
        fixable = repair and version in trailing
        where = f"{directory}/{version_file(version)}"
        if fixable:
            log.set_aside(version)
        problems.append(Problem("unreadable-catalog", where, reason, fixable))
    return problems


def _orphans(
    store: Store, directory: str, referenced: set[str], *, repair: bool, min_age: float, ingests: int
) -> list[Problem]:
    """Shards (and statistics sidecars) nothing references, not written to for ``min_age`` (and the
    lock expiry) by the store's clock: a shard still being written, or about to be committed, is
    not one. While ``ingests`` runs are live (:func:`~tasks.dataset.repository.live_ingests`) they
    are reported but never removed: a batch of theirs may still commit one."""
    problems: list[Problem] = []
    shards_path = store.path(directory, SHARDS_DIR)
    if not store.fs.exists(shards_path):
        return problems
    now = store.now(fresh=True)
    oldest = max(min_age, lock_expiry())
    for entry in sorted(store.fs.ls(shards_path, detail=False)):
        name = posixpath.basename(str(entry).rstrip("/"))
        relative = f"{SHARDS_DIR}/{name}"
        owner = relative.removesuffix(".stats.npz").removesuffix(".partial")
        if owner in referenced or name.startswith(".") or not _is_shard_name(owner):
            continue
        modified = store.modified(directory, relative)
        if modified is not None and now - modified < oldest:
            continue
        where = f"{directory}/{relative}"
        if ingests:
            kept = f"not referenced by the catalog; kept while {ingests} ingest run(s) are in progress"
            problems.append(Problem("orphan", where, kept))
            continue
        problems.append(Problem("orphan", where, "not referenced by the catalog", repair))
        if repair:
            store.rm(directory, relative)
    return problems


def _is_shard_name(name: str) -> bool:
    try:
        shard_format(name)
    except Exception:
        return False
    return True


def check_model(store: Store, model_id: str) -> list[Problem]:
    """A finished model's weights must be the file its card describes."""
    directory = model_dir(model_id)
    if not store.exists(directory, CARD_FILE):
        return []
    card = read_card(store, model_id)
    if not store.exists(directory, MODEL_FILE):
        return [Problem("missing-weights", f"{directory}/{MODEL_FILE}", "the card has no weights file")]
    digest = foreign_weights_digest(card, store.read_bytes(directory, MODEL_FILE))
    if digest is not None:
        return [
            Problem(
                "weights-hash",
                f"{directory}/{MODEL_FILE}",
                f"sha256 {digest[:12]} is not the card's {str(card.get('weights_sha256'))[:12]}",
            )
        ]
    if not has_catalog(store, dataset_dir(card.get("dataset_id", ""))):
        return [
            Problem("missing-dataset", directory, f"trained on {card.get('dataset_id')!r}, not in the store")
        ]
    return []
