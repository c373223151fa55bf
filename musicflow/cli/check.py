"""``musicflow check``: the store's consistency check (and repair)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from musicflow.cli.common import (
    open_existing_store,
    use_storage_options,
)
from musicflow.cli.options import (
    StorageOptionsOption,
    StoreOption,
)


def check(
    store: StoreOption,
    repair: Annotated[
        bool, typer.Option("--repair", help="Remove orphans, re-queue lost songs, rebuild stats.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Check catalog <-> shards <-> statistics and models; exit 1 when problems are found."""
    use_storage_options(store, storage_options)
    from tasks.check import check_store  # lazy: start-up

    problems = check_store(open_existing_store(store), repair=repair)
    if as_json:
        typer.echo(json.dumps({"problems": [problem.to_dict() for problem in problems]}, indent=2))
    else:
        for problem in problems:
            state = " (repaired)" if problem.repaired else ""
            typer.echo(f"{problem.kind}: {problem.location}: {problem.detail}{state}")
        typer.echo(f"{len(problems)} problem(s) found" + (", repaired" if repair and problems else ""))
    if problems:
        raise typer.Exit(1)
