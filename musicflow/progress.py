"""Progress reporting that reaches both the Prefect UI and a local progress bar.

Flows call :func:`report`; it updates a Prefect progress artifact (when inside
a run) and every local listener, such as the CLI's rich progress bar, that
registered with :func:`listening`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from uuid import UUID

Listener = Callable[[str, float, float, str], None]
_listeners: list[Listener] = []


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(stage, done, total, message)`` on every report inside the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


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
