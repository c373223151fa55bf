"""Several songs decoded by one ffmpeg (tasks.audio.AudioGroup, tasks.ingest's groups): the same
samples, rows and verdicts as each file decoded alone, one process start for the group, and every
doubtful file decoded alone."""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from helpers import corrupt_frames, ffmpeg, mostly_garbage, write_odd_files, write_vbr_without_header

from musicflow.config import IngestConfig
from tasks import audio, ingest
from tasks.audio import AudioGroup, AudioStream, encode_audio
from tasks.catalog import CatalogRow
from tasks.dataset import commit_batch, prepare_dataset, read_song
from tasks.ingest import SourceFile, decode_groups, ingest_batch, list_audio_files
from tasks.store import open_store

CONFIG = IngestConfig()
RATE = CONFIG.features.sample_rate


@pytest.fixture
def mixed_formats(tmp_path: Path, demo_songs: list[Path]) -> list[Path]:
    """Clean files of different kinds: mp3 (stereo), a VBR mp3 without a header (mono), Ogg
    Vorbis, and 48 kHz stereo WAV."""
    directory = tmp_path / "formats"
    directory.mkdir()
    mp3 = Path(shutil.copy(demo_songs[0], directory / "a.mp3"))
    vbr = write_vbr_without_header(directory / "b-vbr.mp3", intro_seconds=1.0, seconds=4.0)
    ogg = directory / "c.ogg"
    ffmpeg("-i", str(demo_songs[1]), "-c:a", "libvorbis", str(ogg))
    wav = directory / "d.wav"
    ffmpeg("-i", str(demo_songs[2]), "-ar", "48000", "-ac", "2", str(wav))
    return [mp3, vbr, ogg, wav]


def _decode(group: AudioGroup) -> list[np.ndarray]:
    chunks: list[list[np.ndarray]] = [[] for _ in group.paths]
    for index, chunk in group:
        chunks[index].append(chunk)
    return [np.concatenate(parts) if parts else np.zeros(0, np.float32) for parts in chunks]


def test_a_group_gives_each_file_the_samples_it_decodes_to_alone(mixed_formats: list[Path]) -> None:
    group = AudioGroup([str(path) for path in mixed_formats], sample_rate=RATE)
    decoded = _decode(group)
    assert group.clean == [True] * 4
    for index, path in enumerate(mixed_formats):
        alone = AudioStream(str(path), sample_rate=RATE)
        np.testing.assert_array_equal(decoded[index], np.concatenate(list(alone)), err_msg=path.name)
        assert group.channels[index] == alone.channels
        assert group.n_samples[index] == alone.n_samples
    assert group.channels == [2, 1, 2, 2]


@pytest.mark.parametrize(
    "bad", ["corrupted-frames", "mostly-garbage", "not-audio", "no-audio-stream", "truncated"]
)
def test_a_group_vouches_only_for_the_files_that_decode_cleanly(
    tmp_path: Path, demo_songs: list[Path], long_mp3: bytes, bad: str
) -> None:
    """ffmpeg's decoding errors are pinned on their input; a file it cannot open or map stops it
    before anything is decoded, and the others are decoded together again without it."""
    bad_path = tmp_path / "bad.mp3"
    if bad == "no-audio-stream":  # a picture, named .mp3
        ffmpeg("-f", "lavfi", "-i", "color=s=16x16:d=0.04", "-frames:v", "1", "-f", "image2", str(bad_path))
    else:
        bad_path.write_bytes(
            {
                "corrupted-frames": corrupt_frames(long_mp3),
                "mostly-garbage": mostly_garbage(long_mp3),
                "not-audio": b"this is not audio\n" * 100,
                "truncated": long_mp3[: len(long_mp3) // 2],
            }[bad]
        )
    paths = [str(demo_songs[0]), str(bad_path), str(demo_songs[1])]
    group = AudioGroup(paths, sample_rate=RATE)
    decoded = _decode(group)
    assert group.clean == [True, False, True]
    for index in (0, 2):
        np.testing.assert_array_equal(
            decoded[index], np.concatenate(list(AudioStream(paths[index], sample_rate=RATE)))
        )


def test_a_group_left_early_stops_its_ffmpeg(demo_songs: list[Path]) -> None:
    group = AudioGroup([str(path) for path in demo_songs[:3]], sample_rate=RATE)
    chunks = iter(group)
    next(chunks)
    chunks.close()  # type: ignore[attr-defined]
    assert not [child for child in psutil.Process().children() if "ffmpeg" in child.name()]


def test_decode_groups_keep_the_order_and_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "GROUP_MAX_FILES", 3)
    monkeypatch.setattr(ingest, "GROUP_MAX_BYTES", 100)
    files = [
        SourceFile("a", 10), SourceFile("b", 10), SourceFile("c", 10), SourceFile("d", 10),  # 3 at most
        SourceFile("e", 60), SourceFile("f", 50),  # 110 bytes: two groups
        SourceFile("g", 101),  # larger than a group: alone
        SourceFile("h", 10), SourceFile("fifo", 0, problem="a FIFO"), SourceFile("i", 10),
        SourceFile("j", 10), SourceFile("empty", 0), SourceFile("k", 10), SourceFile("l", 10),
    ]  # fmt: skip
    groups = [[item.uri for item in group] for group in decode_groups(files)]
    assert groups == [
        ["a", "b", "c"],
        ["d", "e"],
        ["f"],
        ["g"],
        ["h"],
        ["fifo"],
        ["i", "j"],
        ["empty"],
        ["k", "l"],
    ]


class FfmpegStarts:
    """Counts the decoding ffmpeg processes tasks.audio starts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inputs: list[int] = []
        real = subprocess.Popen

        def counting(command: list[str], *args: Any, **kwargs: Any) -> Any:
            if "-i" in command and "pcm_f32le" in command:
                self.inputs.append(command.count("-i"))
            return real(command, *args, **kwargs)

        monkeypatch.setattr(audio.subprocess, "Popen", counting)


def _ingest(files: list[SourceFile], url: str, config: IngestConfig = CONFIG) -> list[CatalogRow]:
    dataset_id = prepare_dataset(open_store(url), config)
    batch = ingest_batch(files, store_url=url, dataset_id=dataset_id, config=config)
    commit_batch(open_store(url), dataset_id, batch)
    return batch.rows


def _features(url: str, rows: list[CatalogRow]) -> dict[str, np.ndarray]:
    store = open_store(url)
    return {row.source: read_song(store, CONFIG.features.dataset_id, row) for row in rows if row.ok}


def _verdicts(rows: list[CatalogRow]) -> dict[str, tuple[Any, ...]]:
    return {
        row.source: (
            row.status,
            row.error,
            row.warnings,
            row.song_id,
            row.seconds,
            row.channels,
            row.n_blocks,
        )
        for row in rows
    }


def test_a_batch_of_small_songs_starts_one_ffmpeg_and_writes_what_one_per_song_writes(
    tmp_path: Path, mixed_formats: list[Path], demo_songs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for song in demo_songs[3:]:
        shutil.copy(song, mixed_formats[0].parent / song.name)
    files = list_audio_files(str(mixed_formats[0].parent))
    assert len(files) == 7
    starts = FfmpegStarts(monkeypatch)
    grouped = _ingest(files, str(tmp_path / "grouped"))
    assert starts.inputs == [7]
    monkeypatch.setattr(ingest, "GROUP_MAX_FILES", 1)
    alone = _ingest(files, str(tmp_path / "alone"))
    assert starts.inputs == [7] + [1] * 7
    assert all(row.ok for row in grouped)
    assert _verdicts(grouped) == _verdicts(alone)
    features, expected = (
        _features(str(tmp_path / "grouped"), grouped),
        _features(str(tmp_path / "alone"), alone),
    )
    for source in expected:
        np.testing.assert_array_equal(features[source], expected[source], err_msg=source)


def test_rows_that_overflow_the_memory_budget_wait_in_a_file(
    tmp_path: Path, demo_songs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = list_audio_files(str(demo_songs[0].parent))
    kept = _ingest(files, str(tmp_path / "memory"))
    monkeypatch.setattr(ingest, "GROUP_ROWS_IN_MEMORY", 200_000)  # a song's rows or two, the rest on disk
    spilled = _ingest(files, str(tmp_path / "spilled"))
    assert _verdicts(spilled) == _verdicts(kept)
    expected = _features(str(tmp_path / "memory"), kept)
    for source, rows in _features(str(tmp_path / "spilled"), spilled).items():
        np.testing.assert_array_equal(rows, expected[source], err_msg=source)


def test_a_mixed_folder_gets_the_verdicts_of_files_decoded_alone(
    tmp_path: Path, demo_songs: list[Path], long_mp3: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kind of bad or odd file, in one folder and one batch: grouped decoding gives each
    file the row it gets decoded alone (good songs too, next to bad ones), with fewer ffmpegs."""
    source = tmp_path / "odd"
    outcomes = write_odd_files(source, demo_songs, long_mp3)
    loud = 0.5 * np.sin(2 * np.pi * 440 * np.arange(RATE * 2) / RATE).astype(np.float32)
    (source / "clean-tone.mp3").write_bytes(encode_audio(loud, sample_rate=RATE))
    files = list_audio_files(str(source))
    (source / "deleted-mid-run.mp3").unlink()
    starts = FfmpegStarts(monkeypatch)
    grouped = _ingest(files, str(tmp_path / "grouped"))
    n_grouped = len(starts.inputs)
    monkeypatch.setattr(ingest, "GROUP_MAX_FILES", 1)
    alone = _ingest(files, str(tmp_path / "alone"))
    assert n_grouped < len(starts.inputs) - n_grouped, starts.inputs  # 11 vs 14 when written
    assert _verdicts(grouped) == _verdicts(alone)
    by_name = {Path(row.source).name: row for row in grouped}
    for name, (outcome, _) in outcomes.items():
        if outcome in ("ok", "warned") and name in by_name:
            assert by_name[name].ok, (name, by_name[name].error)
    features, expected = (
        _features(str(tmp_path / "grouped"), grouped),
        _features(str(tmp_path / "alone"), alone),
    )
    assert features.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(features[key], expected[key], err_msg=key)


def test_strict_groups_judge_as_strictly_as_one_file(tmp_path: Path, demo_songs: list[Path]) -> None:
    """--strict: a VBR mp3 without a header falls short of its (estimated) length, in a group too."""
    source = tmp_path / "songs"
    source.mkdir()
    shutil.copy(demo_songs[0], source / "a.mp3")
    write_vbr_without_header(source / "b-vbr.mp3")
    strict = replace(CONFIG, strict=True)
    rows = _ingest(list_audio_files(str(source)), str(tmp_path / "store"), strict)
    assert [row.ok for row in rows] == [True, False]
    assert "truncated" in (rows[1].error or "")


def test_an_error_ffmpeg_does_not_pin_on_an_input_counts_for_every_input() -> None:
    log = io.BytesIO(
        b"[mp3 @ 0x10] [warning] Estimating duration from bitrate, this may be inaccurate\n"
        b"[info] Input #0, mp3, from 'file:a.mp3':\n"
        b"[info]   Duration: 00:00:05.04, start: 0.025057, bitrate: 128 kb/s\n"
        b"[info]   Stream #0:0: Audio: mp3, 44100 Hz, stereo, fltp, 128 kb/s\n"
        b"[info] Input #1, mp3, from 'file:b.mp3':\n"
        b"[info]   Duration: 00:00:03.82, start: 0.000000, bitrate: 35 kb/s\n"
        b"[info]   Stream #1:0: Audio: mp3, 44100 Hz, mono, fltp, 35 kb/s\n"
        b"[info] Output #0, f32le, to 'pipe:5':\n"
        b"[mp3float @ 0x20] [error] Header missing\n"
        b"[error] Error while decoding stream #1:0: Invalid data found when processing input\n"
        b"[mp3float @ 0x20] [error] Header missing\n"
        b"[aresample @ 0x30] [error] something else\n"
    )
    first, second = audio._read_log(log, n_inputs=2)
    assert first.estimated and not second.estimated
    assert (first.stated_seconds, first.channels, second.stated_seconds, second.channels) == (
        5.04,
        2,
        3.82,
        1,
    )
    assert first.n_errors == 1 and first.errors == ["something else"]  # unplaced: every input's
    assert second.n_errors == 4
