"""The ``ingest`` flow end to end: Dask LocalCluster inside the Prefect test harness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import assert_store_consistent, copy_songs, flow_run_artifacts, write_bad_inputs

import flows.ingest
from flows.ingest import ingest
from tasks.dataset.catalog import CATALOG_DIR, read_catalog
from tasks.dataset.repository import dataset_dir
from tasks.dataset.shards import read_blocks
from tasks.store.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_ingest_records_bad_files_and_publishes_artifacts(
    tmp_path: Path, demo_songs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows.ingest, "TABLE_ROWS", 3)  # of the 5 bad files, the table shows 3
    source = tmp_path / "songs"
    good = copy_songs(demo_songs[:3], source / "nested")
    expected_errors = write_bad_inputs(source / "bad", demo_songs[-1])
    store = str(tmp_path / "store")

    state = ingest(source=str(source), store=store, workers=2, return_state=True)
    summary = state.result()

    assert state.is_completed()
    assert summary["songs_ok"] == len(good)
    assert summary["songs_failed"] == len(expected_errors)
    errors = {Path(failure["source"]).name: failure["error"] for failure in summary["failures"]}
    assert set(errors) == set(expected_errors)
    for name, fragment in expected_errors.items():
        assert fragment in errors[name], (name, errors[name])
    assert_store_consistent(store, summary["dataset_id"])
    artifacts = flow_run_artifacts(str(state.state_details.flow_run_id))
    assert {"ingest-summary", "ingest-failures", "ingest-progress"} <= set(artifacts)
    assert artifacts["ingest-progress"].data == pytest.approx(100.0)
    failures = artifacts["ingest-failures"]
    rows = json.loads(failures.data) if isinstance(failures.data, str) else failures.data
    assert [row["source"] for row in rows] == [row["source"] for row in summary["failures"][:3]]
    assert "The first 3 of 5: 2 more in `musicflow catalog --store" in failures.description
    assert f"--dataset {summary['dataset_id']} --status failed`" in failures.description


def test_second_run_decodes_nothing_and_new_songs_are_added(tmp_path: Path, demo_songs: list[Path]) -> None:
    source, store = tmp_path / "songs", str(tmp_path / "store")
    copy_songs(demo_songs[:3], source)
    first = ingest(source=str(source), store=store, workers=1)
    catalog_path = Path(store) / dataset_dir(first["dataset_id"]) / CATALOG_DIR
    catalog_files = {path.name: path.read_bytes() for path in catalog_path.iterdir()}

    again = ingest(source=str(source), store=store, workers=1)

    assert again["songs_ok"] == again["songs_failed"] == 0
    assert again["songs_skipped"] == 3
    assert again["shards"] == []
    assert {path.name: path.read_bytes() for path in catalog_path.iterdir()} == catalog_files

    copy_songs(demo_songs[3:5], source)
    third = ingest(source=str(source), store=store, workers=1)
    assert third["songs_ok"] == 2 and third["songs_skipped"] == 3
    rows = read_catalog(open_store(store), dataset_dir(first["dataset_id"]))
    assert sorted(Path(row.source).name for row in third_rows(rows, third)) == sorted(
        song.name for song in demo_songs[3:5]
    )
    assert_store_consistent(store, first["dataset_id"])


def third_rows(rows: list, summary: dict) -> list:
    return [row for row in rows if row.shard in summary["shards"]]


@pytest.mark.parametrize("shard_format", ["zarr", "parquet"])
def test_round_trip_through_s3(
    s3_bucket: str, tmp_path: Path, demo_songs: list[Path], shard_format: str
) -> None:
    source = tmp_path / "songs"
    copy_songs(demo_songs[:2], source)
    local_store = str(tmp_path / "local")
    s3_store = f"{s3_bucket}/musicflow"

    remote = ingest(source=str(source), store=s3_store, format=shard_format, workers=1)
    local = ingest(source=str(source), store=local_store, format="zarr", workers=1)

    assert remote["songs_ok"] == 2 and remote["dataset_id"] == local["dataset_id"]
    assert all(shard.endswith(f".{shard_format}") for shard in remote["shards"])
    assert_store_consistent(s3_store, remote["dataset_id"])
    directory = dataset_dir(remote["dataset_id"])
    remote_rows = {row.song_id: row for row in read_catalog(open_store(s3_store), directory)}
    for row in read_catalog(open_store(local_store), directory):
        twin = remote_rows[row.song_id]
        ours = read_blocks(
            open_store(local_store), directory, row.shard, offset=row.offset, n_blocks=row.n_blocks
        )
        theirs = read_blocks(
            open_store(s3_store), directory, twin.shard, offset=twin.offset, n_blocks=twin.n_blocks
        )
        assert (ours == theirs).all()


def test_unknown_transform_fails_before_any_work(tmp_path: Path, demo_songs: list[Path]) -> None:
    from tasks.errors import ConfigError

    copy_songs(demo_songs[:1], tmp_path / "songs")
    with pytest.raises(ConfigError, match="'wavelet'"):
        ingest(source=str(tmp_path / "songs"), store=str(tmp_path / "store"), transform="wavelet", workers=1)
    assert not (tmp_path / "store").exists()


def test_a_bad_direct_io_switch_fails_the_run_before_any_work(
    tmp_path: Path, demo_songs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment's run gets no CLI check: the flow refuses the workers' MUSICFLOW_DIRECT_IO itself."""
    from tasks.errors import ConfigError

    copy_songs(demo_songs[:1], tmp_path / "songs")
    monkeypatch.setenv("MUSICFLOW_DIRECT_IO", "sometimes")
    with pytest.raises(ConfigError, match="MUSICFLOW_DIRECT_IO 'sometimes'"):
        ingest(source=str(tmp_path / "songs"), store=str(tmp_path / "store"), workers=1)
    assert not (tmp_path / "store" / "datasets").exists()


def test_parquet_and_fft_transform_make_a_separate_dataset(tmp_path: Path, demo_songs: list[Path]) -> None:
    source, store = tmp_path / "songs", str(tmp_path / "store")
    copy_songs(demo_songs[:1], source)
    rfft = ingest(source=str(source), store=store, workers=1)
    fft = ingest(source=str(source), store=store, transform="fft", format="parquet", workers=1)
    assert rfft["dataset_id"] != fft["dataset_id"]
    assert fft["songs_ok"] == 1
    rows = read_catalog(open_store(store), dataset_dir(fft["dataset_id"]))
    blocks = read_blocks(
        open_store(store), dataset_dir(fft["dataset_id"]), rows[0].shard, offset=0, n_blocks=1
    )
    assert blocks.shape == (1, 22050)
    shutil.rmtree(source)
