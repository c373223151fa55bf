"""Flow-run names that tell runs apart in the Prefect UI's runs list.

Prefect names a run at random ("fanatic-camel") unless its flow has a ``flow_run_name``; a
template of the parameters would show whole paths and URLs, too long for the list. These
callables read the run's parameters (``prefect.runtime``) and keep the last part of each
location: ``ingest · songs → store``, ``train · stft-b11025-…``, ``generate · spectral-… · 2 clips``.
A deployment's run is renamed the same way when it starts.
"""

from __future__ import annotations

import posixpath
from typing import Any

from prefect.runtime import flow_run

SEPARATOR = " · "


def short_location(url: str | None) -> str:
    """The last part of a path or URL: ``s3://bucket/data/store/`` -> ``store``, ``/srv/songs`` -> ``songs``;
    a bucket alone keeps its scheme (``s3://bucket``)."""
    if not url:
        return "?"
    text = str(url).rstrip("/")
    scheme, _, rest = text.rpartition("://")
    if scheme and "/" not in rest:
        return text
    return posixpath.basename(rest) or text


def _parameters() -> dict[str, Any]:
    return dict(flow_run.parameters or {})


def ingest_run_name() -> str:
    given = _parameters()
    return f"ingest{SEPARATOR}{short_location(given.get('source'))} → {short_location(given.get('store'))}"


def pipeline_run_name() -> str:
    given = _parameters()
    return f"pipeline{SEPARATOR}{short_location(given.get('source'))} → {short_location(given.get('store'))}"


def train_run_name() -> str:
    given = _parameters()
    newest = f"newest dataset in {short_location(given.get('store'))}"
    what = given.get("model_id") or given.get("dataset") or newest
    return f"train{SEPARATOR}{what}"


def generate_run_name() -> str:
    given = _parameters()
    count = int(given.get("count") or 1)
    model = given.get("model") or f"newest model in {short_location(given.get('store'))}"
    return f"generate{SEPARATOR}{model}{SEPARATOR}{count} clip{'s' if count != 1 else ''}"
