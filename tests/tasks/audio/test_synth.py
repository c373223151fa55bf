"""Tests for tasks.audio.synth: seeded synthetic songs and the demo files written from them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.audio.decode import decode_audio
from tasks.audio.synth import synthesize_song, write_demo_songs
from tasks.errors import ConfigError

SAMPLE_RATE = 44100
OLD_MTIME_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09: any rewrite would move it


def expected_seconds(song_seed: int, low: float, high: float) -> float:
    """The length write_demo_songs draws for a song (documented: seeded by the song's seed)."""
    return float(np.random.default_rng(song_seed).uniform(low, high))


# --------------------------------------------------------------------------- synthesize_song


def test_song_shape_and_dtype() -> None:
    song = synthesize_song(seed=0, seconds=1.5)
    assert song.shape == (round(1.5 * SAMPLE_RATE), 2)
    assert song.dtype == np.float32


@pytest.mark.parametrize(("seconds", "sample_rate"), [(1.0, 22050), (0.75, 16000), (1.3, 8000)])
def test_song_length_follows_sample_rate(seconds: float, sample_rate: int) -> None:
    song = synthesize_song(seed=1, seconds=seconds, sample_rate=sample_rate)
    assert song.shape == (round(seconds * sample_rate), 2)


def test_same_seed_same_song() -> None:
    np.testing.assert_array_equal(synthesize_song(seed=7, seconds=1.0), synthesize_song(seed=7, seconds=1.0))


def test_different_seed_different_song() -> None:
    first = synthesize_song(seed=7, seconds=1.0)
    second = synthesize_song(seed=8, seconds=1.0)
    assert first.shape == second.shape
    assert np.abs(first - second).mean() > 1e-2


def test_song_does_not_depend_on_global_random_state() -> None:
    np.random.seed(0)
    first = synthesize_song(seed=3, seconds=0.5)
    np.random.seed(12345)
    np.random.random(100)
    second = synthesize_song(seed=3, seconds=0.5)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("seed", [0, 1, 2, 99])
def test_song_is_in_range_and_not_silent(seed: int) -> None:
    song = synthesize_song(seed=seed, seconds=1.0)
    assert np.isfinite(song).all()
    assert np.abs(song).max() <= 1.0
    # Normalised to a peak of 0.89 (headroom for mp3 overshoot).
    assert np.abs(song).max() == pytest.approx(0.89, abs=1e-3)
    rms = float(np.sqrt(np.mean(song.astype(np.float64) ** 2)))
    assert rms > 0.02
    # Sound throughout, not only at the start: every quarter second has energy.
    quarters = song[: 4 * (song.shape[0] // 4)].reshape(4, -1, 2)
    assert (np.sqrt((quarters.astype(np.float64) ** 2).mean(axis=(1, 2))) > 0.005).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stereo_channels_differ(seed: int) -> None:
    song = synthesize_song(seed=seed, seconds=1.0)
    left, right = song[:, 0], song[:, 1]
    assert np.abs(left - right).mean() > 1e-3
    # Still one song: the channels are strongly related.
    assert np.corrcoef(left, right)[0, 1] > 0.3


def test_song_has_tonal_content() -> None:
    # Notes sit between ~50 Hz and a few kHz; most of the energy should be there.
    mono = synthesize_song(seed=5, seconds=2.0).mean(axis=1).astype(np.float64)
    power = np.abs(np.fft.rfft(mono)) ** 2
    freqs = np.fft.rfftfreq(mono.shape[0], 1 / SAMPLE_RATE)
    in_band = power[(freqs >= 40) & (freqs <= 5000)].sum()
    assert in_band / power.sum() > 0.8


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_song_rejects_bad_seconds(seconds: float) -> None:
    with pytest.raises(ConfigError) as raised:
        synthesize_song(seed=0, seconds=seconds)
    assert repr(seconds) in str(raised.value)


def test_song_too_short_for_one_sample() -> None:
    # seconds > 0 but round(seconds * sample_rate) == 0: either the documented empty
    # [0, 2] array or a ConfigError, never numpy's "zero-size array" ValueError.
    try:
        song = synthesize_song(seed=0, seconds=1e-6)
    except ConfigError:
        return
    assert song.shape == (0, 2)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_samples=st.integers(1, 6000),
    sample_rate=st.sampled_from([8000, 22050, 44100]),
)
def test_song_shape_property(seed: int, n_samples: int, sample_rate: int) -> None:
    seconds = n_samples / sample_rate
    song = synthesize_song(seed=seed, seconds=seconds, sample_rate=sample_rate)
    assert song.shape == (round(seconds * sample_rate), 2)
    assert song.dtype == np.float32
    assert np.isfinite(song).all()
    assert np.abs(song).max() <= 1.0


# --------------------------------------------------------------------------- write_demo_songs


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    directory = tmp_path_factory.mktemp("demo") / "songs"  # not there yet: made by the call
    paths = write_demo_songs(directory, n_songs=3, seconds=(1.0, 2.0), seed=10)
    return directory, paths


def test_demo_songs_names_and_order(demo_dir: tuple[Path, list[Path]]) -> None:
    directory, paths = demo_dir
    assert paths == [directory / f"demo-{seed:05d}.mp3" for seed in (10, 11, 12)]
    assert all(path.is_file() for path in paths)
    assert sorted(os.listdir(directory)) == [path.name for path in paths]  # no .partial left


def test_demo_songs_are_real_mp3s(demo_dir: tuple[Path, list[Path]]) -> None:
    _, paths = demo_dir
    for song_seed, path in zip((10, 11, 12), paths, strict=True):
        header = path.read_bytes()[:3]
        assert header == b"ID3" or header[0] == 0xFF
        decoded = decode_audio(str(path))
        assert decoded.channels == 2
        assert decoded.sample_rate == SAMPLE_RATE
        seconds = expected_seconds(song_seed, 1.0, 2.0)
        assert 1.0 <= seconds <= 2.0
        assert decoded.seconds == pytest.approx(seconds, abs=0.1)
        assert np.abs(decoded.samples).max() > 0.1  # not silent after the mono mix


def test_demo_songs_have_different_lengths(demo_dir: tuple[Path, list[Path]]) -> None:
    _, paths = demo_dir
    lengths = [decode_audio(str(path)).seconds for path in paths]
    assert len({round(length, 2) for length in lengths}) == len(paths)


def test_demo_songs_are_not_rewritten(demo_dir: tuple[Path, list[Path]]) -> None:
    directory, paths = demo_dir
    for path in paths:
        os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    contents = [path.read_bytes() for path in paths]

    again = write_demo_songs(directory, n_songs=3, seconds=(1.0, 2.0), seed=10)

    assert again == paths
    assert [path.stat().st_mtime_ns for path in paths] == [OLD_MTIME_NS] * 3
    assert [path.read_bytes() for path in paths] == contents


def test_demo_songs_only_missing_ones_are_written(tmp_path: Path) -> None:
    paths = write_demo_songs(tmp_path, n_songs=2, seconds=(1.0, 1.0), seed=0)
    for path in paths:
        os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    paths[1].unlink()

    more = write_demo_songs(tmp_path, n_songs=3, seconds=(1.0, 1.0), seed=0)

    assert more[:2] == paths
    assert more[0].stat().st_mtime_ns == OLD_MTIME_NS
    assert more[1].is_file() and more[1].stat().st_mtime_ns != OLD_MTIME_NS
    assert more[2].is_file()
    assert sorted(os.listdir(tmp_path)) == [path.name for path in more]


def test_demo_wav_matches_synthesize_song(tmp_path: Path) -> None:
    # Known answer: the WAV decodes to the mono mix of synthesize_song(seed, length).
    low, high = 1.0, 1.5
    [path] = write_demo_songs(tmp_path, n_songs=1, seconds=(low, high), seed=3, format="wav")
    assert path.name == "demo-00003.wav"
    song = synthesize_song(seed=3, seconds=expected_seconds(3, low, high))
    decoded = decode_audio(str(path))
    assert decoded.channels == 2
    assert decoded.samples.shape == (song.shape[0],)
    np.testing.assert_allclose(decoded.samples, song.mean(axis=1), atol=1e-4)


def test_demo_songs_at_other_sample_rate(tmp_path: Path) -> None:
    [path] = write_demo_songs(
        tmp_path, n_songs=1, seconds=(1.0, 1.0), seed=0, format="wav", sample_rate=22050
    )
    decoded = decode_audio(str(path), sample_rate=22050)
    assert decoded.samples.shape == (22050,)


def test_demo_songs_accept_str_directory(tmp_path: Path) -> None:
    paths = write_demo_songs(str(tmp_path / "a" / "b"), n_songs=1, seconds=(1.0, 1.0))
    assert paths == [tmp_path / "a" / "b" / "demo-00000.mp3"]
    assert paths[0].is_file()


@pytest.mark.parametrize("n_songs", [0, -2])
def test_demo_songs_reject_bad_count(tmp_path: Path, n_songs: int) -> None:
    with pytest.raises(ConfigError, match=repr(n_songs)):
        write_demo_songs(tmp_path, n_songs=n_songs, seconds=(1.0, 1.0))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("seconds", [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0), (0.0, 0.0)])
def test_demo_songs_reject_bad_seconds(tmp_path: Path, seconds: tuple[float, float]) -> None:
    with pytest.raises(ConfigError) as raised:
        write_demo_songs(tmp_path / "out", n_songs=1, seconds=seconds)
    assert repr(seconds) in str(raised.value)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_demo_songs_reject_unknown_format(tmp_path: Path) -> None:
    # Like every other bad argument: a ConfigError naming the value, and no stray file.
    with pytest.raises(ConfigError, match="foo"):
        write_demo_songs(tmp_path, n_songs=1, seconds=(1.0, 1.0), format="foo")
    assert not any(tmp_path.glob("*.foo*"))
