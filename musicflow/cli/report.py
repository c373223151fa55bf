"""``musicflow report``: a static HTML page to listen to the store (``tasks/report.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from musicflow.cli.common import open_existing_store, use_storage_options
from musicflow.cli.options import StorageOptionsOption, StoreOption


def report(
    store: StoreOption,
    out: Annotated[
        Path,
        typer.Option(help="Folder for index.html and its media (copied from the store).", file_okay=False),
    ] = Path("musicflow-report"),
    storage_options: StorageOptionsOption = None,
) -> None:
    """Write a page to listen to the store: datasets, models with their loss curves, and the
    generated clips with audio players, spectrograms and the quality axes."""
    use_storage_options(store, storage_options)
    from tasks.report import write_report  # lazy: start-up

    page = write_report(open_existing_store(store), out)
    typer.echo(f"report: {page.resolve()}  (open it in a browser: file://{page.resolve()})")
