"""The ``generate`` and ``pipeline`` flows in the Prefect test harness; ``musicflow generate`` and
``status`` as a user runs them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from conftest import TINY_BLOCK
from helpers import artifact_table, flow_run_artifacts, musicflow, run_cli, write_periodic_songs

from musicflow.cli.reports import model_line
from tasks.generation.runs import METRICS_FILE
from tasks.report import REPORT_PAGE

SR = 44100


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("musicflow: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def copy_store(source: str, destination: Path) -> str:
    shutil.copytree(source, destination)
    return str(destination)


def _child_flow_runs(flow_run_id: Any) -> dict[str, Any]:
    """The flow runs whose parent task run belongs to ``flow_run_id``, by flow name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def fetch() -> dict[str, Any]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
                )
            )
            return {(await client.read_flow(run.flow_id)).name: run for run in runs}

    return asyncio.run(fetch())


def _completed_event(flow_run_id: Any, *, timeout: float = 20.0) -> dict[str, Any]:
    """The ``prefect.flow-run.Completed`` event the server received for ``flow_run_id``."""
    from prefect.client.orchestration import get_client

    query = {
        "filter": {
            "event": {"name": ["prefect.flow-run.Completed"]},
            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
        }
    }

    async def fetch() -> list[dict[str, Any]]:
        async with get_client() as client:
            response = await client.request("POST", "/events/filter", json=query)
            return response.json()["events"]

    deadline = time.monotonic() + timeout
    while True:
        events = asyncio.run(fetch())
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert len(events) == 1, events
    return events[0]


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(("fixture", "rate"), [("tiny_model", SR), ("stft_model", 22050)])
def test_generate_flow_writes_the_run_and_publishes_artifacts(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, rate: int
) -> None:
    from flows.generate import generate

    tiny_model = request.getfixturevalue(fixture)
    store = copy_store(tiny_model[0], tmp_path / "store")
    state = generate(store=store, seconds=1.0, count=2, return_state=True)
    report = state.result()

    assert state.is_completed()
    assert report["model_id"] == tiny_model[1] and report["count"] == 2
    run = Path(store, "generated", report["run_id"])
    assert json.loads((run / METRICS_FILE).read_text()) == json.loads(json.dumps(report))
    for clip in ("clip-01", "clip-02"):
        for suffix in ("wav", "mp3", "png"):
            assert (run / f"{clip}.{suffix}").stat().st_size > 0
    assert abs((run / "clip-01.wav").stat().st_size - 44 - 2 * rate) <= 2 * 1024

    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    assert set(artifacts) >= {"generated-clips", "generated-spectrograms"}
    rows = artifact_table(artifacts["generated-clips"])
    assert [row["clip"] for row in rows] == ["clip-01", "clip-02"]
    for row, clip in zip(rows, report["clips"], strict=True):
        assert row["files"] == ", ".join(clip["files"])
        assert row["rms_dbfs"] == clip["metrics"]["rms_dbfs"]
        assert row["collapsed"] == (clip["metrics"]["collapsed"] or "no")
        assert row["seconds"] == pytest.approx(1.0, abs=0.03)
        assert row["quality"] == clip["quality"]["quality"] and row["lufs"] == clip["quality"]["lufs"]
        assert row["longest_copy_s"] == clip["metrics"]["longest_copy_seconds"]
    assert report["location"] in artifacts["generated-clips"].description
    assert f"quality {report['quality']['quality']}" in artifacts["generated-clips"].description
    # 2 s of clips: too little for the continuity and tonality axes, which are reported as not
    # scored; the run goes on.
    axes = report["quality"]["axes"]
    assert list(axes) == ["frames", "continuity", "tonality"]
    assert isinstance(axes["frames"]["score"], float)
    assert (
        axes["continuity"]["score"] is None
        and "needs at least 18 windows" in axes["continuity"]["not_scored"]
    )
    assert axes["tonality"]["score"] is None and "needs at least 16 windows" in axes["tonality"]["not_scored"]
    for row in rows:
        assert {axis: row[axis] for axis in axes} == {axis: scored["score"] for axis, scored in axes.items()}
    assert "tonality not scored (needs at least" in artifacts["generated-clips"].description
    markdown = artifacts["generated-spectrograms"].data
    assert tiny_model[1] in markdown
    assert f"{report['location']}/clip-01.png" in markdown and f"{report['location']}/clip-02.png" in markdown
    assert f"`musicflow report --store {store}`" in markdown  # the whole store's page
    # where to listen: the run's own page, beside its clips, listing both of them
    (link,) = re.findall(r"\[this run's page\]\((file://[^)]+)\)", markdown)
    page = Path(unquote(urlsplit(link).path))
    assert page.parent == run.resolve() and page.is_file()
    html = page.read_text()
    for clip in ("clip-01", "clip-02"):
        assert f"<source src='{clip}.mp3' type='audio/mpeg'>" in html and (run / f"{clip}.mp3").is_file()
    for clip in ("clip-01", "clip-02"):  # the spectrograms themselves, embedded for the browser
        embedded = base64.b64encode((run / f"{clip}.png").read_bytes()).decode()
        assert f"![{clip} spectrogram](data:image/png;base64,{embedded})" in markdown


@pytest.mark.usefixtures("prefect_server")
def test_generate_flow_fails_on_a_store_without_a_model(
    tiny_dataset: tuple[str, str], tmp_path: Path
) -> None:
    from flows.generate import generate

    store = copy_store(tiny_dataset[0], tmp_path / "store")
    state = generate(store=store, seconds=1.0, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="no trained model"):
        state.result()
    assert not Path(store, "generated").exists()


@pytest.mark.usefixtures("prefect_server")
def test_generate_flow_fails_fast_on_a_tampered_model(tiny_model: tuple[str, str], tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.generate import generate
    from tasks.model.repository import ModelMismatchError

    store, model_id = copy_store(tiny_model[0], tmp_path / "store"), tiny_model[1]
    weights = Path(store, "models", model_id, "model.keras")
    weights.write_bytes(weights.read_bytes()[:-100] + b"\0" * 100)
    started = time.monotonic()
    state = generate(store=store, seconds=1.0, return_state=True)
    assert state.is_failed()
    with pytest.raises(ModelMismatchError, match=model_id):
        state.result()
    assert time.monotonic() - started < 30  # a verdict is not retried with backoff

    async def task_runs() -> list[Any]:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )

    (run,) = [run for run in asyncio.run(task_runs()) if run.name.startswith("generate-clips")]
    assert run.run_count == 1 and run.state.is_failed()
    assert not Path(store, "generated").exists()


@pytest.mark.usefixtures("prefect_server")
def test_pipeline_runs_ingest_train_generate_as_subflows(tmp_path: Path) -> None:
    from flows.pipeline import pipeline

    source, store = tmp_path / "songs", str(tmp_path / "store")
    write_periodic_songs(source, n_songs=4, seconds=1.0, block_size=TINY_BLOCK)
    state = pipeline(
        source=str(source),
        store=store,
        format="parquet",
        block_size=TINY_BLOCK,
        workers=1,
        epochs=1,
        hidden=16,
        seq_len=4,
        hop=2,
        seconds=1.0,
        return_state=True,
    )
    result = state.result()

    assert state.is_completed()
    assert (result["ingest"]["songs_ok"], result["ingest"]["songs_failed"]) == (4, 0)
    assert result["ingest"]["dataset_id"].startswith("stft-n1024-h256-m128-sr22050-")  # the default features
    assert list(Path(store, "datasets", result["ingest"]["dataset_id"], "shards").glob("*.parquet"))
    card = result["train"]
    assert card["dataset_id"] == result["ingest"]["dataset_id"]
    assert card["epochs"] == 1 and card["config"]["hidden"] == 16 and card["config"]["seq_len"] == 4
    generated = result["generate"]
    assert generated["model_id"] == card["model_id"]
    assert generated["seconds"] == pytest.approx(1.0, abs=256 / 22050)  # whole frames (the stft default)
    assert Path(store, "generated", generated["run_id"], METRICS_FILE).is_file()
    assert Path(store, "models", card["model_id"], "model.keras").is_file()

    children = _child_flow_runs(state.state_details.flow_run_id)
    assert set(children) == {"ingest", "train", "generate"}
    assert all(run.state.is_completed() for run in children.values())
    order = sorted(children, key=lambda name: children[name].start_time)
    assert order == ["ingest", "train", "generate"]
    assert children["generate"].parameters["model"] == card["model_id"]
    assert "generated-clips" in flow_run_artifacts(children["generate"].id)

    # The pipeline trains itself: its ingest announces nothing, so the train deployment's trigger
    # (musicflow.dataset.updated) cannot train the same songs a second time.
    _completed_event(children["ingest"].id)  # the server has the ingest run's events by now
    assert not _events_of("musicflow.dataset.updated", children["ingest"].id)
    assert result["ingest"]["announced"] is False


def _events_of(name: str, flow_run_id: Any) -> list[dict[str, Any]]:
    """The events called ``name`` that the flow run ``flow_run_id`` emitted."""
    from prefect.client.orchestration import get_client

    query = {"filter": {"event": {"name": [name]}, "related": {"id": [f"prefect.flow-run.{flow_run_id}"]}}}

    async def fetch() -> list[dict[str, Any]]:
        async with get_client() as client:
            response = await client.request("POST", "/events/filter", json=query)
            return list(response.json()["events"])

    return asyncio.run(fetch())


@pytest.mark.usefixtures("prefect_server")
def test_cli_pipeline_passes_its_options_to_each_flow(tmp_path: Path) -> None:
    source, store = tmp_path / "songs", str(tmp_path / "store")
    write_periodic_songs(source, n_songs=3, seconds=1.0, block_size=TINY_BLOCK)
    options = ["--transform", "fft", "--block-size", str(TINY_BLOCK), "--epochs", "2", "--hidden", "16"]
    options += ["--seq-len", "4", "--hop", "2", "--seconds", "0.5", "--workers", "1"]
    options += ["--max-minutes", "0.0001"]  # 6 ms: the first epoch crosses it, so 1 epoch of 2

    result = musicflow("pipeline", str(source), "--store", store, *options, "--json")

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)  # --json: stdout is the three stages' results alone
    status = json.loads(musicflow("status", "--store", store, "--json").stdout)
    (dataset,) = status["datasets"]
    assert dataset["dataset_id"].startswith(f"fft-b{TINY_BLOCK}-") and dataset["songs_ok"] == 3
    assert dataset["n_features"] == 2 * TINY_BLOCK
    (model,) = status["models"]
    assert model["dataset_id"] == dataset["dataset_id"] and model["epochs"] == 1
    assert model["stop_reason"] == "budget"
    assert printed["ingest"]["dataset_id"] == dataset["dataset_id"] and printed["ingest"]["songs_ok"] == 3
    assert printed["train"]["model_id"] == model["model_id"]
    assert "1 epochs (budget of 0.0001 min; kept epoch 1)" in model_line(printed["train"])  # as printed
    card = json.loads(Path(store, "models", model["model_id"], "card.json").read_text())
    assert (card["config"]["hidden"], card["config"]["seq_len"], card["config"]["hop"]) == (16, 4, 2)
    (generated,) = status["generated"]
    assert generated["model_id"] == model["model_id"] == printed["generate"]["model_id"]
    assert generated["seconds"] == pytest.approx(0.5, abs=TINY_BLOCK / 44100)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("fixture", ["stft_model"])  # the default; the rfft model: the flow tests
def test_cli_generate_then_status_lists_the_run(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str
) -> None:
    tiny_model = request.getfixturevalue(fixture)
    store = copy_store(tiny_model[0], tmp_path / "store")

    result = musicflow("generate", "--store", store, "--seconds", "1", "--phase", "pghi")
    assert result.returncode == 0, result.stderr
    assert tiny_model[1] in result.stdout and "clip-01" in result.stdout

    status = musicflow("status", "--store", store, "--json")
    assert status.returncode == 0, status.stderr
    (run,) = json.loads(status.stdout)["generated"]
    assert run["model_id"] == tiny_model[1]
    assert run["files"] == ["clip-01.wav", "clip-01.mp3", "clip-01.png"]
    assert run["seconds"] == pytest.approx(1.0, abs=1024 / SR)
    assert run["count"] == 1
    assert set(run["metrics"]) == {"clip-01"}
    assert run["metrics"]["clip-01"]["seconds"] == pytest.approx(run["seconds"])
    assert run["collapsed"] == [run["metrics"]["clip-01"]["collapsed"]]
    assert isinstance(run["quality"], float) and "quality" in result.stdout
    # 1 s (40 frames) is too short for every axis (frames needs 64): reported, not a failure; the
    # single `quality` number is still given as before.
    assert run["axes"] == {"frames": None, "continuity": None, "tonality": None}
    assert "tonality: not scored (needs at least 16 windows" in result.stdout
    folder = Path(store, "generated", run["run_id"])
    # the clips, metrics.json and the run's listening page (the generate flow writes it)
    assert sorted(os.listdir(folder)) == sorted([*run["files"], METRICS_FILE, REPORT_PAGE])
    assert json.loads((folder / METRICS_FILE).read_text())["phase"] == "pghi"  # the option reached the run


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--seconds", "0"], "--seconds 0.0"),
        (["--seconds", "1e9"], "1000000000.0"),
        (["--count", "0"], "--count 0"),
        (["--temperature", "-1"], "-1.0"),
        (["--seed", "chaos"], "chaos"),
        (["--sampling", "chaos"], "chaos"),
        (["--phase", "chaos"], "chaos"),
    ],
)
def test_cli_generate_argument_errors_exit_2(
    tiny_model: tuple[str, str], capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    code, out, err = run_cli(capsys, "generate", "--store", tiny_model[0], *args)
    assert code == 2, err
    assert_one_line_error(err, fragment)
    assert out == ""
    assert not Path(tiny_model[0], "generated").exists()


def test_cli_generate_without_a_model_exits_with_one_line(
    tiny_dataset: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = copy_store(tiny_dataset[0], tmp_path / "store")
    code, _, err = run_cli(capsys, "generate", "--store", store, "--seconds", "1")
    assert code != 0
    assert_one_line_error(err, "no trained model", store)


def test_cli_generate_on_a_missing_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "generate", "--store", str(tmp_path / "nowhere"), "--seconds", "1")
    assert code == 2
    assert_one_line_error(err, "nowhere")


def test_cli_generate_with_a_bad_seed_file_exits_2(
    tiny_model: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        capsys, "generate", "--store", tiny_model[0], "--seed-audio", str(tmp_path / "missing.wav")
    )
    assert code == 2
    assert_one_line_error(err, "missing.wav")
