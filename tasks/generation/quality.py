"""The quality score: how close generated clips come to real songs the model did not train on.

Every clip, every reference and every anchor is turned into the same features,
computed from the waveform alone and independent of the model's own
representation: 64-band log-mel frames (dB, full scale = 0 dB, floor -100 dB)
of 2048-sample Hann frames every 512 samples at 22.05 kHz. A set of audio is
summarised by the mean and covariance of its frames, and two sets are compared
by the Fréchet distance of those Gaussians (as FAD/FID, on log-mel frames
instead of embeddings)::

    D(a, b) = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))

The reference is the model's validation songs. Two anchors are measured in the
same run, on the same reference, with the same amount of audio as the clips
(same count, same lengths):

- ``d_real``, the floor: real music standing in for the clips. A clip seeded with
  the start of a validation song (the default) is measured against that song's
  own continuation, the audio right after the seed, which is what a perfect model
  would have made; the reference then starts after the seed and the clip, so the
  two never share a frame. Other clips (seeded by a file or noise) get excerpts of
  other real songs (the training songs), averaged over a few draws. The latter
  (``d_other_songs``, always reported) is a loose floor on a varied collection: on
  drascula-music other songs are further from the validation songs than shaped
  noise is, while the clips, which continue the validation songs, are closer than
  both; the continuation is the comparison that stays ordered.
- ``d_noise``: noise shaped to the training songs' average spectrum and level:
  what a model that only learned the spectrum would give (averaged over draws).

``quality = (d_noise - d_gen) / (d_noise - d_real)``: about 1 is as close as
real music, 0 or below is no better than shaped noise.

What it tells: whether the clips have the spectra, the spread of spectra over
time (loud and quiet frames, notes and hits) and the band-to-band correlations
(timbre, harmony) of the songs. What it does not tell: frame order (rhythm,
melody, form are invisible to frame statistics: a clip of shuffled real frames
scores like real music), phase artefacts that leave the magnitudes alone, or
whether a listener likes it. Onset rate, loudness and the collapse and
memorisation flags cover part of the rest; it is a proxy, not a listening test.

This module is the maths alone (numpy and scipy, no store): finding a model's songs and a
run's clips in the store is :mod:`tasks.generation.evaluate`'s.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft
import scipy.linalg
import scipy.signal

from tasks.features.transforms import mel_filterbank, scaled_hann

QUALITY_SAMPLE_RATE = 22050
QUALITY_N_FFT = 2048
QUALITY_HOP = 512
QUALITY_N_MELS = 64
DB_FLOOR = -100.0
ANCHOR_DRAWS = 4
# Frames a set needs for a covariance worth comparing (64 bands: ~1.5 s of audio).
MIN_FRAMES = 64


@functools.lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    return mel_filterbank(QUALITY_SAMPLE_RATE, QUALITY_N_FFT, QUALITY_N_MELS)


def resample(audio: np.ndarray, *, sample_rate: int, target: int = QUALITY_SAMPLE_RATE) -> np.ndarray:
    """``audio`` at ``target`` Hz (polyphase filter; a copy when the rate already matches)."""
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate == target:
        return audio.copy()
    divisor = math.gcd(int(sample_rate), int(target))
    return scipy.signal.resample_poly(audio, target // divisor, sample_rate // divisor).astype(np.float32)


def log_mel_frames(audio: np.ndarray, *, sample_rate: int) -> np.ndarray:
    """The score's features of a mono clip.

    Returns
    -------
    np.ndarray, shape [n_frames, 64], float64
        dB of the mel band power (the window normalised to unit sum), floored at -100 dB.
    """
    signal = resample(audio, sample_rate=sample_rate)
    if signal.size < QUALITY_N_FFT:
        signal = np.pad(signal, (0, QUALITY_N_FFT - signal.size))
    frames = np.lib.stride_tricks.sliding_window_view(signal, QUALITY_N_FFT)[::QUALITY_HOP]
    spectrum = scipy.fft.rfft(frames * scaled_hann(QUALITY_N_FFT), axis=1)
    power = (np.square(spectrum.real) + np.square(spectrum.imag)).astype(np.float64) @ _mel_basis().T
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-30)), DB_FLOOR)


def temporal_variation(frames: np.ndarray) -> float:
    """Mean over bands of the standard deviation over time of log-mel frames [n_frames, n_bands],
    in dB: ~14 dB for the demo songs, under 2 dB for a held chord or stationary noise."""
    return float(np.asarray(frames).std(axis=0).mean()) if len(frames) > 1 else 0.0


def frame_statistics(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [n_bands] and covariance [n_bands, n_bands] of frames [n_frames, n_bands]."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.shape[0] < 2:
        return frames.mean(axis=0), np.zeros((frames.shape[1], frames.shape[1]))
    return frames.mean(axis=0), np.cov(frames, rowvar=False)


def frechet_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance between the Gaussians ``(mean, covariance)`` ``a`` and ``b``."""
    (mu_a, cov_a), (mu_b, cov_b) = a, b
    with warnings.catch_warnings():  # a silent set has a singular covariance: that is expected
        warnings.simplefilter("ignore")
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # regularise both (as FID does)
            eye = np.eye(cov_a.shape[0]) * 1e-6
            root = scipy.linalg.sqrtm((cov_a + eye) @ (cov_b + eye))
    root = np.real(root)
    distance = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    return max(distance, 0.0)


def set_statistics(clips: Sequence[np.ndarray], *, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame statistics of a set of clips, their frames pooled."""
    frames = np.concatenate([log_mel_frames(clip, sample_rate=sample_rate) for clip in clips])
    return frame_statistics(frames)


def average_spectrum(songs: Sequence[np.ndarray], *, n_fft: int = 4096) -> np.ndarray:
    """Average power spectrum (Welch) of the songs, shape [n_fft // 2 + 1]."""
    spectra = [
        scipy.signal.welch(song, nperseg=min(n_fft, song.size))[1] for song in songs if song.size >= 256
    ]
    resized = [np.interp(np.linspace(0, 1, n_fft // 2 + 1), np.linspace(0, 1, s.size), s) for s in spectra]
    return np.mean(resized, axis=0) if resized else np.ones(n_fft // 2 + 1)


def shaped_noise(n_samples: int, *, spectrum: np.ndarray, rms: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of ``n_samples`` with the power spectrum ``spectrum`` (any length, 0 to
    Nyquist) and the RMS level ``rms``."""
    white = rng.standard_normal(n_samples)
    shaped_spectrum = scipy.fft.rfft(white)
    gains = np.sqrt(
        np.interp(np.linspace(0, 1, shaped_spectrum.size), np.linspace(0, 1, spectrum.size), spectrum)
    )
    noise = scipy.fft.irfft(shaped_spectrum * gains, n=n_samples)
    level = float(np.sqrt(np.mean(noise**2))) or 1.0
    return (noise * (rms / level)).astype(np.float32)


def rms_of(songs: Sequence[np.ndarray]) -> float:
    total = sum(float(np.sum(np.square(song, dtype=np.float64))) for song in songs)
    count = sum(song.size for song in songs)
    return math.sqrt(total / count) if count else 0.0


def loudness_lufs(audio: np.ndarray, *, sample_rate: int) -> float | None:
    """Integrated loudness (ITU-R BS.1770, pyloudnorm) in LUFS; None when shorter than 0.4 s or
    silent."""
    import pyloudnorm

    if audio.size < int(0.4 * sample_rate) + 1:
        return None
    value = float(pyloudnorm.Meter(sample_rate).integrated_loudness(np.asarray(audio, dtype=np.float64)))
    return round(value, 3) if math.isfinite(value) else None


def onset_rate(audio: np.ndarray, *, sample_rate: int) -> float:
    """Note onsets per second (librosa's spectral-flux onset detector at 22.05 kHz)."""
    import librosa.onset

    signal = resample(audio, sample_rate=sample_rate)
    if signal.size < QUALITY_N_FFT or not np.any(signal):
        return 0.0
    onsets = librosa.onset.onset_detect(y=signal, sr=QUALITY_SAMPLE_RATE, units="time")
    return round(len(onsets) / (signal.size / QUALITY_SAMPLE_RATE), 4)


def excerpts(
    songs: Sequence[np.ndarray], lengths: Sequence[int], rng: np.random.Generator
) -> list[np.ndarray]:
    """One random excerpt of each length, each from a random song (a whole song when shorter)."""
    picked = []
    for length in lengths:
        song = songs[int(rng.integers(len(songs)))]
        start = int(rng.integers(0, max(1, song.size - length + 1)))
        picked.append(song[start : start + length])
    return picked


def quality_report(
    clips: Sequence[np.ndarray],
    *,
    reference: Sequence[np.ndarray],
    real: Sequence[np.ndarray],
    sample_rate: int,
    seed: int = 0,
    draws: int = ANCHOR_DRAWS,
    continuations: Sequence[np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Score generated clips against the reference songs, with both anchors.

    Parameters
    ----------
    clips : generated mono clips, float32 at ``sample_rate``
    reference : the validation songs (the model never trained on them)
    real : other real songs (the training songs): the real anchor's excerpts and the noise
        anchor's spectrum and level
    sample_rate : int
    seed : int
        The anchors' excerpts and noise are drawn from it, so a report is reproducible.
    continuations : optional, one per clip
        The real audio that follows each clip's seed in its song (None where there is none):
        when every clip has one, they are the real anchor; else excerpts of ``real`` are.

    Returns
    -------
    dict
        ``quality``, ``d_gen``, ``d_real``, ``d_noise`` (all clips pooled), ``per_clip`` (each
        clip scored alone, against anchors of its own length), ``loudness`` (clips' and training
        songs' LUFS and their difference) and ``onset_rate`` (clips' and training songs').
    """
    if not clips or not reference or not real:
        raise ValueError("quality_report needs clips, reference songs and real songs")
    rng = np.random.default_rng(seed)
    reference_stats = set_statistics(reference, sample_rate=sample_rate)
    spectrum, level = average_spectrum(real), rms_of(real)

    continued: list[np.ndarray | None] = (
        list(continuations) if continuations is not None else [None] * len(clips)
    )

    def anchors(lengths: list[int], follows: list[np.ndarray | None]) -> tuple[float, float, float]:
        """(d_real, d_other_songs, d_noise) of a set of clips of these lengths: the real set is each
        clip's continuation where it has one, an excerpt of another song where not."""
        d_real, d_other, d_noise = [], [], []
        for _ in range(draws):
            others = excerpts(real, lengths, rng)
            d_other.append(frechet_distance(set_statistics(others, sample_rate=sample_rate), reference_stats))
            mixed = [item if item is not None else other for item, other in zip(follows, others, strict=True)]
            d_real.append(frechet_distance(set_statistics(mixed, sample_rate=sample_rate), reference_stats))
            noise = [shaped_noise(length, spectrum=spectrum, rms=level, rng=rng) for length in lengths]
            d_noise.append(frechet_distance(set_statistics(noise, sample_rate=sample_rate), reference_stats))
        return float(np.mean(d_real)), float(np.mean(d_other)), float(np.mean(d_noise))

    def score(d_gen: float, d_real: float, d_noise: float) -> float | None:
        span = d_noise - d_real
        return round((d_noise - d_gen) / span, 4) if span > 1e-9 else None

    lengths = [clip.size for clip in clips]
    d_gen = frechet_distance(set_statistics(clips, sample_rate=sample_rate), reference_stats)
    d_real, d_other, d_noise = anchors(lengths, continued)
    n_continued = sum(item is not None for item in continued)
    per_clip = []
    for clip, follows in zip(clips, continued, strict=True):
        clip_gen = frechet_distance(set_statistics([clip], sample_rate=sample_rate), reference_stats)
        clip_real, _, clip_noise = (
            (d_real, d_other, d_noise) if len(clips) == 1 else anchors([clip.size], [follows])
        )
        per_clip.append(
            {
                "quality": score(clip_gen, clip_real, clip_noise),
                "d_gen": round(clip_gen, 3),
                "d_real": round(clip_real, 3),
                "d_noise": round(clip_noise, 3),
                "lufs": loudness_lufs(clip, sample_rate=sample_rate),
                "onset_rate": onset_rate(clip, sample_rate=sample_rate),
            }
        )
    real_excerpts = excerpts(real, lengths * draws, rng)
    train_lufs = [
        value for song in real_excerpts if (value := loudness_lufs(song, sample_rate=sample_rate)) is not None
    ]
    clip_lufs = [item["lufs"] for item in per_clip if item["lufs"] is not None]
    loudness_train = float(np.median(train_lufs)) if train_lufs else None
    loudness_clips = float(np.median(clip_lufs)) if clip_lufs else None
    return {
        "quality": score(d_gen, d_real, d_noise),
        "d_gen": round(d_gen, 3),
        "d_real": round(d_real, 3),
        "d_noise": round(d_noise, 3),
        "real_anchor": (
            "continuations" if n_continued == len(clips) else "mixed" if n_continued else "other songs"
        ),
        "d_other_songs": round(d_other, 3),
        "features": (
            f"log-mel {QUALITY_N_MELS} bands, n_fft {QUALITY_N_FFT}, hop {QUALITY_HOP} "
            f"at {QUALITY_SAMPLE_RATE} Hz"
        ),
        "per_clip": per_clip,
        "loudness": {
            "clips_lufs": None if loudness_clips is None else round(loudness_clips, 3),
            "train_lufs": None if loudness_train is None else round(loudness_train, 3),
            "difference_db": (
                None
                if loudness_clips is None or loudness_train is None
                else round(loudness_clips - loudness_train, 3)
            ),
        },
        "onset_rate": {
            "clips": round(float(np.mean([item["onset_rate"] for item in per_clip])), 4),
            "train": round(
                float(np.mean([onset_rate(song, sample_rate=sample_rate) for song in real_excerpts])), 4
            ),
        },
        "reference_seconds": round(sum(song.size for song in reference) / sample_rate, 2),
        "real_seconds": round(sum(song.size for song in real) / sample_rate, 2),
        "draws": draws,
    }
