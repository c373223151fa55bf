"""The catalog: one row per song, the single source of truth of a dataset.

A shard's blocks exist for readers only once catalog rows reference them, so
committing rows is what commits a batch. Rows are keyed by ``song_id`` (sha256
of the file's bytes): the first committed ``ok`` row of a song wins.

The catalog is a log of immutable Parquet files, numbered versions::

    catalog/000000000001.parquet   a segment: the rows one commit added
    catalog/000000000002.parquet
    catalog/000000000003.parquet   a snapshot: the whole catalog (compaction, repair)
    catalog.parquet                the single-file catalog of older stores, read as version 0

A commit creates the next version with an exclusive create (a hard link on a
local disk, an ``If-None-Match`` PUT on object stores), so its cost is the
batch's, never the catalog's, and two writers can never both commit one
version. Every :data:`COMPACT_SEGMENTS` segments a snapshot replaces them. A
reader reads the newest snapshot and the segments after it: a consistent view
of one version. In the view, a later row of a song replaces an earlier one (a
failed song that was retried), and a failed row is dropped when a later row has
the same source (a file that could not be read before and can now).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import StoreError
from tasks.store.store import Store

CATALOG_FILE = "catalog.parquet"  # the single-file catalog of stores made before the log
CATALOG_DIR = "catalog"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
# Segments after a snapshot that make the next commit write a new snapshot.
COMPACT_SEGMENTS = 64
_KIND_KEY = b"musicflow.catalog"
_SAME_AS_KEY = b"musicflow.same_as"
_VERSION_NAME = re.compile(r"^(\d{12})\.parquet$")
_READ_ATTEMPTS = 8

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
        ("warnings", pa.string()),
    ]
)
# Not a CatalogRow field: the raw bytes of a local file name that is not UTF-8 (see rows_to_table).
SOURCE_BYTES = pa.field("source_bytes", pa.binary())
_FILE_SCHEMA = CATALOG_SCHEMA.append(SOURCE_BYTES)


@dataclass(frozen=True)
class CatalogRow:
    """One song of a dataset; failed songs have ``shard=None`` and an ``error``.

    ``warnings`` is set on ``ok`` songs that decoded with concealed errors.
    ``source`` is the path or URL exactly as the filesystem names it (a local
    name that is not UTF-8 keeps its undecodable bytes as surrogate escapes).
    """

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
    warnings: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


_FIELDS = [field.name for field in fields(CatalogRow)]
assert CATALOG_SCHEMA.names == _FIELDS, "CatalogRow and CATALOG_SCHEMA must list the same columns"


def display_text(text: str) -> str:
    """``text`` made valid UTF-8: a surrogate-escaped byte of a file name becomes ``\\xff``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def _source_bytes(source: str) -> bytes | None:
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(source)
    return None


def rows_to_table(rows: list[CatalogRow]) -> pa.Table:
    """Rows as an Arrow table of :data:`CATALOG_SCHEMA` plus ``source_bytes``.

    Arrow strings must be UTF-8: a source that is not keeps a readable
    ``source`` (``\\xff`` escapes) and its exact bytes in ``source_bytes``, so
    the next run finds the same file again.
    """
    records = []
    for row in rows:
        values = asdict(row)
        raw = _source_bytes(row.source)
        values["source"] = display_text(row.source)
        values["source_bytes"] = raw
        for name in ("error", "warnings"):
            if values[name] is not None:
                values[name] = display_text(values[name])
        records.append(values)
    return pa.Table.from_pylist(records, schema=_FILE_SCHEMA)


def table_to_rows(table: pa.Table) -> list[CatalogRow]:
    """Rows of a catalog table (columns in any order; columns added since it was written default)."""
    table = _conform(table)
    sources = table.column("source_bytes").to_pylist()
    rows = []
    for values, raw in zip(table.select(_FIELDS).to_pylist(), sources, strict=True):
        if raw is not None:
            values["source"] = os.fsdecode(raw)
        rows.append(CatalogRow(**values))
    return rows


def _conform(table: pa.Table) -> pa.Table:
    """``table`` with exactly the file schema's columns, in order (missing ones null)."""
    columns = []
    for field in _FILE_SCHEMA:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=_FILE_SCHEMA)


def _view(table: pa.Table) -> pa.Table:
    """The current rows of a log's concatenated rows (see the module docstring)."""
    ids = table.column("song_id").to_pylist()
    sources = table.column("source").to_pylist()
    raws = table.column("source_bytes").to_pylist()
    statuses = table.column("status").to_pylist()
    last_of_id = {song_id: index for index, song_id in enumerate(ids)}
    keys: list[Any] = [raw or source for raw, source in zip(raws, sources, strict=True)]
    last_of_source = {keys[index]: index for index in sorted(last_of_id.values())}
    keep = [
        index
        for index in sorted(last_of_id.values())
        if statuses[index] == STATUS_OK or last_of_source[keys[index]] == index
    ]
    return table if len(keep) == table.num_rows else table.take(pa.array(keep, type=pa.int64()))


def _encode(table: pa.Table, kind: str, same_as: int | None = None) -> bytes:
    metadata = {_KIND_KEY: kind.encode()}
    if same_as is not None:
        metadata[_SAME_AS_KEY] = str(same_as).encode()
    buffer = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), buffer, compression="zstd")
    return bytes(buffer.getvalue().to_pybytes())


def _decode(data: bytes) -> tuple[pa.Table, str, int | None]:
    # Read without starting any Arrow thread (``pq.read_table`` starts some even with
    # ``use_threads=False``): a process whose Arrow threads are alive at exit aborts now
    # and then, "terminate called without an active exception" (apache/arrow#34314).
    table = pq.ParquetFile(pa.BufferReader(data), pre_buffer=False).read(use_threads=False)
    metadata = table.schema.metadata or {}
    same_as = metadata.get(_SAME_AS_KEY)
    kind = metadata.get(_KIND_KEY, b"snapshot").decode()
    return _conform(table), kind, int(same_as) if same_as is not None else None


class UnreadableCatalogError(StoreError):
    """A catalog version that does not decode: cut short by a crash, or damaged."""


def version_file(version: int) -> str:
    """The file of a catalog version inside its dataset's folder (0: the single-file catalog)."""
    return CATALOG_FILE if version == 0 else _version_name(version)


def _version_name(version: int) -> str:
    return posixpath.join(CATALOG_DIR, f"{version:012d}.parquet")


class CatalogLog:
    """One process's view of a dataset's catalog log, brought up to date by reading only what changed.

    ``status`` maps every song of the current view to its status: what a commit
    needs to know, kept in memory so that committing a batch never reads the
    whole catalog again.
    """

    def __init__(self, store: Store, dataset_dir: str) -> None:
        self.store = store
        self.dataset_dir = dataset_dir
        self.version = -1  # nothing read yet; 0 is an empty (or single-file) catalog
        self.snapshot = -1  # version of the snapshot the view starts from
        self.segments = 0  # segments after that snapshot
        self.status: dict[str, str] = {}
        self.shard: dict[str, str | None] = {}  # song_id -> shard of its committed row

    # ------------------------------------------------------------------ reading

    def versions(self) -> list[int]:
        """Versions present in the log, ascending (0 for a single-file catalog)."""
        path = self.store.path(self.dataset_dir, CATALOG_DIR)
        self.store.fs.invalidate_cache(path)
        found = []
        if self.store.fs.exists(path):
            for entry in self.store.fs.ls(path, detail=False):
                match = _VERSION_NAME.match(posixpath.basename(str(entry).rstrip("/")))
                if match:
                    found.append(int(match.group(1)))
        if self.store.exists(self.dataset_dir, CATALOG_FILE):
            found.append(0)
        return sorted(found)

    def _read_version(self, version: int) -> tuple[pa.Table, str, int | None]:
        name = version_file(version)
        data = self.store.read_bytes(self.dataset_dir, name)
        try:
            return _decode(data)
        except (pa.ArrowException, ValueError) as error:
            raise UnreadableCatalogError(
                f"catalog version {name} of {self.dataset_dir} is unreadable ({len(data)} bytes: "
                f"{str(error).splitlines()[0][:120]}): `musicflow check --repair` sets a crash's "
                "newest version aside"
            ) from error

    def unreadable_versions(self) -> list[tuple[int, str]]:
        """The versions that do not decode (a crash before their data reached the disk), with why."""
        found = []
        for version in self.versions():
            try:
                self._read_version(version)
            except UnreadableCatalogError as error:
                found.append((version, str(error)))
            except FileNotFoundError:  # removed by a compaction meanwhile: not broken
                continue
        return found

    def set_aside(self, version: int) -> str:
        """Rename an unreadable version out of the log (readers skip the name); the new name."""
        name = version_file(version)
        aside = f"{name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}"
        self.store.fs.mv(self.store.path(self.dataset_dir, name), self.store.path(self.dataset_dir, aside))
        return aside

    def read_table(self) -> pa.Table:
        """The current view as one table (retrying when a compaction removes files under it)."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                return self._read_view()
            except FileNotFoundError:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _read_view(self) -> pa.Table:
        versions = self.versions()
        tables: list[pa.Table] = []
        snapshot, segments = 0, 0
        for version in reversed(versions):
            table, kind, _ = self._read_version(version)
            tables.append(table)
            if kind == "snapshot":
                snapshot = version
                break
            segments += 1
        tables.reverse()
        whole = pa.concat_tables(tables) if tables else _FILE_SCHEMA.empty_table()
        view = _view(whole)
        self._reset(view, versions[-1] if versions else 0, snapshot, segments)
        return view

    def _reset(self, view: pa.Table, version: int, snapshot: int, segments: int) -> None:
        ids = view.column("song_id").to_pylist()
        self.status = dict(zip(ids, view.column("status").to_pylist(), strict=True))
        self.shard = dict(zip(ids, view.column("shard").to_pylist(), strict=True))
        self.version, self.snapshot, self.segments = version, snapshot, segments

    def refresh(self) -> None:
        """Catch up with commits made since the last read (whole re-read after a new snapshot)."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                self._refresh()
                return
            except FileNotFoundError:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _refresh(self) -> None:
        if self.version < 0:
            self._read_view()
            return
        for version in [found for found in self.versions() if found > self.version]:
            table, kind, same_as = self._read_version(version)
            if kind == "snapshot":
                if same_as != self.version:
                    self._read_view()  # rewritten (repair), or compacted past what this process saw
                    return
                self.snapshot, self.segments = version, 0
            else:
                self._apply(table)
                self.segments += 1
            self.version = version

    def _apply(self, table: pa.Table) -> None:
        columns = (table.column(name).to_pylist() for name in ("song_id", "status", "shard"))
        for song_id, status, shard in zip(*columns, strict=True):
            if self.status.get(song_id) != STATUS_OK:
                self.status[song_id], self.shard[song_id] = status, shard

    def changes_since(self, version: int) -> list[CatalogRow] | None:
        """Rows committed after ``version``; None when that history was compacted or rewritten."""
        rows: list[CatalogRow] = []
        last = version
        for newer in [found for found in self.versions() if found > version]:
            table, kind, same_as = self._read_version(newer)
            if kind == "snapshot" and same_as != last:
                return None
            if kind != "snapshot":
                rows += table_to_rows(table)
            last = newer
        return rows

    # ------------------------------------------------------------------ writing

    def append(self, rows: list[CatalogRow]) -> list[CatalogRow]:
        """Commit the rows that ``rows`` adds (see :func:`new_rows`) as the next version.

        Another writer that took that version first is caught up with, and the
        rows are checked again: nothing is committed twice, whatever the locks did.
        """
        while True:
            self.refresh()
            added = new_rows(self.status, rows)
            if not added:
                return []
            version = self.version + 1
            if self.store.create_exclusive(
                _encode(rows_to_table(added), "segment"), self.dataset_dir, _version_name(version)
            ):
                for row in added:
                    self.status[row.song_id], self.shard[row.song_id] = row.status, row.shard
                self.version, self.segments = version, self.segments + 1
                return added

    def write_snapshot(self, rows: list[CatalogRow] | None = None, *, based_on: int | None = None) -> int:
        """Write the whole catalog (``rows``, or the current view: a compaction) as the next version.

        ``based_on`` is the version the caller's ``rows`` were derived from: if
        anything was committed since, :class:`StoreError` and nothing written,
        so a stale view is never written back. Returns the new version.
        """
        self.refresh()
        if based_on is not None and based_on != self.version:
            raise StoreError(
                f"the catalog of {self.dataset_dir} changed (version {based_on} -> {self.version}) "
                "since it was read: not writing back a stale view"
            )
        same_as = None
        if rows is None:
            table, same_as = self.read_table(), self.version
        else:
            table = _view(rows_to_table(rows))
        version = self.version + 1
        if not self.store.create_exclusive(
            _encode(table, "snapshot", same_as), self.dataset_dir, _version_name(version)
        ):
            raise StoreError(f"the catalog of {self.dataset_dir} changed while a snapshot was written")
        if rows is None:  # the status of every song is what read_table() just loaded
            self.version, self.snapshot, self.segments = version, version, 0
        else:
            self._reset(table, version, version, 0)
        self._remove_before(version)
        return version

    def _remove_before(self, version: int) -> None:
        """Remove the files a snapshot at ``version`` replaces (readers then retry their listing)."""
        for old in self.versions():
            if old < version:
                name = version_file(old)
                # Already gone, or left for the next compaction to remove.
                with contextlib.suppress(FileNotFoundError, OSError):
                    self.store.fs.rm(self.store.path(self.dataset_dir, name))

    def compact_if_due(self) -> bool:
        """Write a snapshot when :data:`COMPACT_SEGMENTS` segments follow the last one."""
        if self.segments < COMPACT_SEGMENTS:
            return False
        self.write_snapshot()
        return True


# One log per (store, dataset) and process: commits catch up from what the last one saw.
_LOGS: dict[tuple[str, str], CatalogLog] = {}


def catalog_log(store: Store, dataset_dir: str) -> CatalogLog:
    """This process's :class:`CatalogLog` of the dataset (shared by its commits)."""
    key = (store.url, dataset_dir)
    if key not in _LOGS or _LOGS[key].store.fs is not store.fs:
        _LOGS[key] = CatalogLog(store, dataset_dir)
    return _LOGS[key]


def read_catalog_table(store: Store, dataset_dir: str) -> pa.Table:
    """The current rows of a dataset's catalog as an Arrow table of :data:`CATALOG_SCHEMA`, in commit
    order: what other tools should read instead of the log's files (the last row of a song wins)."""
    return CatalogLog(store, dataset_dir).read_table().select(CATALOG_SCHEMA.names)


def read_catalog(store: Store, dataset_dir: str) -> list[CatalogRow]:
    """All current rows of a dataset's catalog, in commit order (empty when there is none)."""
    return table_to_rows(CatalogLog(store, dataset_dir).read_table())


def has_catalog(store: Store, dataset_dir: str) -> bool:
    """True once the dataset has committed anything (or has a single-file catalog)."""
    return bool(CatalogLog(store, dataset_dir).versions())


def new_rows(committed: dict[str, str] | list[CatalogRow], rows: list[CatalogRow]) -> list[CatalogRow]:
    """The rows of ``rows`` that a commit adds to ``committed`` (rows, or song_id -> status).

    A song already committed as ``ok`` keeps its row; a song committed as
    ``failed`` is replaced by a new row for it (a retry); within ``rows`` the
    first row of a song wins.
    """
    status = committed if isinstance(committed, dict) else {row.song_id: row.status for row in committed}
    added: dict[str, CatalogRow] = {}
    for row in rows:
        if status.get(row.song_id) != STATUS_OK and row.song_id not in added:
            added[row.song_id] = row
    return list(added.values())


def write_catalog(
    store: Store,
    dataset_dir: str,
    existing: list[CatalogRow],
    added: list[CatalogRow],
    *,
    based_on: int | None = None,
) -> int:
    """Replace the catalog by ``existing`` (less the songs ``added`` replaces) + ``added``, as a snapshot.

    With ``based_on`` (the version ``existing`` was read at) nothing is written
    when the catalog changed since: :class:`StoreError`. Returns the new version.
    """
    replaced = {row.song_id for row in added}
    rows = [row for row in existing if row.song_id not in replaced] + added
    return catalog_log(store, dataset_dir).write_snapshot(rows, based_on=based_on)


def append_rows(store: Store, dataset_dir: str, rows: list[CatalogRow]) -> list[CatalogRow]:
    """Commit ``rows`` after the existing ones (see :func:`new_rows`); returns the rows added.

    Safe against concurrent writers by itself (an exclusive create per version);
    hold the dataset's lock around it anyway when statistics follow the commit
    (as ``tasks.dataset.repository.commit_batch`` does).
    """
    return catalog_log(store, dataset_dir).append(rows)
