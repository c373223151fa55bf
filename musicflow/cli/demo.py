"""``musicflow demo``: the pipeline on synthetic songs with a local Prefect server and Dask cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from musicflow.cli.common import (
    quiet_console,
)
from musicflow.cli.options import (
    VerboseOption,
    WorkersOption,
)
from musicflow.cli.pipeline import print_pipeline, run_pipeline
from musicflow.cli.reports import quality_line


def demo(
    workdir: Annotated[Path, typer.Option(help="Where songs, store and outputs go.")] = Path("demo"),
    songs: Annotated[int, typer.Option(min=2, help="Synthetic songs to make.")] = 12,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 8,
    seconds: Annotated[float, typer.Option(help="Length of the generated clip.")] = 10.0,
    workers: WorkersOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: the pipeline's results, the store and the Prefect UI.")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Run ingest -> train -> generate on synthetic songs with a local Prefect server and Dask cluster."""
    quiet_console(verbose)
    from rich.console import Console  # lazy: start-up

    from musicflow.server import ensure_prefect_api, ui_url  # lazy: start-up
    from tasks.audio.ffmpeg import ffmpeg_binary  # lazy: start-up
    from tasks.audio.synth import write_demo_songs  # lazy: start-up

    console = Console(soft_wrap=True, stderr=as_json)  # with --json, stdout is the JSON alone
    ffmpeg_binary()
    song_dir, store = workdir / "songs", str((workdir / "store").resolve())
    paths = write_demo_songs(song_dir, n_songs=songs, seconds=(10.0, 40.0))
    console.print(f"[bold]1/3[/] {len(paths)} demo songs (mp3) in {song_dir}")
    api = ensure_prefect_api(log_dir=workdir.resolve())
    console.print(f"[bold]2/3[/] Prefect API {api}")
    console.print(
        "[bold]3/3[/] pipeline: ingest (Dask LocalCluster, log-mel frames) -> "
        "train (spectral preset) -> generate"
    )
    result = run_pipeline(
        source=str(song_dir),
        store=store,
        workers=workers,
        dask_address=None,
        format="zarr",
        transform="stft",
        block_size=11025,
        preset="spectral",
        epochs=epochs,
        hidden=None,
        seq_len=None,
        hop=None,
        seconds=seconds,
        count=1,
        temperature=None,
    )
    if as_json:
        typer.echo(json.dumps({**result, "store": store, "prefect_ui": ui_url(api)}, indent=2))
        return
    print_pipeline(result)
    clip = result["generate"]["clips"][0]
    location = result["generate"]["location"]
    console.print()
    for file in clip["files"]:
        console.print(f"output:     {location}/{file}", highlight=False)
    console.print(f"metrics:    {location}/metrics.json", highlight=False)
    console.print(f"quality:    {quality_line(result['generate']['quality'])}", highlight=False)
    console.print(f"store:      {store}  (musicflow status --store {store})", highlight=False)
    console.print(f"Prefect UI: {ui_url(api)}  (flow runs, task runs and artifacts)", highlight=False)
