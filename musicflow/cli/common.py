"""What the ``musicflow`` commands share: storage options, a quiet console, the progress display,
opening an existing store, the generate options' checks, and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import typer

from tasks.config import check_generate_request


def use_storage_options(
    store: str | None,
    storage_options: str | None,
    source: str | None = None,
    source_options: str | None = None,
) -> None:
    """Register the store's and the source's fsspec options in this process (bad JSON: exit 2)."""
    from tasks.store.credentials import parse_storage_options  # lazy: start-up
    from tasks.store.store import register_storage_options  # lazy: start-up

    parsed = [
        (url, parse_storage_options(value, name))
        for url, value, name in (
            (store, storage_options, "--storage-options"),
            (source, source_options, "--source-options"),
        )
        if url is not None
    ]
    for url, options in parsed:
        register_storage_options(url, options)


def dask_options(
    *,
    workers: int | None,
    dask_address: str | None,
    dask_scheduler_file: str | None,
    dask_security: str | None,
    dashboard: bool,
) -> dict[str, Any]:
    """The flows' Dask parameters from the shared options, checked, and the workers'
    ``MUSICFLOW_DIRECT_IO`` (a bad one: exit 2, naming it)."""
    from flows.runtime.cluster import check_cluster_options  # lazy: start-up
    from tasks.store import direct  # lazy: start-up
    from tasks.store.credentials import parse_storage_options  # lazy: start-up

    direct.enabled()

    options: dict[str, Any] = {
        "workers": workers,
        "dask_address": dask_address,
        "dask_scheduler_file": dask_scheduler_file,
        "dask_security": parse_storage_options(dask_security, "--dask-security") or None,
    }
    check_cluster_options(**options)
    return {**options, "dashboard": dashboard}


def read_config_file(ctx: typer.Context, param: Any, value: str | None) -> str | None:
    """``--config FILE.toml``: the command's options as TOML keys (``ingest-every = 600`` or
    ``ingest_every``), read before the other options as their defaults, so a flag or a MUSICFLOW_*
    variable given wins over the file. An unknown key or a file that is not TOML: exit 2."""
    if not value:
        return value
    import tomllib  # lazy: start-up

    try:
        with open(value, "rb") as handle:
            table = tomllib.load(handle)
    except OSError as error:
        raise typer.BadParameter(f"{value!r}: cannot read it ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise typer.BadParameter(f"{value!r}: not TOML ({error})") from None
    names = {option.name for option in ctx.command.params if option.name and option is not param}
    defaults: dict[str, Any] = {}
    for key, item in table.items():
        name = key.replace("-", "_")
        if name not in names:
            raise typer.BadParameter(f"{value!r}: unknown key {key!r}")
        # A table of fsspec or TLS options is the JSON those options take.
        defaults[name] = json.dumps(item) if isinstance(item, dict) else item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


class _NoQueueProgress(logging.Filter):
    """Drops "Still processing items: N items remaining...": Prefect's events and log workers say
    so whenever a process exits while they still send what it queued (they send it all the same),
    which put a warning after the command's own last line, its result or its one-line error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Still processing items")


_NO_QUEUE_PROGRESS = _NoQueueProgress()  # one instance: addFilter skips it when already there


def quiet_console(verbose: bool) -> None:
    if not verbose:
        for handler in ("CONSOLE", "CONSOLE_FLOW_RUNS"):
            os.environ.setdefault(f"PREFECT_LOGGING_HANDLERS_{handler}_LEVEL", "WARNING")
        for worker in ("EventsWorker", "APILogWorker"):  # Prefect's queue services log as their class
            logging.getLogger(worker).addFilter(_NO_QUEUE_PROGRESS)


def progress_bar(console: Any) -> Any:
    # lazy: start-up
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def run_with_progress(function: Any, **kwargs: Any) -> Any:
    """Run a flow showing :mod:`flows.runtime.progress` reports: a rich progress bar on a terminal,
    one plain line per epoch or batch otherwise (cron, CI, a log file)."""
    from rich.console import Console  # lazy: start-up

    from flows.runtime.progress import LinePrinter, listening  # lazy: start-up

    console = Console(stderr=True)
    if not console.is_terminal:
        with listening(LinePrinter(sys.stderr), notice=lambda text: print(text, file=sys.stderr, flush=True)):
            return function(**kwargs)
    bars: dict[str, Any] = {}
    with progress_bar(console) as progress:

        def listener(stage: str, done: float, total: float, message: str) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=total, message=message)
            progress.update(bars[stage], completed=done, total=total, message=message)

        with listening(
            listener, notice=lambda text: progress.console.print(text, soft_wrap=True, markup=False)
        ):
            return function(**kwargs)


def open_existing_store(store: str) -> Any:
    from tasks.store.store import open_existing_store as open_existing  # lazy: start-up

    return open_existing(store)


def check_generate_options(
    seconds: float, count: int, temperature: float | None, seed_audio: str | None
) -> None:
    check_generate_request(seconds, count, temperature, option_prefix="--")
    if seed_audio is not None:
        from tasks.ingest.sources import open_source  # lazy: start-up

        open_source(seed_audio)


def with_given_value(error: typer.TyperException, args: list[str]) -> str:
    """The usage error's message, naming the value given when the message does not (range checks)."""
    message = error.format_message()
    opts = getattr(getattr(error, "param", None), "opts", None) or []
    given = None
    for index, arg in enumerate(args):
        for opt in opts:
            if arg == opt and index + 1 < len(args):
                given = args[index + 1]
            elif arg.startswith(f"{opt}="):
                given = arg[len(opt) + 1 :]
    if given is None or repr(given) in message or f" {given} " in f" {message} ":
        return message
    head, _, reason = message.partition(": ")
    return f"{head}: {given!r}: {reason}" if reason else f"{message} (got {given!r})"


def fail(message: str, code: int) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"musicflow: error: {first_line}", file=sys.stderr)
    sys.exit(code)
