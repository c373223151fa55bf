"""``musicflow evaluate``: a generated run scored against the model's validation songs."""

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
from musicflow.cli.reports import axes_lines, quality_line


def evaluate(
    store: StoreOption,
    model: Annotated[str | None, typer.Option(help="Model id [default: the newest trained model].")] = None,
    run: Annotated[
        str | None, typer.Option(help="Generated run id [default: the model's newest run].")
    ] = None,
    axes: Annotated[
        str | None,
        typer.Option(help="Axes to score, comma-separated: frames, continuity, tonality [default: all]."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print quality.json.")] = False,
    storage_options: StorageOptionsOption = None,
) -> None:
    """Score a generated run against the model's validation songs (writes quality.json in the run)."""
    use_storage_options(store, storage_options)
    from tasks.generation.evaluate import evaluate as evaluate_run  # lazy: start-up

    report = evaluate_run(open_existing_store(store), model_id=model, run_id=run, axes=axes)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console  # lazy: start-up

    console = Console(soft_wrap=True)
    console.print(f"run [bold]{report['run_id']}[/] of model {report['model_id']}", highlight=False)
    console.print(f"  {quality_line(report)}", highlight=False)
    for line in axes_lines(report):
        console.print(f"    {line}", highlight=False)
    console.print(
        f"  scored on {report['features']} against {report['reference_songs']} validation songs "
        f"({report['reference_seconds']} s, from {report['songs_from']}); onsets per second: clips "
        f"{report['onset_rate']['clips']}, training songs {report['onset_rate']['train']}",
        highlight=False,
    )
    for name, clip in zip(report["clips"], report["per_clip"], strict=True):
        console.print(f"  {name}: quality {clip['quality']}, {clip['lufs']} LUFS", highlight=False)
