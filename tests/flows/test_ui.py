"""The Prefect UI, in a real headless Chromium, shows an ingest run's task runs and artifacts.

Skipped only when Chromium or Playwright is missing; `.ci/run` installs Debian's chromium.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS, copy_songs, musicflow

from musicflow.server import own_server

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)


@pytest.fixture
def ui_server(tmp_path: Path) -> Iterator[str]:
    """A real ``prefect server start`` (API and UI) on a free port with its own database."""
    with own_server(tmp_path / "prefect") as api:
        yield api


def test_ui_shows_the_ingest_run_task_runs_and_summary(
    tmp_path: Path, demo_songs: list[Path], ui_server: str
) -> None:
    source = tmp_path / "songs"
    copy_songs(demo_songs[:3], source)
    result = musicflow(
        *("ingest", str(source), "--store", str(tmp_path / "store"), "--workers", "1"),
        env={"PREFECT_API_URL": ui_server},
    )
    assert result.returncode == 0, result.stderr
    runs = httpx.post(f"{ui_server}/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}).json()
    run_id, run_name = runs[0]["id"], runs[0]["name"]
    ui = ui_server.removesuffix("/api")

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{ui}/v2/runs/flow-run/{run_id}")
            page.get_by_text(run_name).first.wait_for(timeout=60_000)
            page.get_by_role("tab", name="Task Runs").click()
            page.get_by_text("ingest-batch").first.wait_for(timeout=30_000)
            assert page.get_by_text("plan-ingest").count() > 0
            assert page.get_by_text("commit-batch").count() > 0
            page.screenshot(path=str(tmp_path / "flow-run-task-runs.png"))
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text("ingest-summary").first.wait_for(timeout=30_000)
            assert page.get_by_text("ingest-progress").count() > 0
            page.screenshot(path=str(tmp_path / "flow-run-artifacts.png"))
        finally:
            browser.close()
    assert (tmp_path / "flow-run-task-runs.png").stat().st_size > 10_000
