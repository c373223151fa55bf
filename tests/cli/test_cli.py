"""The ``musicflow`` command as a user runs it: a subprocess, its exit code and its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from distributed import LocalCluster
from helpers import assert_store_consistent, copy_songs, musicflow, start_musicflow

from musicflow.cli.options import ENVIRONMENT_VARIABLES
from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import dataset_dir
from tasks.store.store import open_store


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("musicflow: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_transform_exits_2_naming_it(tmp_path: Path) -> None:
    result = musicflow("ingest", str(tmp_path), "--store", str(tmp_path / "s"), "--transform", "wavelet")
    assert_one_line_error(result, 2, "--transform", "wavelet")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--format", "hdf5"], "hdf5"),
        (["--workers", "0"], "--workers"),
        (["--dask-address", "nowhere"], "nowhere"),
        (["--dask-scheduler-file", "/nowhere/scheduler.json"], "/nowhere/scheduler.json"),
        (["--dask-security", '{"tls_cert": "c.pem"}'], "'tls_cert'"),
        (["--dask-security", '{"tls_client_key": "/nowhere/key.pem"}'], "/nowhere/key.pem"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, demo_songs: list[Path], args: list[str], fragment: str) -> None:
    result = musicflow("ingest", str(demo_songs[0].parent), "--store", str(tmp_path / "s"), *args)
    assert_one_line_error(result, 2, fragment)


def test_unwritable_store_exits_2(demo_songs: list[Path]) -> None:
    result = musicflow("ingest", str(demo_songs[0].parent), "--store", "/proc/musicflow-store")
    assert_one_line_error(result, 2, "/proc/musicflow-store")


def test_unknown_store_protocol_exits_2(demo_songs: list[Path]) -> None:
    result = musicflow("ingest", str(demo_songs[0].parent), "--store", "nosuchproto://bucket/x")
    assert_one_line_error(result, 2, "nosuchproto://bucket/x")


def test_missing_source_exits_2(tmp_path: Path) -> None:
    result = musicflow("ingest", str(tmp_path / "nope"), "--store", str(tmp_path / "s"))
    assert_one_line_error(result, 2, "source not found", "nope")


def test_missing_ffmpeg_says_how_to_install(tmp_path: Path, demo_songs: list[Path]) -> None:
    result = musicflow(
        "ingest",
        str(demo_songs[0].parent),
        "--store",
        str(tmp_path / "s"),
        env={"PATH": str(tmp_path)},  # an empty folder: no ffmpeg anywhere
    )
    assert_one_line_error(result, 1, "ffmpeg not found", "apt-get install ffmpeg")


def test_status_of_missing_store_exits_2(tmp_path: Path) -> None:
    assert_one_line_error(musicflow("status", "--store", str(tmp_path / "none")), 2, "none")


@pytest.mark.usefixtures("prefect_server")
def test_ingest_then_status_json(tmp_path: Path, demo_songs: list[Path]) -> None:
    source, store = tmp_path / "songs", str(tmp_path / "store")
    copy_songs(demo_songs[:2], source)
    (source / "broken.mp3").write_text("not audio")

    result = musicflow("ingest", str(source), "--store", store, "--workers", "1", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["songs_ok"], summary["songs_failed"]) == (2, 1)
    assert "ingest" in result.stderr  # the progress bar

    status = musicflow("status", "--store", store, "--json")
    assert status.returncode == 0, status.stderr
    datasets = json.loads(status.stdout)["datasets"]
    assert len(datasets) == 1
    dataset = datasets[0]
    assert set(dataset) >= {
        "dataset_id",
        "songs_ok",
        "songs_failed",
        "seconds",
        "n_blocks",
        "n_features",
        "format",
    }
    # The default features: 128 log-mel bands of frames every 256 samples at 22.05 kHz.
    assert (dataset["songs_ok"], dataset["songs_failed"], dataset["n_features"]) == (2, 1, 128)
    assert (dataset["transform"], dataset["sample_rate"], dataset["block_size"]) == ("stft", 22050, 256)
    assert dataset["format"] == "zarr"
    assert dataset["seconds"] == pytest.approx(summary["audio_seconds"], abs=1e-3)
    assert dataset["n_blocks"] == sum(
        -(-round(row.seconds * 22050) // 256) for row in _ok_rows(store, dataset)
    )

    table = musicflow("status", "--store", store)
    assert table.returncode == 0 and dataset["dataset_id"][:8] in table.stdout


def _ok_rows(store: str, dataset: dict) -> list:
    return [row for row in read_catalog(open_store(store), dataset_dir(dataset["dataset_id"])) if row.ok]


def test_quiet_console_drops_only_prefects_queue_progress(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Prefect's events worker warns "Still processing items" when a command exits while it still
    sends its events; without -v that line no longer lands after the command's own last line."""
    import logging

    from musicflow.cli import common

    for name in ("EventsWorker", "APILogWorker"):
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    monkeypatch.delenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", raising=False)
    monkeypatch.delenv("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", raising=False)
    common.quiet_console(verbose=False)
    full = "Service 'EventsWorker' queue is full (9 items), dropping item"
    with caplog.at_level(logging.WARNING):
        logging.getLogger("EventsWorker").warning("Still processing items: 5 items remaining...")
        logging.getLogger("APILogWorker").warning("Still processing items: 2 items remaining...")
        logging.getLogger("EventsWorker").warning(full)
    assert [record.getMessage() for record in caplog.records] == [full]


@pytest.mark.usefixtures("prefect_server")
def test_source_without_audio_exits_2(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no songs here")
    result = musicflow("ingest", str(tmp_path / "docs"), "--store", str(tmp_path / "store"), "--workers", "1")
    assert result.returncode == 2
    assert "no audio files found" in result.stderr.strip().splitlines()[-1]


@pytest.mark.usefixtures("prefect_server")
def test_killed_run_resumes_with_every_song_once(tmp_path: Path, demo_songs: list[Path]) -> None:
    from tasks.audio.synth import write_demo_songs

    source, store = tmp_path / "songs", str(tmp_path / "store")
    songs = write_demo_songs(source, n_songs=14, seconds=(2.0, 4.0), seed=500)
    process = start_musicflow(
        *("ingest", str(source), "--store", store, "--workers", "1", "--batch-mb", "0.001"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    catalog = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        catalogs = list(Path(store).glob("datasets/*/catalog/*.parquet"))
        if catalogs:
            catalog = catalogs[0]
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the flow process and its Dask workers
    process.wait()
    assert catalog is not None, "the run ended before it committed anything"
    dataset_id = catalog.parent.parent.name
    committed = read_catalog(open_store(store), dataset_dir(dataset_id))
    assert 0 < len(committed) < len(songs), "the kill did not land mid-run"

    result = musicflow("ingest", str(source), "--store", store, "--workers", "2", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["songs_skipped"] == len(committed)
    rows = read_catalog(open_store(store), dataset_dir(dataset_id))
    assert sorted(Path(row.source).name for row in rows) == sorted(song.name for song in songs)
    assert all(row.ok for row in rows)
    assert_store_consistent(store, dataset_id)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--n-fft", "1001"], "invalid n_fft 1001"),
        (["--hop-length", "0"], "invalid hop_length 0"),
        (["--n-fft", "512", "--hop-length", "400"], "invalid hop_length 400"),
        (["--n-mels", "600"], "invalid n_mels 600"),
    ],
)
def test_ingest_with_a_bad_stft_config_is_one_line_naming_the_value_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    from helpers import run_cli

    songs = tmp_path / "songs"
    songs.mkdir()
    code, out, err = run_cli(capsys, "ingest", str(songs), "--store", str(tmp_path / "store"), *args)
    assert code == 2, (out, err)
    assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("command", ["train", "pipeline", "serve"])
@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "1e999", "thirty"])
def test_a_bad_training_budget_is_one_line_naming_the_value_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, value: str
) -> None:
    from helpers import run_cli

    songs = tmp_path / "songs"
    songs.mkdir()
    before = {"train": [], "pipeline": [str(songs)], "serve": ["--source", str(songs)]}[command]
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, command, *before, "--store", str(store), f"--max-minutes={value}")
    assert code == 2, (out, err)
    (line,) = err.strip().splitlines()
    assert line.startswith("musicflow: error: ") and "--max-minutes" in line and repr(value) in line, line
    if value != "thirty":  # typer's own message for what is not a number
        assert line.endswith("must be a positive, finite number of minutes"), line
    assert not store.exists()


# ---------------------------------------------------------------- MUSICFLOW_* variables, serve --config


def test_environment_variables_reach_the_options(tmp_path: Path) -> None:
    result = musicflow("status", env={"MUSICFLOW_STORE": str(tmp_path / "from-env")})
    assert_one_line_error(result, 2, "from-env")
    result = musicflow(
        "ingest", str(tmp_path), "--store", str(tmp_path / "s"), env={"MUSICFLOW_DASK_ADDRESS": "env-nowhere"}
    )
    assert_one_line_error(result, 2, "env-nowhere")
    result = musicflow(
        "ingest", str(tmp_path), "--store", str(tmp_path / "s"), "--dask-address", "flag-nowhere",
        env={"MUSICFLOW_DASK_ADDRESS": "env-nowhere"},
    )  # fmt: skip
    assert_one_line_error(result, 2, "flag-nowhere")


def test_every_variable_is_documented() -> None:
    usage = (Path(__file__).resolve().parents[2] / "docs" / "usage.md").read_text()
    assert [name for name in ENVIRONMENT_VARIABLES if name not in usage] == []


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "serve.toml"
    path.write_text(f'source = "{tmp_path}"\nstore = "{tmp_path / "store"}"\n{text}')
    return str(path)


def test_serve_config_file_and_its_precedence(tmp_path: Path) -> None:
    config = _config(tmp_path, 'ingest-every = -5\ndask_address = "file-nowhere"\n')
    # The file's values are used (source and store come from it too)...
    assert_one_line_error(musicflow("serve", "--config", config), 2, "file-nowhere")
    # ...a MUSICFLOW_* variable wins over the file, and a flag over both.
    env = {"MUSICFLOW_DASK_ADDRESS": "env-nowhere"}
    assert_one_line_error(musicflow("serve", "--config", config, env=env), 2, "env-nowhere")
    flag = musicflow("serve", "--config", config, "--dask-address", "flag-nowhere", env=env)
    assert_one_line_error(flag, 2, "flag-nowhere")
    config = _config(tmp_path, "ingest-every = -5\n")
    assert_one_line_error(musicflow("serve", "--config", config), 2, "-5")
    assert_one_line_error(musicflow("serve", "--config", config, "--ingest-every", "-7"), 2, "-7")


def test_serve_config_file_errors(tmp_path: Path) -> None:
    unknown = _config(tmp_path, 'colour = "red"\n')
    assert_one_line_error(musicflow("serve", "--config", unknown), 2, "--config", "unknown key 'colour'")
    broken = tmp_path / "broken.toml"
    broken.write_text("ingest-every = \n")
    assert_one_line_error(musicflow("serve", "--config", str(broken)), 2, "not TOML")
    assert_one_line_error(musicflow("serve", "--config", str(tmp_path / "none.toml")), 2, "none.toml")


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_ingest_prints_the_dashboard_link(tmp_path: Path, demo_songs: list[Path]) -> None:
    copy_songs(demo_songs[:1], tmp_path / "songs")
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:  # fmt: skip
        result = musicflow(
            "ingest", str(tmp_path / "songs"), "--store", str(tmp_path / "store"),
            "--dask-address", cluster.scheduler_address,
        )  # fmt: skip
        link = cluster.dashboard_link
    assert result.returncode == 0, result.stderr
    assert f"Dask dashboard: {link}" in result.stderr.splitlines()
