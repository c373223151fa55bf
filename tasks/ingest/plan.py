"""Planning an ingest: which listed files are new, and how they are cut into batches.

The flow process runs this part: it compares each listed file's URI, size and
mtime with the catalog, hashes only the files that might hold a song already
seen (:func:`plan_ingest`), and balances the rest over the Dask workers
(:func:`make_batches`). The workers then run :func:`tasks.ingest.worker.ingest_batch`.
"""

from __future__ import annotations

import heapq
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from tasks.dataset.catalog import CatalogRow
from tasks.errors import ConfigError
from tasks.ingest.sources import SourceFile, sha256_of


@dataclass
class IngestPlan:
    """What an ingest run will do: ``todo`` files, and why the others are left out."""

    todo: list[SourceFile]
    known: list[SourceFile] = field(default_factory=list)
    duplicates: list[SourceFile] = field(default_factory=list)
    n_listed: int = 0


def hash_files(files: list[SourceFile], *, threads: int = 8) -> list[SourceFile]:
    """Fill in ``song_id`` (sha256 of the bytes); hashing is I/O bound, so threads help.

    A file that cannot be read keeps ``song_id=None`` (its worker records why).
    """

    def digest(item: SourceFile) -> str | None:
        if item.song_id or item.problem:
            return item.song_id
        try:
            return sha256_of(item.uri)
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        digests = list(pool.map(digest, files))
    return [replace(item, song_id=value) for item, value in zip(files, digests, strict=True)]


def plan_ingest(
    files: list[SourceFile], catalog: list[CatalogRow], *, retry_failed: bool = False
) -> IngestPlan:
    """Decide which listed files need decoding, reading as few of them as possible.

    A file whose URI, size and mtime match a catalog row is known without
    reading it. Of the rest, only those that might hold the same bytes as
    another file, because a catalog row or another listed file has the same
    size, are hashed here (a moved or touched song; a copy), and are skipped
    when their ``song_id`` is in the catalog (unless it failed and
    ``retry_failed``) or appears twice in this listing. Every other file is
    hashed by the worker that decodes it, reading it once.
    """
    done = {row.song_id: row for row in catalog if row.ok or not retry_failed}
    by_stat = {(row.source, row.bytes, row.mtime): row.song_id for row in done.values()}
    unknown: list[SourceFile] = []
    known: list[SourceFile] = []
    for item in files:
        song_id = by_stat.get((item.uri, item.bytes, item.mtime))
        (known if song_id else unknown).append(replace(item, song_id=song_id) if song_id else item)
    sizes = [item.bytes for item in unknown if not item.problem]
    counts: dict[int, int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    catalog_sizes = {row.bytes for row in done.values()}
    suspects = [
        index
        for index, item in enumerate(unknown)
        if not item.problem and (counts[item.bytes] > 1 or item.bytes in catalog_sizes)
    ]
    for index, hashed in zip(suspects, hash_files([unknown[index] for index in suspects]), strict=True):
        unknown[index] = hashed
    plan = IngestPlan(todo=[], known=known, n_listed=len(files))
    seen: set[str] = set()
    for item in unknown:
        if item.song_id is None:
            plan.todo.append(item)
        elif item.song_id in done:
            plan.known.append(item)
        elif item.song_id in seen:
            plan.duplicates.append(item)
        else:
            seen.add(item.song_id)
            plan.todo.append(item)
    return plan


def grown_batch_bytes(total_bytes: int, batch_bytes: int, max_batches: int) -> int:
    """The batch size for ``total_bytes`` of input: ``batch_bytes``, or more when that would make
    over ``max_batches`` batches (a large collection gets larger batches, not more of them: each
    batch costs two task runs, and 100k songs in 32 MB batches made ~25k)."""
    if max_batches < 1:
        raise ConfigError(f"invalid max_batches {max_batches!r}: must be positive")
    # 10% headroom: balanced packing of unequal files fills a batch less than full.
    return max(batch_bytes, math.ceil(1.1 * total_bytes / max_batches))


def make_batches(
    files: list[SourceFile],
    *,
    batch_bytes: int,
    min_batches: int = 1,
    rounds_of: int = 1,
    max_batches: int | None = None,
) -> list[list[SourceFile]]:
    """Split files into balanced batches of at most ``batch_bytes`` of input (or one larger file).

    There are at least ``min_batches`` batches when there are that many files, and their
    count is a multiple of ``rounds_of`` where the files allow (pass the worker count: every
    round of batches, the last one too, keeps every worker busy). Files go largest first to
    the lightest batch, so batches weigh about the same; within a batch they keep their
    listing order. With ``max_batches``, ``batch_bytes`` grows with the collection
    (:func:`grown_batch_bytes`) so that there are about that many batches at most (more only
    where ``min_batches`` or ``rounds_of`` ask for them).
    """
    if batch_bytes <= 0:
        raise ConfigError(f"invalid batch_bytes {batch_bytes!r}: must be positive")
    if rounds_of < 1:
        raise ConfigError(f"invalid rounds_of {rounds_of!r}: must be positive")
    if not files:
        return []
    if max_batches is not None:
        batch_bytes = grown_batch_bytes(sum(item.bytes for item in files), batch_bytes, max_batches)

    def rounded(wanted: int) -> int:
        return min(len(files), -(-wanted // rounds_of) * rounds_of)

    total = sum(item.bytes for item in files)
    n_batches = rounded(max(min_batches, math.ceil(total / batch_bytes)))
    order = sorted(range(len(files)), key=lambda i: -files[i].bytes)
    members: list[list[int]] = []
    while len(members) != n_batches:  # a file fitted nowhere: balance again over more batches
        n_batches = max(n_batches, rounded(len(members)))
        loads = [(0, 0, index) for index in range(n_batches)]  # (bytes, files, batch index) min-heap
        members = [[] for _ in range(n_batches)]
        for position in order:
            load, count, index = heapq.heappop(loads)
            if count and load + files[position].bytes > batch_bytes:  # a new batch
                heapq.heappush(loads, (load, count, index))
                load, count, index = 0, 0, len(members)
                members.append([])
            members[index].append(position)
            heapq.heappush(loads, (load + files[position].bytes, count + 1, index))
    ordered = sorted((sorted(batch) for batch in members if batch), key=lambda batch: batch[0])
    return [[files[position] for position in batch] for batch in ordered]
