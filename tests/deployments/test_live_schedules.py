"""The scheduled and triggered loop, run for real: a ``prefect server start`` subprocess, and
``musicflow serve`` in another, with a short ingest interval, a minutely cron and tiny songs.

While it runs, songs are dropped into the source and another store is ingested against the same
server. Then, through the Prefect API:

- interval ingests ran (and no two ingests ever ran at once);
- the train deployment ran exactly once per ingest that added songs to this store, with that
  ingest's dataset id, never for a no-op ingest nor for the other store's ingest;
- generate ran on the cron, and its clips are in the store;
- every run is there with its artifacts;
- concurrency: of two ingests started at once one is cancelled; of two trainings one waits.

With SQLAlchemy 2.1 the server's scheduler creates no run at all (README, "Reproducible
installs"): this test is what guards the pin. Every process it starts is killed at the end,
whatever happens. Set MUSICFLOW_UI_SCREENSHOTS=DIR to keep the UI screenshots it takes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import TINY_BLOCK
from helpers import ROOT, chromium_browser, keep_screenshots, ui_playwright, write_periodic_songs

from tasks.ingest.events import DATASET_UPDATED, store_key

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

INGEST_EVERY = 12  # seconds
# Server settings (Prefect 3.8 names, prefect/settings/models/server/): schedule a few runs at
# a time, every 5 s, and retry a run waiting for a concurrency slot after 3 s, not 30.
SERVER_ENV = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "6",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT60S",
    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "3",
}
RUNNER_ENV = {"PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # serve looks for due runs every 2 s, not 10
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Live:
    """The server and ``musicflow serve`` subprocesses, and what the test reads through the API."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.api = f"http://127.0.0.1:{free_port()}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.api,
            "PREFECT_UI_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            **SERVER_ENV,
            **RUNNER_ENV,
        }
        self.processes: list[subprocess.Popen[Any]] = []  # every process started, killed at the end
        self.services: list[subprocess.Popen[Any]] = []  # those that must not exit while the test runs
        self.started_here: set[str] = set()  # the flow runs this test created
        self.serve_log = root / "serve.log"
        self.server_log = root / "server.log"
        self.http = httpx.Client(base_url=self.api, timeout=30)

    def start(
        self, command: list[str], log: Path, *, service: bool = True, cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as output:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        if service:
            self.services.append(process)
        return process

    def start_server(self) -> None:
        port = self.api.rsplit(":", 1)[1].split("/")[0]
        self.start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port], self.server_log
        )
        self.wait_until(self.healthy, 120, "the Prefect server to answer")

    def healthy(self) -> bool:
        try:
            return self.http.get("/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Kill every process started, their children (flow runs, Dask workers) included."""
        everything: list[psutil.Process] = []
        for process in self.processes:
            try:
                parent = psutil.Process(process.pid)
                everything += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for process in everything:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(everything, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=10)
        for process in self.processes:
            process.wait(timeout=10)
        self.http.close()

    # --- the API -----------------------------------------------------------------------------------

    def request(self, method: str, path: str, **options: Any) -> Any:
        """One API call; retried like Prefect's own client does on a 503 (SQLite busy under load), and
        on a time-out (every call made here is idempotent: a run is created with an idempotency key)."""
        for attempt in range(8):
            try:
                response = self.http.request(method, path, **options)
            except httpx.TimeoutException:
                if attempt == 7:
                    raise
                continue
            if response.status_code != 503:
                break
            time.sleep(0.5 * 2 ** min(attempt, 3))
        response.raise_for_status()
        return response.json() if response.content else None

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)

    def deployments(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in self.post("/deployments/filter", {"limit": 50})}

    def runs(self) -> list[dict[str, Any]]:
        """Every flow run but the scheduled runs still to come, oldest first."""
        flows = {flow["id"]: flow["name"] for flow in self.post("/flows/filter", {"limit": 50})}
        runs = self.post("/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC", "limit": 200})
        for run in runs:
            run["flow"] = flows.get(run["flow_id"], "?")
        return [run for run in runs if run["state_name"] != "Scheduled" or run["id"] in self.started_here]

    def artifacts(self, run_id: str) -> dict[str, Any]:
        found = self.post(
            "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "limit": 50}
        )
        return {artifact["key"]: artifact for artifact in found if artifact["key"]}

    def states(self, run_id: str) -> list[str]:
        return [
            state["name"]
            for state in self.request("GET", "/flow_run_states/", params={"flow_run_id": run_id})
        ]

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every event called ``name`` of the last hour (the API gives 50 a page)."""
        since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
        page = self.post(
            "/events/filter", {"filter": {"event": {"name": [name]}, "occurred": {"since": since}}}
        )
        events = list(page["events"])
        while page.get("next_page"):
            page = self.request("GET", page["next_page"])
            events += page["events"]
        return events

    def pause(self, name: str) -> None:
        """Stop a deployment's schedule; the server deletes its auto-scheduled runs still to come."""
        deployment = self.deployments()[name]
        self.request("POST", f"/deployments/{deployment['id']}/pause_deployment")

    def run_deployment(self, name: str, **parameters: Any) -> str:
        deployment = self.deployments()[name]
        body = {"parameters": parameters, "idempotency_key": uuid.uuid4().hex}
        run_id = str(self.post(f"/deployments/{deployment['id']}/create_flow_run", body)["id"])
        self.started_here.add(run_id)
        return run_id

    # --- waiting and explaining ----------------------------------------------------------------------

    def wait_until(self, condition: Callable[[], Any], seconds: float, what: str) -> Any:
        deadline = time.monotonic() + seconds
        while True:
            for process in self.services:
                if process.poll() is not None:
                    command = " ".join(map(str, process.args[:3]))
                    pytest.fail(
                        f"{command} exited with {process.returncode}, waiting for {what}\n{self.report()}"
                    )
            try:
                found = condition()
            except httpx.HTTPError:
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}\n{self.report()}")
            time.sleep(1)

    def report(self) -> str:
        lines = ["flow runs (flow, name, state, created by, parameters, start, end):"]
        try:
            for run in self.runs():
                created = (run.get("created_by") or {}).get("type")
                params = {
                    key: run["parameters"].get(key)
                    for key in ("store", "dataset")
                    if key in run["parameters"]
                }
                lines.append(
                    f"  {run['flow']:9} {run['name']:24} {run['state_name']:24} {created!s:10} {params} "
                    f"{run['start_time']} {run['end_time']}"
                )
        except Exception as error:  # the report must not hide the failure it explains
            lines.append(f"  (the API did not answer: {error!r})")
        for log in (self.serve_log, self.server_log):
            text = log.read_text(errors="replace") if log.exists() else ""
            lines += [f"--- last lines of {log.name} ---", *text.splitlines()[-60:]]
        return "\n".join(lines)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """The server and the processes a test starts (test_live_deploy.py uses it too), all killed at the end."""
    processes = Live(tmp_path)
    try:
        yield processes
    finally:
        processes.stop()


def table(artifact: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a table artifact as the REST API gives it (its data is a JSON string)."""
    data = artifact["data"]
    return list(json.loads(data) if isinstance(data, str) else data)


def move_in(song: Path, directory: Path) -> None:
    """Add a song to the source the way a copy tool should: complete, then renamed into place."""
    shutil.move(song, directory / song.name)


def started(run: dict[str, Any]) -> bool:
    return run["start_time"] is not None


def test_served_deployments_run_on_schedule_and_on_new_songs(live: Live, tmp_path: Path) -> None:
    songs, more, other_songs = tmp_path / "songs", tmp_path / "more", tmp_path / "other-songs"
    store, other_store = tmp_path / "store", tmp_path / "other-store"
    write_periodic_songs(songs, n_songs=2, seconds=3.0, block_size=TINY_BLOCK)
    write_periodic_songs(other_songs, n_songs=2, seconds=3.0, block_size=TINY_BLOCK)
    third = write_periodic_songs(more, n_songs=3, seconds=3.0, block_size=TINY_BLOCK)[2]

    live.start_server()
    serve = [str(BIN / "musicflow"), "serve", "--source", str(songs), "--store", str(store)]
    serve += ["--ingest-every", str(INGEST_EVERY), "--cron", "* * * * *", "--workers", "1"]
    serve += ["--epochs", "1", "--hidden", "32", "--seq-len", "8"]
    serve += ["--hop", "4", "--batch-size", "8", "--seconds", "1", "--count", "1"]
    live.start(serve, live.serve_log)
    # meanwhile, an ingest into another store, against the same server, must train nothing here
    other_log = tmp_path / "other-ingest.log"
    other = live.start(
        [str(BIN / "musicflow"), "ingest", str(other_songs), "--store", str(other_store), "--workers", "1"],
        other_log,
        service=False,
    )

    def completed(flow: str, **where: Any) -> list[dict[str, Any]]:
        return [
            run
            for run in live.runs()
            if run["flow"] == flow
            and run["state_type"] == "COMPLETED"
            and all((run.get("created_by") or {}).get("type") == value for key, value in where.items())
        ]

    def songs_added(run: dict[str, Any]) -> int:
        rows = table(live.artifacts(run["id"])["ingest-summary"])
        return int(next(row["value"] for row in rows if row["metric"] == "songs ingested"))

    # 1. the first interval ingest takes the 2 songs; their event triggers a training
    live.wait_until(lambda: completed("train", created_by="AUTOMATION"), 180, "the first triggered training")

    # 2. the ingest into the other store has finished
    assert other.wait(timeout=240) == 0, other_log.read_text()

    # 3. a new song in the source: the next interval ingest takes it, and a second training follows
    move_in(third, songs)
    live.wait_until(
        lambda: len(completed("train", created_by="AUTOMATION")) >= 2, 150, "the training after the new song"
    )

    # 4. two ingests at once: one is cancelled; two trainings at once: the second waits its turn
    ingests_at_once = [live.run_deployment("musicflow-ingest") for _ in range(2)]
    trains_at_once = [live.run_deployment("musicflow-train") for _ in range(2)]

    # 5. generate ran on the cron after a model existed; then wait for every started run to end
    live.wait_until(lambda: completed("generate", created_by="SCHEDULE"), 150, "a generate run on the cron")
    # then stop the schedules (on a loaded machine a minutely generate may take most of a minute, so
    # some run is always in progress) and wait for every run that left the schedule to end
    for name in ("musicflow-ingest", "musicflow-generate"):
        live.pause(name)
    live.wait_until(
        lambda: all(run["state_type"] in FINAL for run in live.runs()), 180, "every run to finish"
    )

    runs = live.runs()
    by_id = {run["id"]: run for run in runs}
    failure = f"\n{live.report()}"

    # interval ingests ran; ingests never overlapped
    ingests = [run for run in runs if run["flow"] == "ingest" and run["parameters"]["store"] == str(store)]
    scheduled = [run for run in ingests if (run["created_by"] or {}).get("type") == "SCHEDULE"]
    assert len([run for run in scheduled if run["state_type"] == "COMPLETED"]) >= 3, failure
    spans = sorted(
        (run["start_time"], run["end_time"])
        for run in ingests
        if run["start_time"] and run["end_time"] and run["state_type"] != "CANCELLED"  # those never ran
    )
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, f"two ingests ran at once: {spans}{failure}"
    # (both are cancelled when an interval ingest was running just then)
    cancelled = [by_id[run_id] for run_id in ingests_at_once if by_id[run_id]["state_type"] == "CANCELLED"]
    assert cancelled, failure
    assert all("concurrency limit" in (run["state"]["message"] or "") for run in cancelled), cancelled

    # the ingests that added songs to this store, and their events
    adding = {
        run["id"]: songs_added(run)
        for run in ingests
        if run["state_type"] == "COMPLETED" and songs_added(run)
    }
    assert sorted(adding.values()) == [1, 2], (adding, failure)
    events = live.events(DATASET_UPDATED)
    ours = [event for event in events if event["resource"]["musicflow.store"] == store_key(str(store))]
    theirs = [
        event for event in events if event["resource"]["musicflow.store"] == store_key(str(other_store))
    ]
    assert len(theirs) == 1 and theirs[0]["payload"]["songs_added"] == 2, events

    def ingest_run_of(event: dict[str, Any]) -> str:
        (run,) = [
            r["prefect.resource.id"] for r in event["related"] if r["prefect.resource.role"] == "flow-run"
        ]
        return str(run.removeprefix("prefect.flow-run."))

    assert sorted(ingest_run_of(event) for event in ours) == sorted(adding), (ours, failure)
    dataset_ids = {event["payload"]["dataset_id"] for event in ours}
    assert len(dataset_ids) == 1 and all(
        event["resource"]["musicflow.dataset.id"] in dataset_ids for event in ours
    )

    # train ran exactly once per such event, with its dataset id; never for the other store's event
    actions = [event for event in live.events("prefect.automation.action.executed")]

    def related(event: dict[str, Any], role: str) -> str:
        (found,) = [r["prefect.resource.id"] for r in event["related"] if r["prefect.resource.role"] == role]
        return str(found)

    triggered_by = {
        related(a, "triggering-event"): related(a, "flow-run").removeprefix("prefect.flow-run.")
        for a in actions
    }
    assert sorted(triggered_by) == sorted(f"prefect.event.{event['id']}" for event in ours), (
        actions,
        failure,
    )
    triggered = [
        run
        for run in runs
        if run["flow"] == "train" and (run["created_by"] or {}).get("type") == "AUTOMATION"
    ]
    assert sorted(run["id"] for run in triggered) == sorted(triggered_by.values()), failure
    for run in triggered:
        assert run["state_type"] == "COMPLETED", failure
        assert run["parameters"]["dataset"] in dataset_ids and run["parameters"]["store"] == str(store)
    assert not [
        run for run in runs if run["flow"] == "train" and run["parameters"].get("store") != str(store)
    ]

    # the two trainings started at once: both completed, the second after waiting for the first
    pair = [by_id[run_id] for run_id in trains_at_once]
    assert all(run["state_type"] == "COMPLETED" for run in pair), failure
    assert any("AwaitingConcurrencySlot" in live.states(run["id"]) for run in pair), failure
    first, second = sorted(pair, key=lambda run: run["start_time"])
    assert first["end_time"] <= second["start_time"], (first, second)

    # generate ran on the cron, and its clips are in the store
    generates = [run for run in runs if run["flow"] == "generate" and run["state_type"] == "COMPLETED"]
    for run in generates:
        assert (run["created_by"] or {}).get("type") == "SCHEDULE"
        clips = table(live.artifacts(run["id"])["generated-clips"])
        assert clips, run
        for clip in clips:
            for name in clip["files"].split(", "):
                found = list(store.glob(f"generated/*/{name}"))
                assert found and found[0].stat().st_size > 0, (name, clip)
    metrics = [json.loads(path.read_text()) for path in store.glob("generated/*/metrics.json")]
    assert len(metrics) >= len(generates) >= 1
    # a cron run may fail only while there is no model yet
    first_model = min(run["end_time"] for run in triggered)
    for run in runs:
        if run["flow"] == "generate" and run["state_type"] != "COMPLETED" and started(run):
            assert run["start_time"] < first_model, (run, failure)

    # every completed run has its artifacts
    expected = {
        "ingest": {"ingest-summary"},
        "train": {"train-losses", "train-summary"},
        "generate": {"generated-clips"},
    }
    for run in runs:
        if run["state_type"] == "COMPLETED" and run["flow"] in expected:
            assert expected[run["flow"]] <= set(live.artifacts(run["id"])), (run["flow"], run["name"])

    print(
        f"live loop: {len(ingests)} ingest runs into the store ({len(scheduled)} on the interval, "
        f"{len(adding)} added songs, {sum(run['state_type'] == 'CANCELLED' for run in ingests)} cancelled by "
        f"the concurrency limit), {len(triggered)} triggered trainings, "
        f"{len(generates)} cron generates completed; 1 ingest into another store triggered nothing"
    )
    screenshots(live, tmp_path, [run["name"] for run in triggered])


def screenshots(live: Live, tmp_path: Path, train_runs: list[str]) -> None:
    """The UI shows the three deployments and their runs (skipped without Chromium/Playwright)."""
    sync_playwright = ui_playwright()
    if sync_playwright is None:
        return
    ui = live.api.removesuffix("/api")
    with sync_playwright() as driver:
        browser = chromium_browser(driver)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{ui}/v2/deployments")
            for name in ("musicflow-ingest", "musicflow-train", "musicflow-generate"):
                page.get_by_text(name).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            page.screenshot(
                path=str(tmp_path / "prefect-ui-deployments.png"),
                clip={"x": 0, "y": 0, "width": 1500, "height": 420},
            )
            page.goto(f"{ui}/v2/runs")
            for name in train_runs:  # the triggered trainings are listed
                page.get_by_text(name).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(tmp_path / "prefect-ui-runs.png"), full_page=True)
        finally:
            browser.close()
    keep_screenshots(tmp_path, "prefect-ui-deployments.png", "prefect-ui-runs.png")
