"""``musicflow catalog``: a dataset's current catalog (one row per song, as musicflow reads it),
printed or exported for other tools: the songs that failed and why, what was kept with warnings."""

from __future__ import annotations

import enum
import json
import sys
from typing import Annotated, Any

import typer

from musicflow.cli.common import open_existing_store, use_storage_options
from musicflow.cli.options import DatasetOption, StorageOptionsOption, StoreOption
from tasks.errors import ConfigError, first_line


class StatusChoice(enum.StrEnum):
    ok = "ok"
    failed = "failed"


def catalog(
    store: StoreOption,
    dataset: DatasetOption = None,
    status: Annotated[
        StatusChoice | None, typer.Option(help="Only the songs of this status (failed: with their error).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: the dataset id and one object per song.")
    ] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV, one line per song.")] = False,
    parquet: Annotated[
        str | None,
        typer.Option(
            metavar="OUT", help="Write a Parquet file (a path or fsspec URL) of the rows instead of printing."
        ),
    ] = None,
    storage_options: StorageOptionsOption = None,
) -> None:
    """List a dataset's songs as musicflow sees them (the last row of a song wins): a table, or
    JSON, CSV or Parquet for other tools."""
    outputs = (("--json", as_json), ("--csv", as_csv), ("--parquet", parquet))
    chosen = [name for name, given in outputs if given]
    if len(chosen) > 1:
        raise ConfigError(f"choose one output of --json, --csv and --parquet, not {' and '.join(chosen)}")
    use_storage_options(store, storage_options)
    from tasks.dataset.repository import catalog_view, resolve_dataset  # lazy: start-up

    opened = open_existing_store(store)
    dataset_id = resolve_dataset(opened, dataset)
    table = catalog_view(opened, dataset_id, status=status.value if status else None)
    if parquet is not None:
        _write_parquet(table, parquet)
        typer.echo(f"{table.num_rows} songs of dataset {dataset_id} written to {parquet}", err=True)
    elif as_json:
        typer.echo(json.dumps({"dataset_id": dataset_id, "songs": table.to_pylist()}, indent=2))
    elif as_csv:
        import pyarrow.csv  # lazy: start-up

        buffer = pyarrow.BufferOutputStream()
        pyarrow.csv.write_csv(table, buffer)
        sys.stdout.write(buffer.getvalue().to_pybytes().decode())
    else:
        _print_table(dataset_id, table.to_pylist(), status.value if status else None)


def _write_parquet(table: Any, out: str) -> None:
    import pyarrow.parquet as pq  # lazy: start-up

    from tasks.store.store import url_to_fs  # lazy: start-up

    try:
        fs, path = url_to_fs(out)
        parent = path.rpartition("/")[0]
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as handle:
            pq.write_table(table, handle)
    except (OSError, ValueError, ImportError) as error:
        reason = first_line(error)
        raise ConfigError(f"cannot write --parquet {out!r}: {reason}") from error


def _print_table(dataset_id: str, rows: list[dict[str, Any]], status: str | None) -> None:
    from rich.console import Console  # lazy: start-up
    from rich.table import Table  # lazy: start-up

    console = Console()
    failed = sum(row["status"] != "ok" for row in rows)
    what = f"{status} songs" if status else f"{len(rows) - failed} songs ok, {failed} failed"
    console.print(f"dataset {dataset_id}: {len(rows)} rows ({what})", highlight=False, soft_wrap=True)
    if not rows:
        return
    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("song", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    table.add_column("source", overflow="fold", ratio=1)
    table.add_column("error / warnings", overflow="fold", ratio=1)
    for row in rows:
        table.add_row(
            row["song_id"][:12],
            row["status"],
            f"{row['seconds']:.1f}",
            row["source"],
            row["error"] or row["warnings"] or "",
        )
    console.print(table, highlight=False)
