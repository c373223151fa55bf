"""The ``musicflow`` command: a thin front door over the flows.

One module per command (``musicflow/cli/ingest.py``...), registered here in the order
``musicflow --help`` lists them; the options several commands share are in
:mod:`musicflow.cli.options`, what they do alike in :mod:`musicflow.cli.common`.

Errors print as one line; bad arguments exit with code 2, other failures 1.

Nothing of the DSP/ML stack (numpy, scipy, TensorFlow, pydub, zarr, pyarrow) nor Prefect is
imported when the commands are registered: `musicflow --help` and a bad argument answer at once.
Each command imports what it needs inside its function, each such import marked
``# lazy: start-up`` (tests/cli/test_cli.py checks sys.modules after --help).
"""

from __future__ import annotations

import os
import sys

import typer

from musicflow.cli import (
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
from tasks.errors import ConfigError, MusicflowError, StoreError

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
for command in (
    ingest.ingest,
    status.status,
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
    except (ConfigError, StoreError) as error:
        fail(str(error), 2)
    except MusicflowError as error:
        fail(str(error), 1)
    if isinstance(result, int) and result:
        sys.exit(result)
