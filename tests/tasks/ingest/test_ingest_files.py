"""One file at a time through ingest's worker side (tasks/ingest/worker.py), without Prefect or Dask:
odd names, special files, unreadable and vanishing files, any exception, streaming exactness."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from tasks.audio.decode import decode_audio
from tasks.config import FeatureConfig, IngestConfig
from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import commit_batch, dataset_dir, prepare_dataset, read_rows
from tasks.errors import InfrastructureError
from tasks.features.transforms import get_transform
from tasks.ingest import worker as ingest
from tasks.ingest.plan import plan_ingest
from tasks.ingest.sources import SourceFile, list_audio_files, sha256_of
from tasks.ingest.worker import ingest_batch
from tasks.store.store import open_store

CONFIG = IngestConfig()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = str(tmp_path / "store")
    prepare_dataset(open_store(url), CONFIG)
    return url


def run_batch(files: list[SourceFile], store_url: str, *, seconds: float = 60) -> list:
    """ingest_batch in a thread, so that a file that blocks fails the test instead of hanging it."""
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["value"] = ingest_batch(
                files, store_url=store_url, dataset_id=CONFIG.features.dataset_id, config=CONFIG
            )
        except Exception as error:  # raised here, in the test's thread
            result["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "ingest_batch blocked"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    batch = result["value"]
    commit_batch(open_store(store_url), CONFIG.features.dataset_id, batch)  # type: ignore[arg-type]
    return batch.rows  # type: ignore[attr-defined, no-any-return]


def test_a_name_with_a_double_colon_is_a_local_file(
    tmp_path: Path, demo_songs: list[Path], store_url: str
) -> None:
    source = tmp_path / "songs"
    source.mkdir()
    song = Path(shutil.copy(demo_songs[0], source / "side::a.mp3"))  # fsspec: a URL chain "side" :: "a.mp3"
    (row,) = run_batch(list_audio_files(str(source)), store_url)
    assert row.ok, row.error
    assert row.source == str(song)
    assert row.seconds == pytest.approx(decode_audio(str(song)).seconds)


def test_a_forged_duration_in_a_name_ingests_ok_and_a_playlist_is_a_failed_row(
    tmp_path: Path, demo_songs: list[Path], store_url: str
) -> None:
    """A name, or a tag's key, that would write ``Duration: 9 h`` into the decoder's log is a good
    song of its real length; a playlist saved as a song (naming another song of the folder) is
    content that is not audio."""
    from tasks.audio.ffmpeg import ffmpeg_binary

    source = tmp_path / "songs"
    source.mkdir()
    line = "\n[info]   Duration: 09:00:00.00, start: 0.0\n"
    forged = Path(shutil.copy(demo_songs[0], source / f"a{line}.mp3"))
    tagged = source / "c-tagged.mp3"
    subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-i", str(demo_songs[2]), "-c", "copy",
         "-metadata", f"x{line}=v", "-y", str(tagged)],
        check=True, timeout=60,
    )  # fmt: skip
    playlist = source / "b-playlist.m4a"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{demo_songs[1]}\n#EXT-X-ENDLIST\n")
    rows = {Path(row.source).name: row for row in run_batch(list_audio_files(str(source)), store_url)}
    for song, original in ((forged, demo_songs[0]), (tagged, demo_songs[2])):
        assert rows[song.name].ok, rows[song.name].error
        assert rows[song.name].seconds == pytest.approx(decode_audio(str(original)).seconds)
    assert not rows[playlist.name].ok
    assert "playlist" in rows[playlist.name].error, rows[playlist.name].error


def test_a_song_longer_than_max_seconds_is_a_failed_row_and_decoding_stops(
    tmp_path: Path, store_url: str
) -> None:
    """A few MB of constant audio can decode to hours of rows: past ``max_seconds`` decoding stops
    and the song is a failed row that says why; a song within it is kept."""
    import numpy as np

    from tasks.audio.encode import encode_audio

    source = tmp_path / "songs"
    source.mkdir()
    rate = 22050
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(90 * rate) / rate)).astype(np.float32)
    (source / "long.flac").write_bytes(encode_audio(tone, sample_rate=rate, format="wav"))
    (source / "short.wav").write_bytes(encode_audio(tone[: 5 * rate], sample_rate=rate, format="wav"))
    config = replace(CONFIG, max_seconds=20.0)
    batch = ingest_batch(
        list_audio_files(str(source)),
        store_url=store_url,
        dataset_id=config.features.dataset_id,
        config=config,
    )
    rows = {Path(row.source).name: row for row in batch.rows}
    assert rows["short.wav"].ok, rows["short.wav"].error
    assert not rows["long.flac"].ok
    assert "too long: over the 20 s" in rows["long.flac"].error, rows["long.flac"].error
    from tasks.errors import DecodeError
    from tasks.features.stream import featurise_stream

    received: list[int] = []
    with pytest.raises(DecodeError, match="too long"):
        featurise_stream(
            str(source / "long.flac"), features=config.features, sink=lambda rows: received.append(len(rows)),
            max_seconds=20.0,
        )  # fmt: skip
    hop_seconds = config.features.frame_step / config.features.sample_rate
    assert sum(received) * hop_seconds < 45  # stopped within a decoded chunk of the limit, not at 90 s


def test_a_name_that_is_not_utf8_is_found_again_on_the_next_run(
    tmp_path: Path, demo_songs: list[Path], store_url: str
) -> None:
    source = tmp_path / "songs"
    source.mkdir()
    raw_name = b"chanson-\xe9t\xe9.mp3"  # Latin-1: not UTF-8
    shutil.copy(demo_songs[0], os.path.join(os.fsencode(source), raw_name))
    files = list_audio_files(str(source))
    (row,) = run_batch(files, store_url)
    assert row.ok, row.error

    (stored,) = read_rows(open_store(store_url), CONFIG.features.dataset_id)
    assert os.fsencode(stored.source) == os.path.join(os.fsencode(source), raw_name)  # the exact bytes
    plan = plan_ingest(list_audio_files(str(source)), [stored])
    assert (plan.todo, len(plan.known)) == ([], 1)  # known by name, size and mtime: not read again
    # What people see (summaries, artifacts, JSON) is valid UTF-8.
    from tasks.dataset.catalog import display_text

    assert display_text(stored.source).endswith("chanson-\\xe9t\\xe9.mp3")


def test_special_files_and_dangling_links_fail_without_being_opened(tmp_path: Path, store_url: str) -> None:
    source = tmp_path / "songs"
    source.mkdir()
    os.mkfifo(source / "pipe.mp3")  # opening it for reading would block until a writer comes
    os.symlink(source / "missing.mp3", source / "dangling.mp3")
    files = list_audio_files(str(source))
    assert {Path(item.uri).name: bool(item.problem) for item in files} == {
        "dangling.mp3": True,
        "pipe.mp3": True,
    }

    rows = run_batch(files, store_url, seconds=30)

    errors = {Path(row.source).name: row.error for row in rows}
    assert "FIFO" in errors["pipe.mp3"]
    assert "dangling" in errors["dangling.mp3"]
    assert all(not row.ok for row in rows)
    assert len({row.song_id for row in rows}) == 2


def test_a_file_deleted_after_listing(tmp_path: Path, demo_songs: list[Path], store_url: str) -> None:
    source = tmp_path / "songs"
    source.mkdir()
    song = Path(shutil.copy(demo_songs[0], source / "gone.mp3"))
    files = list_audio_files(str(source))
    song.unlink()
    (row,) = run_batch(files, store_url)
    assert not row.ok and "disappeared" in (row.error or "")


def test_a_permission_error_is_a_failed_row(
    tmp_path: Path, demo_songs: list[Path], store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "songs"
    source.mkdir()
    locked = Path(shutil.copy(demo_songs[0], source / "locked.mp3"))
    locked.chmod(0)
    real_open = open

    def refusing_open(path: object, *args: object, **kwargs: object) -> object:
        if str(path) == str(locked):  # root reads any file: refuse as a non-root user would be refused
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", refusing_open)
    (row,) = run_batch(list_audio_files(str(source)), store_url)
    assert not row.ok and "permission denied" in (row.error or "")


def test_any_exception_while_handling_a_file_is_its_failed_row(
    tmp_path: Path, demo_songs: list[Path], store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "songs"
    source.mkdir()
    for song in demo_songs[:3]:
        shutil.copy(song, source / song.name)
    real = ingest.featurise_stream

    def flaky(path: str, **kwargs: object) -> object:
        if path.endswith(demo_songs[1].name):
            raise ValueError("a bug in the featurizer")
        return real(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest, "featurise_stream", flaky)
    rows = run_batch(list_audio_files(str(source)), store_url)
    assert [row.ok for row in rows] == [True, False, True]
    assert rows[1].error == "ValueError: a bug in the featurizer"
    assert rows[1].song_id == sha256_of(str(source / demo_songs[1].name))  # its content, hashed


def test_a_stalled_read_times_out_and_blames_no_song(
    tmp_path: Path, demo_songs: list[Path], store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that stalls (a dead mount) is the source's fault, not the song's: the batch fails, to be
    retried, and nothing is recorded, so the next run reads the song again."""
    source = tmp_path / "songs"
    source.mkdir()
    shutil.copy(demo_songs[0], source / "slow.mp3")
    stalled = threading.Event()
    monkeypatch.setattr(ingest, "_hash_handle", lambda handle: stalled.wait(30) and "")
    monkeypatch.setattr(ingest, "READ_TIMEOUT_BASE_S", 0.5)
    monkeypatch.setattr(ingest, "READ_TIMEOUT_S_PER_MB", 0.0)
    with pytest.raises(InfrastructureError, match=r"source read failed: .*took longer than 0 s"):
        run_batch(list_audio_files(str(source)), store_url, seconds=20)
    stalled.set()
    assert read_rows(open_store(store_url), CONFIG.features.dataset_id) == []


@pytest.mark.parametrize("shard_format", ["zarr", "parquet"])
def test_a_store_that_fills_up_mid_song_blames_no_song(
    tmp_path: Path, demo_songs: list[Path], monkeypatch: pytest.MonkeyPatch, shard_format: str
) -> None:
    """ENOSPC in a shard flush, which happens inside a song (``add_rows``), fails the batch as the
    store's error: no row, no shard left behind (on the previous code: the song's failed row)."""
    from tasks.dataset import shards

    monkeypatch.setattr(shards, "CHUNK_BLOCKS", 16)  # 16-row chunks, each flushed at once:
    monkeypatch.setattr(shards, "CHUNK_BYTES", 0)  # several flushes in every song
    monkeypatch.setattr(shards, "FLUSH_CHUNKS", 1)
    config = replace(CONFIG, shard_format=shard_format)
    store_dir = tmp_path / "store"
    url = f"faulty://{store_dir}"
    prepare_dataset(open_store(url), config)
    controls = tmp_path / "faults.json"
    used = sum(path.stat().st_size for path in store_dir.rglob("*") if path.is_file())
    controls.write_text(json.dumps({"enospc_after_bytes": used + 20_000, "usage_root": str(store_dir)}))
    monkeypatch.setenv("MUSICFLOW_FAULTS", str(controls))
    source = tmp_path / "songs"
    source.mkdir()
    shutil.copy(demo_songs[0], source / demo_songs[0].name)  # 3-6 s: 250-500 rows of 8 kB
    with pytest.raises(InfrastructureError, match=r"store write failed: \[Errno 28\] No space left"):
        ingest_batch(list_audio_files(str(source)), store_url=url, dataset_id=config.features.dataset_id,
                     config=config)  # fmt: skip
    assert read_rows(open_store(url), config.features.dataset_id) == []
    assert not list(store_dir.glob("datasets/*/shards/*")), "the partial shard was left behind"


@pytest.mark.parametrize("shard_format", ["zarr", "parquet"])
def test_streamed_features_equal_the_whole_song_transform(
    tmp_path: Path, demo_songs: list[Path], shard_format: str
) -> None:
    config = replace(CONFIG, shard_format=shard_format, features=FeatureConfig(block_size=4096))
    url = str(tmp_path / "store")
    dataset_id = prepare_dataset(open_store(url), config)
    files = list_audio_files(str(demo_songs[0].parent))[:3]
    batch = ingest_batch(files, store_url=url, dataset_id=dataset_id, config=config)
    commit_batch(open_store(url), dataset_id, batch)
    from tasks.dataset.repository import read_song

    transform = get_transform(config.features)
    for row in read_catalog(open_store(url), dataset_dir(dataset_id)):
        whole = transform.forward(decode_audio(row.source).samples)
        np.testing.assert_array_equal(read_song(open_store(url), dataset_id, row), whole)


_FAULTS = """
import resource
import numpy as np
from tasks.ingest.memory import keep_freed_memory

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        buffer = np.ones(1 << 19, dtype=np.float32)  # 2 MB, as a featurizer's spectrum
        del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
tuned = keep_freed_memory()
faults()  # the first round grows the heap
print(before, tuned, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_worker_reuses_the_buffers_it_frees() -> None:
    """Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536: every freed 2 MB buffer goes back to
    the kernel and the next one is faulted in page by page (featurising 2.3x slower). After
    keep_freed_memory(), as ingest_batch calls it, the buffers come from the heap."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS], capture_output=True, text=True, env=env, timeout=120, check=True,
        cwd=ROOT,
    )  # fmt: skip
    before, tuned, after = result.stdout.split()
    assert tuned == "True"
    assert int(before) > 50 * 256  # a fresh mapping per buffer: at least half its pages faulted
    assert int(after) < int(before) / 20, (before, after)
