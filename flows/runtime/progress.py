"""Progress reporting that reaches both the Prefect UI and a local progress bar.

Flows and tasks make a :class:`StageProgress`; it updates a Prefect progress
artifact (when inside a run) and every local listener that registered with
:func:`listening`: the CLI's rich progress bar on a terminal, a
:class:`LinePrinter` (one line per epoch or batch) anywhere else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TextIO
from uuid import UUID

Listener = Callable[[str, float, float, str], None]
_listeners: list[Listener] = []
_notice_listeners: list[Callable[[str], None]] = []


@contextlib.contextmanager
def listening(listener: Listener, notice: Callable[[str], None] | None = None) -> Iterator[None]:
    """Call ``listener(stage, done, total, message)`` on every report inside the block, and
    ``notice(text)`` on every :func:`notify` (a line to show once, such as the Dask dashboard's link)."""
    _listeners.append(listener)
    if notice is not None:
        _notice_listeners.append(notice)
    try:
        yield
    finally:
        _listeners.remove(listener)
        if notice is not None:
            _notice_listeners.remove(notice)


def notify(text: str) -> None:
    """Show ``text`` once to every local listener (the CLI prints it above its progress bar)."""
    for notice in list(_notice_listeners):
        notice(text)


class StageProgress:
    """Progress of one stage (``ingest``, ``train``...) of a flow run."""

    def __init__(self, stage: str, total: float, *, description: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.stage = stage
        self.total = max(total, 1e-9)
        self.done = 0.0
        self._artifact_id: UUID | None = None
        with contextlib.suppress(Exception):  # no run context (plain call): local listeners only
            self._artifact_id = create_progress_artifact(  # type: ignore[assignment]
                progress=0.0, key=f"{stage}-progress", description=description
            )
        self._notify("")

    def advance(self, amount: float = 1.0, message: str = "") -> None:
        self.done = min(self.total, self.done + amount)
        if self._artifact_id is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._artifact_id, progress=100.0 * self.done / self.total)
        self._notify(message)

    def _notify(self, message: str) -> None:
        for listener in list(_listeners):
            listener(self.stage, self.done, self.total, message)


class LinePrinter:
    """A listener that writes one line per update, for output that is not a terminal (cron,
    CI, a log file), where a progress bar would print nothing until the end::

        train: 3/10 (30%) epoch 3/10 loss 0.1023 val 0.1187 [12 s]
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started: dict[str, float] = {}

    def __call__(self, stage: str, done: float, total: float, message: str) -> None:
        first = stage not in self.started
        started = self.started.setdefault(stage, time.monotonic())
        if not message and not first:
            return  # a silent step (a resumed run skipping to its epoch): the next line says it
        total = total if total >= 1e-6 else 0.0  # StageProgress keeps an empty stage's total above 0
        percent = 100.0 * done / total if total else 100.0
        text = f"{stage}: {_count(done)}/{_count(total)} ({percent:.0f}%)"
        if message:
            text += f" {message}"
        print(f"{text} [{time.monotonic() - started:.0f} s]", file=self.stream, flush=True)


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() or value >= 10 else f"{value:.2g}"
