"""Flow-run heartbeats that do not hold a finished run for up to a second.

Prefect 3.8 emits a heartbeat event every 180 s from a daemon thread while a flow
runs (what its zombie-run automation watches). The thread sleeps in 1-second
steps, checking a stop event between them, and the *sync* flow engine joins it
when the run ends, so every sync flow run returns 0-1 s after its state is
already final on the server (measured: a trivial 0.3-s flow 1.13 s with the join,
0.48 s without). The *async* engine runs the same context with
``join_on_exit=False``; :func:`install` makes the sync engine do the same.

Heartbeats themselves are unchanged: Prefect's own context manager still starts
the thread, emits the events and stops at the stop event; the thread just
finishes its current second after the run has returned, as it does under the
async engine, and emits nothing more. Each flow module (``flows/ingest.py``,
``train.py``, ``generate.py``) calls :func:`install` when it is imported (a
deployment loads its flow file by path, so ``flows/__init__`` would not run), so
the CLI, deployments served by ``musicflow serve`` and flows run from Python all
get it. Prefect releases without the hook are left untouched (see
:func:`install`'s return value); ``tests/flows/test_heartbeats.py`` fails if the pinned
Prefect stops offering it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

logger = logging.getLogger(__name__)

_MARK = "__musicflow_unjoined__"


def install() -> bool:
    """Make Prefect's sync flow engine stop heartbeats without joining their thread.

    Returns True when the engine now uses the unjoined heartbeats (also when an
    earlier call installed them), False when this Prefect has no
    ``flow_engine._send_heartbeats(engine, join_on_exit=...)`` to wrap, in which
    case nothing is changed.
    """
    from prefect import flow_engine

    original = getattr(flow_engine, "_send_heartbeats", None)
    if original is None:
        logger.debug("prefect.flow_engine has no _send_heartbeats: heartbeats left as they are")
        return False
    if getattr(original, _MARK, False):
        return True
    try:
        parameters = inspect.signature(original).parameters
    except (TypeError, ValueError):
        return False
    if "join_on_exit" not in parameters:
        logger.debug("prefect.flow_engine._send_heartbeats takes no join_on_exit: left as it is")
        return False
    flow_engine._send_heartbeats = unjoined(original)  # type: ignore[assignment]
    return True


def unjoined(
    send_heartbeats: Callable[..., AbstractContextManager[None]],
) -> Callable[..., AbstractContextManager[None]]:
    """Wrap Prefect's heartbeat context manager so that leaving it never joins its thread."""

    @contextmanager
    def send_heartbeats_unjoined(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        # join_on_exit is accepted for the engine's call signature and deliberately not passed on.
        with send_heartbeats(engine, join_on_exit=False):
            yield

    setattr(send_heartbeats_unjoined, _MARK, True)
    send_heartbeats_unjoined.__wrapped__ = send_heartbeats  # type: ignore[attr-defined]
    return send_heartbeats_unjoined
