"""The ``musicflow`` command: a thin front door over the flows.

One module per command (``musicflow/cli/ingest.py``...), registered here in the order
``musicflow --help`` lists them; the options several commands share are in
:mod:`musicflow.cli.options`, what they do alike in :mod:`musicflow.cli.common`.

Errors print as one line. Exit codes, one rule (``tasks.errors.exit_code``): 2 for a usage error (a bad
argument or option value), 1 for a run that failed (the store, the decoder, a service, training), 0 for
a completed run, even when some songs were recorded as failed (the command lists them).

Nothing of the DSP/ML stack (numpy, scipy, TensorFlow, pydub, zarr, pyarrow) nor Prefect is
imported when the commands are registered: `musicflow --help` and a bad argument answer at once.
Each command imports what it needs inside its function, each such import marked
``# lazy: start-up`` (tests/cli/test_cli.py checks sys.modules after --help).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

import musicflow
from musicflow.cli import (
    catalog,
    check,
    demo,
    evaluate,
    generate,
    ingest,
    pipeline,
    report,
    serve,
    status,
    synth,
    train,
)
from musicflow.cli.common import fail, with_given_value
from tasks.errors import MusicflowError, exit_code

# Before Prefect is imported (only ever inside a command): no telemetry, and no INFO chatter
# under our progress bar (run logs still reach the Prefect UI at INFO).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    name="musicflow",
    help="Learn to make music from a collection of songs (ingest -> train -> generate).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"musicflow {musicflow.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Learn to make music from a collection of songs (ingest -> train -> generate)."""


for command in (
    ingest.ingest,
    status.status,
    catalog.catalog,
    train.train,
    generate.generate,
    evaluate.evaluate,
    report.report,
    pipeline.pipeline,
    serve.serve,
    check.check,
    synth.synth,
    demo.demo,
):
    app.command()(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning every expected error into one line."""
    try:
        result = app(args=argv, standalone_mode=False)
    except typer.Abort:
        fail("aborted", 130)
    except typer.TyperException as error:  # usage errors: bad option values, missing arguments
        fail(with_given_value(error, sys.argv[1:] if argv is None else argv), getattr(error, "exit_code", 2))
    except MusicflowError as error:  # the one rule (tasks.errors.exit_code): 2 a bad argument, 1 a failed run
        fail(str(error), exit_code(error))
    if isinstance(result, int) and result:
        sys.exit(result)
