"""Open data: what musicflow writes, read by other tools (pandas, pyarrow, xarray, DuckDB) and by
``musicflow.open_dataset``, with the same numbers; ``musicflow catalog`` prints and exports the
catalog as musicflow reads it (docs/data-format.md)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, ingest_direct, run_cli, write_periodic_music

import musicflow as mf
import tasks.dataset.shards as shards
from tasks.config import FeatureConfig, IngestConfig
from tasks.dataset.catalog import STATUS_FAILED, append_rows
from tasks.dataset.repository import dataset_dir, read_rows
from tasks.dataset.shards import read_shard_record
from tasks.errors import ConfigError
from tasks.store.store import open_store

FEATURES = {"n_fft": 512, "hop_length": 128, "n_mels": 40}
OLD_STORE = ROOT / "tests" / "data" / "store-before-layout"


@pytest.fixture(scope="module", params=["zarr", "parquet"])
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A store ingested by musicflow (3 songs, one file that is not audio), with chunks of 64 rows
    so that songs are written across several flushes; ``(store, dataset_id, format)``."""
    root = tmp_path_factory.mktemp(f"open-{request.param}")
    songs = root / "songs"
    write_periodic_music(songs, n_songs=3, seconds=1.5)
    (songs / "notes.mp3").write_text("not audio")
    store = str(root / "store")
    config = IngestConfig(
        features=FeatureConfig.for_transform("stft", **FEATURES), shard_format=request.param
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards, "CHUNK_BYTES", 0)
        dataset_id = ingest_direct(songs, store, config)
    yield store, dataset_id, request.param


def test_open_dataset_gives_songs_failures_and_frames(written: tuple) -> None:
    store, dataset_id, _ = written
    data = mf.open_dataset(store)

    rows = read_rows(open_store(store), dataset_id)
    assert data.dataset_id == dataset_id and data.schema_version == shards.SCHEMA_VERSION
    assert data.n_features == 40
    assert [song["song_id"] for song in data.songs] == [row.song_id for row in rows if row.ok]
    assert len(data.songs) == 3
    (failed,) = data.failed
    assert failed["source"].endswith("notes.mp3") and failed["status"] == STATUS_FAILED and failed["error"]
    for song in data.songs:
        frames = data.frames(song["song_id"])
        assert frames.shape == (song["n_blocks"], 40) and frames.dtype == np.float32
        np.testing.assert_array_equal(data.frames(song["song_id"][:12]), frames)  # a prefix, as tables show
    with pytest.raises(ConfigError, match="'nosuchsong'"):
        data.frames("nosuchsong")


def test_windows_are_the_training_windows(written: tuple) -> None:
    """The framework-neutral iterator and tf.data give the windows training reads (normalised)."""
    store, _, _ = written
    data = mf.open_dataset(store)
    windows = list(data.windows(seq_len=16, hop=8))
    song = data.songs[0]
    frames = data.normalizer().apply(data.frames(song["song_id"]))
    inputs, targets = windows[0]
    np.testing.assert_allclose(inputs, frames[:16], rtol=1e-6)
    np.testing.assert_allclose(targets, frames[1:17], rtol=1e-6)
    expected = sum((song["n_blocks"] - 17) // 8 + 1 for song in data.songs)
    assert len(windows) == expected


def test_tf_dataset_batches_the_same_windows() -> None:
    """``to_tf_dataset`` is the training flow's input pipeline over the same windows (one store
    for both formats: TensorFlow's import is the cost here)."""
    data = mf.open_dataset(str(OLD_STORE))
    windows = list(data.windows(seq_len=16, hop=8))
    batches = list(data.to_tf_dataset(seq_len=16, hop=8, batch_size=4))
    assert sum(batch[0].shape[0] for batch in batches) == len(windows) > 4
    for index in (0, 5):
        np.testing.assert_allclose(batches[index // 4][0].numpy()[index % 4], windows[index][0], rtol=1e-6)
        np.testing.assert_allclose(batches[index // 4][1].numpy()[index % 4], windows[index][1], rtol=1e-6)


def test_other_tools_read_the_shards_with_names(written: tuple) -> None:
    """xarray opens a Zarr shard with named dimensions; pandas/pyarrow read a Parquet shard's
    song_id and frame columns: each song's frames equal open_dataset's."""
    store, dataset_id, shard_format = written
    data = mf.open_dataset(store)
    by_shard: dict[str, list[dict]] = {}
    for song in data.songs:
        by_shard.setdefault(song["shard"], []).append(song)
    for shard, songs in by_shard.items():
        path = Path(store) / dataset_dir(dataset_id) / shard
        record = read_shard_record(open_store(store), dataset_dir(dataset_id), shard)
        assert record["schema_version"] == shards.SCHEMA_VERSION
        assert record["features"] == data.features.to_dict()
        listed = {entry["song_id"]: (entry["offset"], entry["n_frames"]) for entry in record["songs"]}
        assert listed == {song["song_id"]: (song["offset"], song["n_blocks"]) for song in songs}
        if shard_format == "zarr":
            import xarray as xr

            opened = xr.open_zarr(path)
            assert opened["features"].dims == ("frame", "feature")
            assert opened.attrs["musicflow"]["songs"] == record["songs"]
            for song in songs:
                window = opened["features"].isel(
                    frame=slice(song["offset"], song["offset"] + song["n_blocks"])
                )
                np.testing.assert_array_equal(window.values, data.frames(song["song_id"]))
        else:
            import pandas as pd
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            assert table.column_names == ["song_id", "frame", "features"]
            assert json.loads(pq.read_metadata(path).metadata[b"musicflow"]) == record
            frame = pd.read_parquet(path)
            for song in songs:
                rows = frame[frame["song_id"] == song["song_id"]].sort_values("frame")
                assert rows["frame"].tolist() == list(range(song["n_blocks"]))
                np.testing.assert_array_equal(
                    np.stack(rows["features"].to_numpy()), data.frames(song["song_id"])
                )


def test_duckdb_and_pandas_read_the_exported_catalog(written: tuple, tmp_path: Path, capsys) -> None:
    """``musicflow catalog --parquet`` is the catalog as musicflow reads it (the last row of a song
    wins): a failed song retried is one row there, two in the log's own files."""
    import duckdb
    import pandas as pd

    store, dataset_id, _ = written
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    opened = open_store(str(copy))
    (failed,) = [row for row in read_rows(opened, dataset_id) if not row.ok]
    append_rows(opened, dataset_dir(dataset_id), [replace(failed, error="retried: still not audio")])
    out = tmp_path / "export" / "catalog.parquet"

    code, _, err = run_cli(capsys, "catalog", "--store", str(copy), "--parquet", str(out))

    assert code == 0, err
    data = mf.open_dataset(str(copy))
    exported = pd.read_parquet(out)
    assert exported["song_id"].tolist() == data.catalog.column("song_id").to_pylist()
    assert len(exported) == 4 and len(pd.read_parquet(copy / dataset_dir(dataset_id) / "catalog")) == 5
    counts = duckdb.sql(f"select status, count(*) from read_parquet('{out}') group by status order by status")
    assert counts.fetchall() == [("failed", 1), ("ok", 3)]
    assert duckdb.sql(f"select error from read_parquet('{out}') where status = 'failed'").fetchall() == [
        ("retried: still not audio",)
    ]
    frames = duckdb.sql(f"select sum(n_blocks) from read_parquet('{out}') where status = 'ok'").fetchall()
    assert frames == [(sum(data.frames(song["song_id"]).shape[0] for song in data.songs),)]


def test_catalog_lists_failed_songs_with_their_error_at_80_columns(
    written: tuple, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, dataset_id, _ = written
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(capsys, "catalog", "--store", store)
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert dataset_id in lines[0] and "3 songs ok, 1 failed" in lines[0]
    assert sum(" failed " in line for line in lines[1:]) == 1
    column = lines[1].index("error")
    shown = "".join("".join(line[column:].split()) for line in lines[2:])  # folded over lines, in full
    assert "".join(mf.open_dataset(store).failed[0]["error"].split()) in shown, out

    code, out, err = run_cli(capsys, "catalog", "--store", store, "--status", "failed", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset_id"] == dataset_id
    assert [row["source"].rsplit("/", 1)[-1] for row in report["songs"]] == ["notes.mp3"]
    assert report["songs"][0]["error"] == mf.open_dataset(store).failed[0]["error"]

    code, out, err = run_cli(capsys, "catalog", "--store", store, "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["song_id"] for row in rows] == mf.open_dataset(store).catalog.column("song_id").to_pylist()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--status", "lost"], "'lost'"),
        (["--json", "--csv"], "--json and --csv"),
        (["--dataset", "nosuch"], "'nosuch'"),
        (["--storage-options", "{bad"], "invalid --storage-options"),
    ],
)
def test_catalog_bad_values_are_one_line_and_exit_2(args: list[str], fragment: str, capsys) -> None:
    code, _, err = run_cli(capsys, "catalog", "--store", str(OLD_STORE), *args)
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("musicflow: error: ") and fragment in line, line


def test_a_store_from_before_the_format_was_versioned_still_reads() -> None:
    """tests/data/store-before-layout: no schema_version in config.json, a bare Zarr array shard."""
    data = mf.open_dataset(str(OLD_STORE))
    assert data.schema_version == 1
    song = data.songs[0]
    assert read_shard_record(open_store(str(OLD_STORE)), dataset_dir(data.dataset_id), song["shard"]) == {
        "schema_version": 1
    }
    assert data.frames(song["song_id"]).shape == (song["n_blocks"], data.n_features)
    assert len(list(data.windows(seq_len=8, hop=4))) > 0


def test_an_s3_store_opens_with_its_storage_options(
    s3_bucket: str, s3_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import s3fs

    from tasks.store.store import storage_options_for

    store = f"{s3_bucket}/store"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    fs.put(str(OLD_STORE) + "/", store.removeprefix("s3://"), recursive=True)
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}

    data = mf.open_dataset(store, storage_options=options)

    assert storage_options_for(store) == options  # registered for the store's URLs in this process
    local = mf.open_dataset(str(OLD_STORE))
    song = local.songs[0]["song_id"]
    np.testing.assert_array_equal(data.frames(song), local.frames(song))
    code, out, err = run_cli(
        capsys, "catalog", "--store", store, "--storage-options", json.dumps(options), "--json"
    )
    assert code == 0, err
    assert [row["song_id"] for row in json.loads(out)["songs"]] == [song["song_id"] for song in local.songs]
