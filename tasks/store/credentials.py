"""Storage credentials for the store and the source, without process-wide ``AWS_*`` variables.

Three ways in, all ending in :func:`tasks.store.store.register_storage_options` for a URL:

- the CLI's ``--storage-options JSON`` (store) and ``--source-options JSON``
  (source): fsspec options for this process (:func:`parse_storage_options`);
  ``musicflow serve`` hands them to the flow runs it starts through the
  environment of their processes (:func:`export_storage_options`), never
  through flow-run parameters, which the Prefect UI shows;
- a Prefect block named by a flow parameter (``store_block``/``source_block``:
  ``s3-bucket/NAME``, ``aws-credentials/NAME`` or ``minio-credentials/NAME``
  from prefect-aws): the parameter is the block's name, the secret stays in
  the block (loaded on the flows' side, :mod:`flows.runtime.blocks`: nothing
  here imports Prefect);
- whatever the flow registered is sent on to the Dask workers as a task
  argument, and registered there before anything else (:func:`register_all`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tasks.errors import ConfigError
from tasks.store.store import register_storage_options, registered_storage_options

STORAGE_OPTIONS_ENV = "MUSICFLOW_STORAGE_OPTIONS"


def parse_storage_options(value: str | None, option: str = "--storage-options") -> dict[str, Any]:
    """fsspec options from a JSON object, or from ``@FILE`` holding one (keeps secrets out of the
    shell history); ``None`` or ``""`` is no options. :class:`ConfigError` names the option and, for
    ``@FILE``, the file, but never the JSON itself: it may hold a secret, even when it is malformed
    (a typo is the most common way a key would land in a log)."""
    if value is None or not value.strip():
        return {}
    text = value
    if value.startswith("@"):
        given = value
        try:
            text = Path(value[1:]).read_text()
        except OSError as error:
            raise ConfigError(
                f"invalid {option} {value!r}: cannot read {value[1:]!r} ({error.strerror})"
            ) from error
    else:
        given = f"(inline JSON of {len(value)} characters, not shown: it may hold secrets)"
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"invalid {option} {given}: not JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None  # the decoder's exception carries the document: it goes nowhere
    if not isinstance(parsed, dict):
        raise ConfigError(
            f'invalid {option} {given}: expected a JSON object such as {{"key": "...", "secret": "..."}}'
        )
    return parsed


def register_all(options_by_prefix: dict[str, dict[str, Any]] | None) -> None:
    """Register every prefix of ``options_by_prefix`` (what ``registered_storage_options()`` gave
    in another process)."""
    for prefix, options in (options_by_prefix or {}).items():
        register_storage_options(prefix, options)


def export_storage_options() -> None:
    """Put this process's registered options into the environment its child processes inherit."""
    registered = registered_storage_options()
    if registered:
        os.environ[STORAGE_OPTIONS_ENV] = json.dumps(registered)
    else:
        os.environ.pop(STORAGE_OPTIONS_ENV, None)


def import_storage_options() -> None:
    """Register the options a parent process exported (:func:`export_storage_options`), and take
    them out of this process's environment: the processes it starts (ffmpeg, Dask workers, git)
    never inherit them (Dask workers get what they need as a task argument)."""
    raw = os.environ.pop(STORAGE_OPTIONS_ENV, None)
    if not raw:
        return
    try:
        exported = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"invalid {STORAGE_OPTIONS_ENV} in the environment: not JSON ({error.msg})"
        ) from error
    if not isinstance(exported, dict) or not all(isinstance(value, dict) for value in exported.values()):
        raise ConfigError(
            f"invalid {STORAGE_OPTIONS_ENV} in the environment: expected {{url prefix: options}}"
        )
    register_all(exported)
