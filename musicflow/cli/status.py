"""``musicflow status``: what the store holds."""

from __future__ import annotations

import json
import textwrap
from typing import Annotated, Any

import typer

from musicflow.cli.common import (
    open_existing_store,
    use_storage_options,
)
from musicflow.cli.options import (
    StorageOptionsOption,
    StoreOption,
)


def status(
    store: StoreOption,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON with datasets, models and generated lists.")
    ] = False,
    storage_options: StorageOptionsOption = None,
) -> None:
    """What the store holds: datasets, models and generated clips."""
    use_storage_options(store, storage_options)
    from tasks.status import store_status  # lazy: start-up

    report = store_status(open_existing_store(store))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console  # lazy: start-up

    # One item a block: its id whole on a line (ids are ~40 characters: in a table's column they
    # wrapped over four lines at 80 columns), then its facts, wrapped at the terminal's width.
    console = Console(soft_wrap=True, highlight=False)
    sections = {
        "datasets": ["dataset_id", "songs_ok", "songs_failed", "seconds", "n_blocks", "n_features", "format"],
        "models": ["model_id", "dataset_id", "state", "epochs", "train_loss", "val_loss", "params"],
        "generated": ["run_id", "model_id", "count", "seconds", "quality", "axes", "collapsed", "location"],
    }
    for section, columns in sections.items():
        if not report.get(section):
            continue
        console.print(f"[bold]{section}[/] in {store}")
        for item in report[section]:
            console.print(f"  [bold]{item[columns[0]]}[/]")
            facts = ", ".join(f"{column} {_cell(item[column])}" for column in columns[1:])
            console.print(textwrap.fill(facts, width=max(console.width, 40), initial_indent="    ",
                                        subsequent_indent="    "), markup=False)  # fmt: skip
    if not any(report.get(section) for section in sections):
        console.print(f"{store} holds nothing yet: run `musicflow ingest SONGS --store {store}`")


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {_cell(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(str(item or "no") for item in value)
    return f"{value:.5g}" if isinstance(value, float) else str(value)
