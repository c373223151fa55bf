"""The catalog's commit: musicflow's segment log against deltalake (delta-rs) and Lance (pylance).

Run from the repository root with a Python that has the candidates installed
(they are not project dependencies; a scratch venv with ``pip install deltalake
pylance moto[server] s3fs`` and ``PYTHONPATH=.`` does)::

    PYTHONPATH=. python benchmarks/bench_catalog_formats.py [--sizes 1000 100000] [--commits 20]

For each backend, on a local disk and on S3 (moto on 127.0.0.1), in one run:

- commit time of a 10-row batch into a catalog of N rows, with the catalog's
  semantics (insert the songs not already in it): musicflow's lock + segment
  (dedup against the in-memory view), delta's ``merge ... when_not_matched_insert``,
  Lance's ``merge_insert ... when_not_matched_insert_all``; and plain appends
  (no dedup) for delta and Lance;
- reading the whole catalog back (what plan, training and status do);
- concurrent writers: 4 processes x 5 commits of their own rows at once;
  rows present at the end, and commits that raised;
- install size and import time of each library.

A backend that is not installed is reported as such; numbers are medians.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

BATCH_ROWS = 10


def synthetic_rows(start: int, count: int) -> pa.Table:
    """Catalog rows (musicflow's schema) for songs ``start .. start + count - 1``."""
    from tasks.dataset.catalog import CatalogRow, rows_to_table

    rows = [
        CatalogRow(
            song_id=f"{index:064x}", source=f"/music/artist-{index % 997}/song-{index}.mp3",
            bytes=4_000_000 + index, mtime=1.7e9 + index, seconds=200.0, channels=2, n_blocks=800,
            shard=f"shards/20250101T000000-{index // 8:012x}.zarr", offset=(index % 8) * 800,
            status="ok", error=None, ingested_at="2025-01-01T00:00:00+00:00",
        )
        for index in range(start, start + count)
    ]  # fmt: skip
    return rows_to_table(rows)


# ---------------------------------------------------------------- backends


class Backend:
    name = ""
    module = ""

    def __init__(self, url: str, storage: dict[str, str]) -> None:
        self.url, self.storage = url, storage

    def prefill(self, table: pa.Table) -> None: ...
    def commit(self, table: pa.Table) -> None: ...
    def read(self) -> int: ...


class MusicflowLog(Backend):
    name, module = "musicflow log", "tasks.dataset.catalog"

    def _store(self) -> Any:
        from tasks.store.store import open_store

        return open_store(self.url)

    def prefill(self, table: pa.Table) -> None:
        from tasks.dataset.catalog import table_to_rows, write_catalog

        write_catalog(self._store(), "ds", [], table_to_rows(table))

    def commit(self, table: pa.Table) -> None:
        from tasks.dataset.catalog import append_rows, table_to_rows

        store = self._store()
        with store.lock("ds", "catalog.lock"):
            append_rows(store, "ds", table_to_rows(table))

    def read(self) -> int:
        from tasks.dataset.catalog import CatalogLog

        return int(CatalogLog(self._store(), "ds").read_table().num_rows)


class DeltaMerge(Backend):
    name, module = "delta merge", "deltalake"

    def prefill(self, table: pa.Table) -> None:
        from deltalake import write_deltalake

        write_deltalake(self.url, table, storage_options=self.storage or None)

    def commit(self, table: pa.Table) -> None:
        from deltalake import DeltaTable

        (
            DeltaTable(self.url, storage_options=self.storage or None)
            .merge(table, predicate="t.song_id = s.song_id", source_alias="s", target_alias="t")
            .when_not_matched_insert_all()
            .execute()
        )

    def read(self) -> int:
        from deltalake import DeltaTable

        return int(DeltaTable(self.url, storage_options=self.storage or None).to_pyarrow_table().num_rows)


class DeltaAppend(DeltaMerge):
    name = "delta append"

    def commit(self, table: pa.Table) -> None:
        from deltalake import write_deltalake

        write_deltalake(self.url, table, mode="append", storage_options=self.storage or None)


class LanceMerge(Backend):
    name, module = "lance merge_insert", "lance"

    def prefill(self, table: pa.Table) -> None:
        import lance

        lance.write_dataset(table, self.url, storage_options=self.storage or None)

    def commit(self, table: pa.Table) -> None:
        import lance

        dataset = lance.dataset(self.url, storage_options=self.storage or None)
        dataset.merge_insert("song_id").when_not_matched_insert_all().execute(table)

    def read(self) -> int:
        import lance

        return int(lance.dataset(self.url, storage_options=self.storage or None).to_table().num_rows)


class LanceAppend(LanceMerge):
    name = "lance append"

    def commit(self, table: pa.Table) -> None:
        import lance

        lance.write_dataset(table, self.url, mode="append", storage_options=self.storage or None)


BACKENDS: list[type[Backend]] = [MusicflowLog, DeltaMerge, DeltaAppend, LanceMerge, LanceAppend]


def available(backend: type[Backend]) -> bool:
    try:
        importlib.import_module(backend.module)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- places


def place(kind: str, backend: type[Backend], root: Path, endpoint: str | None) -> tuple[str, dict[str, str]]:
    """URL (and delta/lance storage options) of a fresh table for ``backend``."""
    name = f"{backend.__name__.lower()}-{uuid.uuid4().hex[:8]}"
    if kind == "local":
        return str(root / name), {}
    import s3fs

    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir(bucket)
    if backend is MusicflowLog:
        return f"s3://{bucket}/{name}", {}
    options = {
        "aws_endpoint": endpoint or "", "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "aws_region": "us-east-1", "allow_http": "true",
    }  # fmt: skip
    if backend.module == "deltalake":
        options = {"AWS_ENDPOINT_URL": endpoint or "", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                   "AWS_ALLOW_HTTP": "true"}  # fmt: skip
    return f"s3://{bucket}/{name}", options


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def commit_times(backend: Backend, size: int, commits: int) -> tuple[float, float]:
    """(median commit seconds, seconds to read the catalog) on a catalog of ``size`` rows."""
    backend.prefill(synthetic_rows(0, size))
    backend.commit(synthetic_rows(size, BATCH_ROWS))  # warm caches: the flow commits many batches
    times = [
        timed(lambda index=index: backend.commit(synthetic_rows(size + (index + 1) * BATCH_ROWS, BATCH_ROWS)))
        for index in range(commits)
    ]
    read = timed(backend.read)
    return statistics.median(times), read


def _concurrent_writer(
    backend_name: str, url: str, storage: dict[str, str], worker: int, n: int, env: dict[str, str]
) -> int:
    os.environ.update(env)
    if env.get("FSSPEC_S3_ENDPOINT_URL"):
        import fsspec.config

        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = env["FSSPEC_S3_ENDPOINT_URL"]
    backend = next(kind for kind in BACKENDS if kind.name == backend_name)(url, storage)
    failures = 0
    for index in range(n):
        try:
            backend.commit(synthetic_rows(10_000_000 + worker * 1000 + index * BATCH_ROWS, BATCH_ROWS))
        except Exception:
            failures += 1
    return failures


def concurrency(backend: Backend, *, writers: int = 4, commits: int = 5) -> tuple[int, int, int]:
    """(rows expected, rows present, commits that raised) after concurrent writers."""
    backend.prefill(synthetic_rows(0, 100))
    env = {key: value for key, value in os.environ.items() if key.startswith(("AWS_", "FSSPEC_"))}
    with multiprocessing.get_context("spawn").Pool(writers) as pool:
        failures = pool.starmap(
            _concurrent_writer,
            [(backend.name, backend.url, backend.storage, worker, commits, env) for worker in range(writers)],
        )
    return 100 + writers * commits * BATCH_ROWS, backend.read(), sum(failures)


def footprint(module: str) -> tuple[float, float]:
    """(install size in MB of the distribution's package folder, import seconds in a fresh process)."""
    imported = importlib.import_module(module)
    folder = Path(imported.__file__ or "").parent
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    seconds = min(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    )
    return size, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--s3-sizes", type=int, nargs="+", default=[1000, 20_000])
    args = parser.parse_args()
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                       "FSSPEC_S3_ENDPOINT_URL": endpoint})  # fmt: skip
    import fsspec.config

    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint
    root = Path(tempfile.mkdtemp(prefix="musicflow-formats-"))
    kinds = [kind for kind in BACKENDS if available(kind)]
    missing = [kind.name for kind in BACKENDS if not available(kind)]
    print(
        f"backends: {', '.join(kind.name for kind in kinds)}"
        + (f" (not installed: {missing})" if missing else "")
    )
    results: dict[tuple[str, str], Any] = {}
    try:
        for where, sizes in (("local", args.sizes), ("s3", args.s3_sizes)):
            for kind in kinds:
                for size in sizes:
                    url, storage = place(where, kind, root, endpoint)
                    try:
                        results[kind.name, f"{where} {size}"] = commit_times(
                            kind(url, storage), size, args.commits
                        )
                    except Exception as error:
                        results[kind.name, f"{where} {size}"] = f"error: {type(error).__name__}: {error}"[
                            :120
                        ]
                    result = results[kind.name, f"{where} {size}"]
                    print(f"  {kind.name:20} {where:5} {size:>7} rows: {result}", flush=True)
                url, storage = place(where, kind, root, endpoint)
                try:
                    results[kind.name, f"{where} concurrent"] = concurrency(kind(url, storage))
                except Exception as error:
                    results[kind.name, f"{where} concurrent"] = f"error: {type(error).__name__}: {error}"[
                        :120
                    ]
                print(
                    f"  {kind.name:20} {where:5} concurrent: {results[kind.name, f'{where} concurrent']}",
                    flush=True,
                )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    print()
    places = (("local", args.sizes), ("s3", args.s3_sizes))
    header = ["backend"] + [f"{where} {size}" for where, sizes in places for size in sizes]
    print(" | ".join(header) + " | growth local | concurrent local (expected/present/raised) | concurrent s3")
    for kind in kinds:
        cells, medians = [], []
        for column in header[1:]:
            value = results.get((kind.name, column))
            if isinstance(value, tuple):
                cells.append(f"{1000 * value[0]:.1f} ms (read {1000 * value[1]:.0f} ms)")
                if column.startswith("local"):
                    medians.append(value[0])
            else:
                cells.append(str(value))
        growth = f"{medians[-1] / medians[0]:.2f}x" if len(medians) >= 2 else "-"
        local_c, s3_c = (
            results.get((kind.name, "local concurrent")),
            results.get((kind.name, "s3 concurrent")),
        )
        print(" | ".join([kind.name, *cells, growth, str(local_c), str(s3_c)]))
    print()
    print("musicflow log: no dependency beyond pyarrow and fsspec, which musicflow needs anyway")
    for module in sorted({kind.module for kind in kinds} - {MusicflowLog.module}):
        size, seconds = footprint(module)
        print(f"{module}: {size:.0f} MB installed, import {seconds:.2f} s")
    print("\ncommand:", shlex.join([sys.executable, *sys.argv]))


if __name__ == "__main__":
    main()
