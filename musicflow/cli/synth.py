"""``musicflow synth``: synthetic demo songs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from musicflow.cli.options import (
    DemoFormatChoice,
)


def synth(
    directory: Annotated[Path, typer.Argument(help="Folder to write the songs to.")],
    songs: Annotated[int, typer.Option(min=1, help="Number of songs.")] = 8,
    min_seconds: Annotated[float, typer.Option(min=0.1, help="Shortest song.")] = 8.0,
    max_seconds: Annotated[float, typer.Option(min=0.1, help="Longest song.")] = 30.0,
    seed: Annotated[int, typer.Option(help="First song's seed.")] = 0,
    format: Annotated[DemoFormatChoice, typer.Option(help="Audio format.")] = DemoFormatChoice.mp3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON: the songs written.")] = False,
) -> None:
    """Write synthetic demo songs (notes, chords, drums) as real audio files."""
    from tasks.audio.synth import write_demo_songs  # lazy: start-up

    paths = write_demo_songs(
        directory, n_songs=songs, seconds=(min_seconds, max_seconds), seed=seed, format=format.value
    )
    if as_json:
        typer.echo(
            json.dumps({"directory": str(directory), "songs": [str(path) for path in paths]}, indent=2)
        )
    else:
        typer.echo(f"{len(paths)} songs in {directory}")
