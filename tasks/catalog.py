"""The catalog: one Parquet row per song, the single source of truth of a dataset.

A shard's blocks exist for readers only once catalog rows reference them, so
committing rows is what commits a batch. Rows are keyed by ``song_id`` (sha256
of the file's bytes): the first committed row of a song wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.store import Store

CATALOG_FILE = "catalog.parquet"
STATUS_OK = "ok"
STATUS_FAILED = "failed"

CATALOG_SCHEMA = pa.schema(
    [
        ("song_id", pa.string()),
        ("source", pa.string()),
        ("bytes", pa.int64()),
        ("mtime", pa.float64()),
        ("seconds", pa.float64()),
        ("channels", pa.int32()),
        ("n_blocks", pa.int64()),
        ("shard", pa.string()),
        ("offset", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("ingested_at", pa.string()),
    ]
)


@dataclass(frozen=True)
class CatalogRow:
    """One song of a dataset; failed songs have ``shard=None`` and an ``error``."""

    song_id: str
    source: str
    bytes: int
    mtime: float | None
    seconds: float
    channels: int
    n_blocks: int
    shard: str | None
    offset: int
    status: str
    error: str | None
    ingested_at: str

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


_FIELDS = [field.name for field in fields(CatalogRow)]
assert CATALOG_SCHEMA.names == _FIELDS, "CatalogRow and CATALOG_SCHEMA must list the same columns"


def rows_to_table(rows: list[CatalogRow]) -> pa.Table:
    return pa.Table.from_pylist([asdict(row) for row in rows], schema=CATALOG_SCHEMA)


def table_to_rows(table: pa.Table) -> list[CatalogRow]:
    return [CatalogRow(**values) for values in table.select(_FIELDS).to_pylist()]


def read_catalog(store: Store, dataset_dir: str) -> list[CatalogRow]:
    """All rows of a dataset's catalog, in commit order (empty when there is none)."""
    if not store.exists(dataset_dir, CATALOG_FILE):
        return []
    # Read without starting any Arrow thread (``pq.read_table`` starts some even with
    # ``use_threads=False``): a process whose Arrow threads are alive at exit aborts now
    # and then, "terminate called without an active exception" (apache/arrow#34314).
    data = pa.BufferReader(store.read_bytes(dataset_dir, CATALOG_FILE))
    table = pq.ParquetFile(data, pre_buffer=False).read(use_threads=False)
    return table_to_rows(table)


def new_rows(existing: list[CatalogRow], rows: list[CatalogRow]) -> list[CatalogRow]:
    """The rows of ``rows`` that a commit adds to ``existing``.

    A song already committed as ``ok`` keeps its row; a song committed as
    ``failed`` is replaced by a new row for it (a retry); within ``rows`` the
    first row of a song wins.
    """
    committed = {row.song_id: row.status for row in existing}
    added: dict[str, CatalogRow] = {}
    for row in rows:
        if committed.get(row.song_id) != STATUS_OK and row.song_id not in added:
            added[row.song_id] = row
    return list(added.values())


def write_catalog(
    store: Store, dataset_dir: str, existing: list[CatalogRow], added: list[CatalogRow]
) -> None:
    """Replace the catalog atomically by ``existing`` (less the songs ``added`` replaces) + ``added``."""
    replaced = {row.song_id for row in added}
    rows = [row for row in existing if row.song_id not in replaced] + added
    buffer = pa.BufferOutputStream()
    pq.write_table(rows_to_table(rows), buffer, compression="zstd")
    store.write_bytes(buffer.getvalue().to_pybytes(), dataset_dir, CATALOG_FILE)


def append_rows(store: Store, dataset_dir: str, rows: list[CatalogRow]) -> list[CatalogRow]:
    """Commit ``rows`` after the existing ones (see :func:`new_rows`); returns the rows added.

    Not safe against concurrent writers by itself: hold the dataset's lock
    around it (as ``tasks.dataset.commit_batch`` does).
    """
    existing = read_catalog(store, dataset_dir)
    added = new_rows(existing, rows)
    if added or not existing:
        write_catalog(store, dataset_dir, existing, added)
    return added
