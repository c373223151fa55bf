"""Synthetic demo songs: notes, chords, bass and drums, seeded, encoded as real files.

Used by ``musicflow demo``, the tests and the benchmarks, so nothing is downloaded.
Every song is a deterministic function of its seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.audio.encode import encode_audio
from tasks.config import check_choice
from tasks.errors import ConfigError

DEMO_FORMATS = ("mp3", "wav", "ogg", "flac")
# Semitone offsets of a few chord progressions (I-V-vi-IV and friends) in a major key.
_PROGRESSIONS = ((0, 7, 9, 5), (0, 5, 7, 5), (9, 5, 0, 7), (0, 9, 5, 7))
_MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
_MAJOR_TRIAD = (0, 4, 7)
_MINOR_TRIAD = (0, 3, 7)


def _note(freq: float, n: int, sample_rate: int, *, harmonics: int = 3, decay: float = 3.0) -> np.ndarray:
    t = np.arange(n) / sample_rate
    tone = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, harmonics + 1))
    attack = np.minimum(1.0, t / 0.01)
    return (tone * attack * np.exp(-decay * t)).astype(np.float32)


def _kick(n: int, sample_rate: int) -> np.ndarray:
    t = np.arange(n) / sample_rate
    freq = 50 + 100 * np.exp(-30 * t)
    return (np.sin(2 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-12 * t)).astype(np.float32)


def _noise_hit(n: int, sample_rate: int, rng: np.random.Generator, *, decay: float) -> np.ndarray:
    t = np.arange(n) / sample_rate
    return (rng.standard_normal(n) * np.exp(-decay * t)).astype(np.float32)


def synthesize_song(*, seed: int, seconds: float, sample_rate: int = 44100) -> np.ndarray:
    """Make one song.

    Parameters
    ----------
    seed : int
        Everything (key, tempo, progression, melody, panning) follows from it.
    seconds : float
        Length of the song.
    sample_rate : int

    Returns
    -------
    np.ndarray, shape [round(seconds * sample_rate), 2], float32 in [-1, 1]
        Stereo, so decoding exercises the mono mix.
    """
    n = round(seconds * sample_rate) if seconds > 0 else 0
    if n < 1:
        raise ConfigError(f"invalid seconds {seconds!r}: must give at least one sample")
    rng = np.random.default_rng(seed)
    left = np.zeros(n, dtype=np.float32)
    right = np.zeros(n, dtype=np.float32)

    def add(signal: np.ndarray, start: int, gain: float, pan: float) -> None:
        end = min(n, start + signal.shape[0])
        if start < end:
            piece = signal[: end - start] * gain
            left[start:end] += piece * (1.0 - pan)
            right[start:end] += piece * (1.0 + pan)

    root = 220.0 * 2 ** (rng.integers(0, 12) / 12)
    beat = round(sample_rate * 60.0 / rng.uniform(80, 140))
    progression = _PROGRESSIONS[rng.integers(len(_PROGRESSIONS))]
    melody_pan = rng.uniform(-0.6, 0.6)
    bar = 4 * beat
    for bar_index, bar_start in enumerate(range(0, n, bar)):
        degree = progression[bar_index % len(progression)]
        triad = _MINOR_TRIAD if degree in (9, 2, 4) else _MAJOR_TRIAD
        chord_root = root * 2 ** (degree / 12)
        for interval in triad:
            add(
                _note(chord_root * 2 ** (interval / 12), bar, sample_rate, harmonics=2, decay=0.8),
                bar_start,
                0.08,
                -0.3,
            )
        add(_note(chord_root / 2, bar, sample_rate, harmonics=4, decay=1.5), bar_start, 0.15, 0.0)
        for step in range(8):  # eighth-note melody from the scale, some rests
            if rng.random() < 0.2:
                continue
            pitch = chord_root * 2 ** (_MAJOR_SCALE[rng.integers(len(_MAJOR_SCALE))] / 12 + 1)
            add(
                _note(pitch, beat, sample_rate, decay=6.0),
                bar_start + step * beat // 2,
                0.12,
                melody_pan,
            )
        for step in range(4):
            beat_start = bar_start + step * beat
            add(_kick(beat // 2, sample_rate), beat_start, 0.5, 0.0)
            if step % 2 == 1:
                add(_noise_hit(beat // 2, sample_rate, rng, decay=25.0), beat_start, 0.15, 0.1)
            add(
                _noise_hit(beat // 4, sample_rate, rng, decay=80.0),
                beat_start + beat // 2,
                0.05,
                0.4,
            )
    stereo = np.stack([left, right], axis=1)
    peak = float(np.abs(stereo).max()) or 1.0
    return (stereo * (0.89 / peak)).astype(np.float32)


def write_demo_songs(
    directory: str | Path,
    *,
    n_songs: int = 8,
    seconds: tuple[float, float] = (8.0, 30.0),
    seed: int = 0,
    format: str = "mp3",
    sample_rate: int = 44100,
) -> list[Path]:
    """Write ``n_songs`` synthetic songs to ``directory`` as real encoded files.

    Song ``i`` uses seed ``seed + i`` and a length drawn from ``seconds``; files are
    named ``demo-<seed>.<format>``. Existing files are kept, so calling it again is
    cheap. Returns the paths, in order.
    """
    check_choice("format", format, DEMO_FORMATS)
    if n_songs < 1:
        raise ConfigError(f"invalid n_songs {n_songs!r}: must be at least 1")
    low, high = seconds
    if not 0 < low <= high:
        raise ConfigError(f"invalid seconds {seconds!r}: need 0 < min <= max")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for song_seed in range(seed, seed + n_songs):
        path = directory / f"demo-{song_seed:05d}.{format}"
        if not path.exists():
            length = float(np.random.default_rng(song_seed).uniform(low, high))
            audio = synthesize_song(seed=song_seed, seconds=length, sample_rate=sample_rate)
            partial = path.with_suffix(path.suffix + ".partial")
            partial.write_bytes(encode_audio(audio, sample_rate=sample_rate, format=format))
            partial.rename(path)
        paths.append(path)
    return paths
