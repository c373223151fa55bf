"""``prefect deploy`` as Prefect users run it, for real: a ``prefect server start`` subprocess, a
``process`` work pool, ``prefect deploy --all`` from ``deployments/prefect.yaml`` (its pull step
clones the repository with ``git_clone``), then ``prefect worker start --run-once`` from a folder
outside the checkout runs a ``musicflow-pipeline`` deployment run that ingests tiny songs, trains
a 1-epoch model and generates a 1 s clip.

The repository cloned is a snapshot of this working tree (tracked and untracked files that git
does not ignore, committed into a temporary git repository, cloned through ``file://``), so the
code under test is the code the worker runs. Every process started is killed at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import test_live_schedules
from conftest import TINY_BLOCK
from helpers import ROOT, chromium_browser, keep_screenshots, ui_playwright, write_periodic_songs
from test_live_schedules import BIN, Live

pytestmark = pytest.mark.slow
live = test_live_schedules.live  # the fixture: a Prefect server and what the test starts, killed at the end

POOL = "musicflow"  # the work pool deployments/prefect.yaml names
DEPLOYMENTS = {"musicflow-ingest", "musicflow-train", "musicflow-generate", "musicflow-pipeline"}


def snapshot_repository(destination: Path) -> str:
    """This working tree as a one-commit git repository; returns its ``file://`` URL."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    identity = ["-c", "user.name=musicflow-test", "-c", "user.email=test@musicflow.invalid"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-q", "-m", "snapshot"]):
        subprocess.run(["git", *command], cwd=destination, check=True, capture_output=True)
    return destination.as_uri()


def prefect(live: Live, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(BIN / "prefect"), *args],
        cwd=cwd,
        env={**live.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def logs(live: Live, run_id: str) -> list[str]:
    found = live.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    return [entry["message"] for entry in found]


def test_prefect_deploy_and_a_process_worker_run_the_pipeline(live: Live, tmp_path: Path) -> None:
    songs, store = tmp_path / "songs", tmp_path / "store"
    write_periodic_songs(songs, n_songs=2, seconds=3.0, block_size=TINY_BLOCK)
    repository = snapshot_repository(tmp_path / "repository")
    live.start_server()

    prefect(live, "work-pool", "create", POOL, "--type", "process", cwd=tmp_path)
    deploy_env = {"MUSICFLOW_REPO": repository, "MUSICFLOW_SOURCE": str(songs), "MUSICFLOW_STORE": str(store)}
    prefect(
        live,
        *("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"),
        cwd=ROOT,
        env=deploy_env,
    )
    deployments = live.deployments()
    assert set(deployments) == DEPLOYMENTS
    for deployment in deployments.values():
        assert deployment["work_pool_name"] == POOL
        assert deployment["pull_steps"] == [
            {"prefect.deployments.steps.git_clone": {"id": "clone-musicflow", "repository": repository}}
        ]
        assert deployment["parameters"]["store"] == str(store)

    tiny = {"transform": "rfft", "block_size": TINY_BLOCK, "workers": 1, "epochs": 1, "hidden": 32}
    tiny |= {"seq_len": 8, "hop": 4, "seconds": 1.0, "count": 1}
    run_id = live.run_deployment("musicflow-pipeline", **tiny)

    # the worker runs from a folder of its own: the flow's code comes from the clone
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    worker_log = tmp_path / "worker.log"
    live.env.pop("PYTHONPATH", None)
    worker = live.start(
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--run-once"],
        worker_log,
        service=False,
        cwd=elsewhere,
    )
    assert worker.wait(timeout=400) == 0, worker_log.read_text()

    runs = live.runs()
    failure = f"\n{live.report()}\n--- worker ---\n{worker_log.read_text()[-4000:]}"
    (pipeline,) = [run for run in runs if run["id"] == run_id]
    assert pipeline["state_type"] == "COMPLETED", failure
    messages = logs(live, run_id)
    assert any("Executing deployment step: git_clone" in line for line in messages), failure
    assert any("All deployment steps completed successfully" in line for line in messages), failure

    # the deployment's run and its three subflows carry readable names (flows/runtime/names.py)
    subflows = {run["flow"]: run for run in runs if run["parent_task_run_id"]}
    assert set(subflows) == {"ingest", "train", "generate"}, failure
    assert all(run["state_type"] == "COMPLETED" for run in subflows.values()), failure
    assert pipeline["name"] == "pipeline · songs → store"
    assert subflows["ingest"]["name"] == "ingest · songs → store"
    dataset_id = subflows["train"]["parameters"]["dataset"]
    assert subflows["train"]["name"] == f"train · {dataset_id}"
    model_id = subflows["generate"]["parameters"]["model"]
    assert subflows["generate"]["name"] == f"generate · {model_id} · 1 clip"

    # what it wrote: the dataset, the model, a generated clip
    assert (store / "datasets" / dataset_id).is_dir()
    assert (store / "models" / model_id / "card.json").is_file()
    (metrics_file,) = store.glob("generated/*/metrics.json")
    report: dict[str, Any] = json.loads(metrics_file.read_text())
    assert report["model_id"] == model_id
    (clip,) = report["clips"]
    for name in clip["files"]:
        assert (metrics_file.parent / name).stat().st_size > 0, name
    ui_pictures(live, tmp_path, {"pipeline": pipeline, **subflows})


def test_two_named_serves_share_one_server(live: Live, tmp_path: Path) -> None:
    """``musicflow serve --name`` twice against one server: six deployments, and each serve runs
    its own deployments' runs into its own store."""
    live.start_server()
    stores = {}
    for name in ("jazz", "folk"):
        songs, stores[name] = tmp_path / f"{name}-songs", tmp_path / f"{name}-store"
        write_periodic_songs(songs, n_songs=1, seconds=2.0, block_size=TINY_BLOCK)
        serve = [str(BIN / "musicflow"), "serve", "--name", name, "--source", str(songs)]
        serve += ["--store", str(stores[name]), "--transform", "rfft", "--block-size", str(TINY_BLOCK)]
        live.start([*serve, "--workers", "1"], tmp_path / f"serve-{name}.log")
    expected = {f"{name}-{flow}" for name in stores for flow in ("ingest", "train", "generate")}
    live.wait_until(lambda: set(live.deployments()) == expected, 180, "the two serves' six deployments")
    deployments = live.deployments()
    for name, store in stores.items():
        assert deployments[f"{name}-ingest"]["parameters"]["store"] == str(store)

    runs = {name: live.run_deployment(f"{name}-ingest") for name in stores}

    def finished() -> bool:
        states = {run["id"]: run["state_type"] for run in live.runs()}
        return all(
            states.get(run_id) in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} for run_id in runs.values()
        )

    live.wait_until(finished, 240, "both ingests to finish")
    by_id = {run["id"]: run for run in live.runs()}
    for name, run_id in runs.items():
        run = by_id[run_id]
        assert run["state_type"] == "COMPLETED", live.report()
        assert run["name"] == f"ingest · {name}-songs → {name}-store"
        assert len(list(stores[name].glob("datasets/*/config.json"))) == 1, name


def ui_pictures(live: Live, tmp_path: Path, runs: dict[str, dict[str, Any]]) -> None:
    """In headless Chromium, the Prefect UI lists the named runs and shows the loss curve and the
    spectrogram inside their artifacts (skipped without Chromium/Playwright). Set
    MUSICFLOW_UI_SCREENSHOTS=DIR to keep the screenshots."""
    sync_playwright = ui_playwright()
    if sync_playwright is None:
        return
    ui = live.api.removesuffix("/api")
    artifacts = {
        "loss curve": live.artifacts(runs["train"]["id"])["train-summary"]["id"],
        "clip-01 spectrogram": live.artifacts(runs["generate"]["id"])["generated-spectrograms"]["id"],
    }
    shown: dict[str, int] = {}
    with sync_playwright() as driver:
        browser = chromium_browser(driver)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{ui}/v2/runs")
            for run in runs.values():
                page.get_by_text(run["name"]).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(tmp_path / "prefect-ui-named-runs.png"), full_page=True)
            for alt, artifact_id in artifacts.items():
                page.goto(f"{ui}/v2/artifacts/artifact/{artifact_id}")
                # the UI re-renders the artifact while it loads, so the image may leave the DOM
                # between two queries: one null-safe predicate waits for a decoded image
                decoded = page.wait_for_function(
                    """alt => {
                        const img = document.querySelector(`img[alt='${alt}']`);
                        return img && img.complete && img.naturalWidth > 0
                            ? [img.naturalWidth, img.getAttribute("src").slice(0, 22)] : null;
                    }""",
                    arg=alt,
                    timeout=60_000,
                )
                width, src = decoded.json_value()
                shown[alt] = int(width)
                assert src == "data:image/png;base64,", src
            page.screenshot(path=str(tmp_path / "prefect-ui-spectrogram.png"), full_page=True)
        finally:
            browser.close()
    assert all(width > 100 for width in shown.values()), shown  # decoded, not broken images
    keep_screenshots(tmp_path, "prefect-ui-named-runs.png", "prefect-ui-spectrogram.png")
