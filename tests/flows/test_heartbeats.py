"""Flow-run heartbeats: still emitted, but a finished run no longer waits for their thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from prefect import flow, flow_engine

from flows.runtime import heartbeats


class StubEngine:
    """What Prefect's heartbeat context reads from a flow run engine."""

    heartbeat_seconds = 30  # Prefect's minimum
    flow_run = None
    logger = logging.getLogger("stub-engine")

    def __init__(self) -> None:
        self.emitted: list[float] = []
        self.first = threading.Event()

    def _build_heartbeat_event_template(self) -> tuple[dict[str, str], list[Any]]:
        return {"prefect.resource.id": "stub"}, []

    def _emit_flow_run_heartbeat(self, resource: dict[str, str], related: list[Any]) -> None:
        self.emitted.append(time.perf_counter())
        self.first.set()


def _seconds_to_leave(
    send_heartbeats: Callable[..., AbstractContextManager[None]],
) -> tuple[float, StubEngine]:
    """Enter the heartbeat context, wait for its first heartbeat, and time leaving it."""
    engine = StubEngine()
    context = send_heartbeats(engine)
    context.__enter__()
    assert engine.first.wait(10), "no heartbeat was emitted"
    time.sleep(0.05)  # the thread is now in its 1-second sleep
    started = time.perf_counter()
    context.__exit__(None, None, None)
    return time.perf_counter() - started, engine


def test_the_flows_install_unjoined_heartbeats() -> None:
    import flows.generate
    import flows.ingest
    import flows.train  # noqa: F401

    assert getattr(flow_engine._send_heartbeats, "__musicflow_unjoined__", False)
    assert heartbeats.install() is True  # again: already installed, not wrapped twice
    assert not getattr(flow_engine._send_heartbeats.__wrapped__, "__musicflow_unjoined__", False)


def test_leaving_the_run_does_not_wait_for_the_heartbeat_thread() -> None:
    original = flow_engine._send_heartbeats
    original = getattr(original, "__wrapped__", original)
    joined_seconds, _ = _seconds_to_leave(original)
    assert joined_seconds > 0.5  # Prefect's own: waits out the thread's 1-second step
    unjoined_seconds, engine = _seconds_to_leave(heartbeats.unjoined(original))
    assert unjoined_seconds < 0.2
    # The thread stops at its next step and emits nothing more.
    time.sleep(1.5)
    assert len(engine.emitted) == 1


def test_a_prefect_without_the_hook_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_join_parameter(engine: Any) -> None:
        raise AssertionError("not called")

    monkeypatch.setattr(flow_engine, "_send_heartbeats", no_join_parameter)
    assert heartbeats.install() is False
    assert flow_engine._send_heartbeats is no_join_parameter
    monkeypatch.delattr(flow_engine, "_send_heartbeats")
    assert heartbeats.install() is False


def test_a_flow_run_still_emits_heartbeats(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    heartbeats.install()
    emitted: list[str] = []

    def record(engine: Any, resource: dict[str, str], related: list[Any]) -> None:
        emitted.append(resource["prefect.resource.id"])

    monkeypatch.setattr(flow_engine.FlowRunEngine, "_emit_flow_run_heartbeat", record)

    @flow(name="heartbeat-probe")
    def probe() -> int:
        deadline = time.monotonic() + 10
        while not emitted and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(emitted)

    assert probe() == 1
    assert emitted[0].startswith("prefect.flow-run.")
