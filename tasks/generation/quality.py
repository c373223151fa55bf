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

Order is what the axes add (``frames``, which is this score, ``continuity`` and ``tonality``;
see the comment above :data:`AXES` and :func:`quality_report`'s ``axes``): each normalised between
an anchor lacking the property (shaped noise; the continuation shuffled in 46 ms grains) and the
real continuation, with the spread of other real audio and the product's round trip as ceiling.

This module is the maths alone (numpy and scipy, no store): finding a model's songs and a
run's clips in the store is :mod:`tasks.generation.evaluate`'s.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
import scipy.linalg
import scipy.signal

from tasks.errors import ConfigError
from tasks.features.transforms import mel_filterbank, scaled_hann

QUALITY_SAMPLE_RATE = 22050
QUALITY_N_FFT = 2048
QUALITY_HOP = 512
QUALITY_N_MELS = 64
DB_FLOOR = -100.0
ANCHOR_DRAWS = 4
# Frames a set needs for a covariance worth comparing (64 bands: ~1.5 s of audio).
MIN_FRAMES = 64

# --- the axes ------------------------------------------------------------------------------------------
#
# Each axis turns a set of audio into feature vectors, summarised by their mean and covariance and
# compared with the reference's by the Fréchet distance, like ``frames``. Each is normalised in the
# same run between an anchor that lacks the property (0) and the real continuation (1):
#
# - ``frames``: single log-mel frames (the score above); 0 = shaped noise.
# - ``continuity``: how long partials last and how the level moves, whatever the song's spectrum
#   and level. On the linear STFT (1025 bins), each frame's spectral peaks (local maxima within
#   PEAK_RANGE_DB of the frame's loudest bin and above PEAK_FLOOR_DB) are linked frame to frame (the
#   same bin +-1) into runs; per window of CONTINUITY_WINDOW frames (1.5 s, every 93 ms): the share
#   of the peaks' energy in runs of 1, 2-3, 4-7, 8-15, 16-31 and 32+ frames (log) and their
#   energy-weighted mean log2 run length, below and above SPLIT_HZ (where 128 mel bands smear
#   partials more), and the log mean and spread of the
#   spectral flux (mean rise in dB of the 64 log-mel bands) and the spread of the frame level.
#   Standardised by the reference's spread of each (so no one feature's unit dominates);
#   0 = the shuffled anchor.
# - ``tonality``: per window of TONAL_WINDOW frames (1.5 s), the mean pitch-class profile (chroma,
#   12), its stability (mean cosine of each frame's chroma to the window's) and the harmonic energy
#   ratio (HPSS on the mel power): which notes sound, whether they hold; 0 = the shuffled anchor.
#
# The shuffled anchor is the real continuation cut into grains (GRAIN-sample Hann windows every
# GRAIN_HOP samples at 22.05 kHz, 46 ms), the grains shuffled within each clip and overlap-added back:
# the same spectra, the same amount of audio, and no partial longer than a grain.

AXES = ("frames", "continuity", "tonality")
GRAIN = 2048
GRAIN_HOP = 1024
CONTINUITY_WINDOW = 64
CONTINUITY_STRIDE = 4
PEAK_RANGE_DB = 45.0
PEAK_FLOOR_DB = -80.0
# Run lengths in frames: the lower edge of each class (the last is open).
RUN_CLASSES = (1, 2, 4, 8, 16, 32)
SPLIT_HZ = 2000.0
SPLIT_BIN = round(SPLIT_HZ * QUALITY_N_FFT / QUALITY_SAMPLE_RATE)
# The flux ignores bands more than this far below the clip's loudest (its noise floor).
FLUX_RANGE_DB = 80.0
# Log floor of a share and of the flux statistics (a class with no energy is log(1e-3), not -inf).
LOG_FLOOR = 1e-3
# The least reference spread a continuity feature is standardised by (log units): a feature that
# never varies in the reference must not turn any deviation into an infinite distance.
MIN_SPREAD = 0.1
CONTINUITY_DIMS = 2 * (len(RUN_CLASSES) + 1) + 3
TONAL_WINDOW = 64
TONAL_STRIDE = 8
# HPSS median filters on the 64-band mel power: harmonic along time (0.4 s), percussive along bands.
HPSS_KERNEL = (17, 9)
# The least a set needs on each axis for a covariance worth comparing: (count, of what).
AXIS_NEEDS = {
    "frames": (MIN_FRAMES, "log-mel frames (hop 512 at 22.05 kHz)"),
    # one more window than features: the least for a covariance of full rank
    "continuity": (CONTINUITY_DIMS + 1, f"windows of {CONTINUITY_WINDOW} frames (1.5 s, every 93 ms)"),
    "tonality": (16, f"windows of {TONAL_WINDOW} frames (1.5 s)"),
}
AXIS_ANCHORS = {"frames": "shaped noise", "continuity": "shuffled real", "tonality": "shuffled real"}


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
    return _decibels(power_frames(audio, sample_rate=sample_rate) @ _mel_basis().T)


def power_frames(audio: np.ndarray, *, sample_rate: int) -> np.ndarray:
    """Power spectra [n_frames, 1025] of 2048-sample Hann frames (unit sum) every 512 samples of
    ``audio`` resampled to 22.05 kHz."""
    signal = resample(audio, sample_rate=sample_rate)
    if signal.size < QUALITY_N_FFT:
        signal = np.pad(signal, (0, QUALITY_N_FFT - signal.size))
    frames = np.lib.stride_tricks.sliding_window_view(signal, QUALITY_N_FFT)[::QUALITY_HOP]
    spectrum = scipy.fft.rfft(frames * scaled_hann(QUALITY_N_FFT), axis=1)
    return (np.square(spectrum.real) + np.square(spectrum.imag)).astype(np.float64)


def _decibels(power: np.ndarray) -> np.ndarray:
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
    axes: Sequence[str] = AXES,
    ceiling: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Score generated clips against the reference songs, with both anchors, and on each axis.

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
    axes : the axes to score (:data:`AXES`)
    ceiling : optional ``(round-tripped audio, the real audio it came from)``: the sound path's
        ceiling on each axis (see :func:`axes_report`)

    Returns
    -------
    dict
        ``quality``, ``d_gen``, ``d_real``, ``d_noise`` (all clips pooled), ``axes`` (per axis: score,
        distances, anchor, spread, ceiling; ``not_scored`` with the reason where the clips or the
        reference give too little audio for it), ``per_clip`` (each
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

    drawn: dict[str, list[list[np.ndarray]]] = {"real": [], "other": [], "noise": []}

    def anchors(lengths: list[int], follows: list[np.ndarray | None]) -> tuple[float, float, float]:
        """(d_real, d_other_songs, d_noise) of a set of clips of these lengths: the real set is each
        clip's continuation where it has one, an excerpt of another song where not. The sets drawn
        are kept in ``drawn`` (the axes' anchors and spread)."""
        d_real, d_other, d_noise = [], [], []
        drawn.update(real=[], other=[], noise=[])
        continued_set = [item for item in follows if item is not None]
        for _ in range(draws):
            others = excerpts(real, lengths, rng)
            d_other.append(frechet_distance(set_statistics(others, sample_rate=sample_rate), reference_stats))
            mixed = (
                continued_set
                if len(continued_set) == len(follows)  # the same set every draw: analysed once
                else [
                    item if item is not None else other for item, other in zip(follows, others, strict=True)
                ]
            )
            d_real.append(frechet_distance(set_statistics(mixed, sample_rate=sample_rate), reference_stats))
            noise = [shaped_noise(length, spectrum=spectrum, rms=level, rng=rng) for length in lengths]
            d_noise.append(frechet_distance(set_statistics(noise, sample_rate=sample_rate), reference_stats))
            drawn["real"].append(mixed)
            drawn["other"].append(others)
            drawn["noise"].append(noise)
        return float(np.mean(d_real)), float(np.mean(d_other)), float(np.mean(d_noise))

    def score(d_gen: float, d_real: float, d_noise: float) -> float | None:
        span = d_noise - d_real
        return round((d_noise - d_gen) / span, 4) if span > 1e-9 else None

    lengths = [clip.size for clip in clips]
    d_gen = frechet_distance(set_statistics(clips, sample_rate=sample_rate), reference_stats)
    d_real, d_other, d_noise = anchors(lengths, continued)
    n_continued = sum(item is not None for item in continued)
    axes_scored = score_axes(
        clips, reference, sample_rate=sample_rate, axes=axes, drawn=drawn, ceiling=ceiling, rng=rng
    )
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
        "axes": axes_scored,
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


def check_axes(axes: Sequence[str] | str | None) -> tuple[str, ...]:
    """The axes asked for, in :data:`AXES` order (None or empty: all); :class:`ConfigError` naming
    an unknown one."""
    if axes is None:
        return AXES
    names = [name.strip() for name in (axes.split(",") if isinstance(axes, str) else axes)]
    for name in names:
        if name not in AXES:
            raise ConfigError(f"unknown axis {name!r} (choose from {', '.join(AXES)})")
    return tuple(axis for axis in AXES if axis in names) or AXES


def shuffled(audio: np.ndarray, *, sample_rate: int, rng: np.random.Generator, group: int = 1) -> np.ndarray:
    """``audio`` cut into Hann grains (GRAIN samples every GRAIN_HOP at 22.05 kHz, scaled to
    ``sample_rate``), shuffled in groups of ``group`` consecutive grains and overlap-added back:
    the same length and spectra, no partial longer than a grain."""
    size = max(4, round(GRAIN * sample_rate / QUALITY_SAMPLE_RATE)) // 2 * 2
    hop = size * GRAIN_HOP // GRAIN  # half the grain: the Hann windows sum to 1
    audio = np.asarray(audio, dtype=np.float32)
    n_grains = max(1, -(-(audio.size - hop) // hop))
    padded = np.pad(audio, (hop, n_grains * hop + size - audio.size - hop))
    window = scipy.signal.get_window("hann", size).astype(np.float32)  # periodic: sums to 1 at hop
    grains = np.stack([padded[i * hop : i * hop + size] * window for i in range(n_grains + 1)])
    order = np.arange(grains.shape[0]).reshape(-1, 1)
    groups = [order[start : start + group].ravel() for start in range(0, order.size, group)]
    permuted = np.concatenate([groups[i] for i in rng.permutation(len(groups))])
    out = np.zeros(padded.size, np.float32)
    for position, source in enumerate(permuted):
        out[position * hop : position * hop + size] += grains[source]
    return out[hop : hop + audio.size]


@dataclass
class Analysis:
    """The waveform features every axis reads, of one clip (at 22.05 kHz, hop 512)."""

    log_mel: np.ndarray  # [n_frames, 64] dB
    chroma: np.ndarray  # [n_frames, 12], each frame summing to 1 (0 for silence)
    harmonic: np.ndarray  # [n_frames] HPSS harmonic power
    total: np.ndarray  # [n_frames] harmonic + percussive power
    runs: np.ndarray  # [n_frames, 2, len(RUN_CLASSES) + 1] :func:`peak_runs`
    flux: np.ndarray  # [n_frames] mean rise (dB) of the log-mel bands from the previous frame
    level: np.ndarray  # [n_frames] dB of the frame's power


@functools.lru_cache(maxsize=1)
def _chroma_basis() -> np.ndarray:
    import librosa.filters

    return np.asarray(librosa.filters.chroma(sr=QUALITY_SAMPLE_RATE, n_fft=QUALITY_N_FFT), dtype=np.float64)


def analyse(audio: np.ndarray, *, sample_rate: int) -> Analysis:
    """One clip's :class:`Analysis` (one STFT for all the axes)."""
    import librosa.decompose

    power = power_frames(audio, sample_rate=sample_rate)
    mel = power @ _mel_basis().T
    chroma = power @ _chroma_basis().T
    sums = chroma.sum(axis=1, keepdims=True)
    chroma = np.divide(chroma, sums, out=np.zeros_like(chroma), where=sums > 1e-20)
    harmonic, percussive = librosa.decompose.hpss(mel.T, kernel_size=HPSS_KERNEL)
    log_mel = _decibels(mel)
    return Analysis(
        log_mel=log_mel,
        chroma=chroma,
        harmonic=harmonic.sum(axis=0),
        total=(harmonic + percussive).sum(axis=0),
        runs=peak_runs(power),
        flux=spectral_flux(log_mel),
        level=_decibels(power.sum(axis=1)),
    )


def spectral_peaks(power: np.ndarray) -> np.ndarray:
    """Which bins of power frames [n_frames, n_bins] are spectral peaks: local maxima within
    PEAK_RANGE_DB of their frame's loudest bin and above PEAK_FLOOR_DB (bool, same shape)."""
    db = _decibels(power)
    inner = db[:, 1:-1]
    peaks = np.zeros(db.shape, dtype=bool)
    peaks[:, 1:-1] = (
        (inner > db[:, :-2])
        & (inner >= db[:, 2:])
        & (inner > db.max(axis=1, keepdims=True) - PEAK_RANGE_DB)
        & (inner > PEAK_FLOOR_DB)
    )
    return peaks


def _with_neighbours(row: np.ndarray) -> np.ndarray:
    """Each bin's maximum over itself and its two neighbours."""
    out = row.copy()
    np.maximum(out[1:], row[:-1], out=out[1:])
    np.maximum(out[:-1], row[1:], out=out[:-1])
    return out


def run_lengths(peaks: np.ndarray) -> np.ndarray:
    """For each peak of ``peaks`` [n_frames, n_bins] (bool), the length in frames of the run it is
    part of, a peak continuing a peak of the previous frame in the same bin +-1 (the longest run
    through it); 0 where there is no peak."""
    n_frames, n_bins = peaks.shape
    before = np.zeros((n_frames, n_bins), dtype=np.int32)  # frames of the run up to and with this one
    after = np.zeros((n_frames, n_bins), dtype=np.int32)  # frames of the run from this one on
    previous = np.zeros(n_bins, dtype=np.int32)
    for frame in range(n_frames):
        previous = before[frame] = peaks[frame] * (1 + _with_neighbours(previous))
    previous = np.zeros(n_bins, dtype=np.int32)
    for frame in range(n_frames - 1, -1, -1):
        previous = after[frame] = peaks[frame] * (1 + _with_neighbours(previous))
    return np.where(peaks, before + after - 1, 0)


def peak_runs(power: np.ndarray) -> np.ndarray:
    """Of power frames [n_frames, 1025], per frame, below and above SPLIT_HZ: the power of the
    spectral peaks in runs of each length class (RUN_CLASSES), then their power times log2 of their
    run's length (the power-weighted mean log length, once divided by the power):
    [n_frames, 2, len(RUN_CLASSES) + 1]."""
    peaks = spectral_peaks(power)
    frames, bins = np.nonzero(peaks)
    lengths = run_lengths(peaks)[frames, bins]
    classes = np.searchsorted(RUN_CLASSES, lengths, side="right") - 1
    columns = len(RUN_CLASSES) + 1
    cells = (frames * 2 + (bins >= SPLIT_BIN)) * columns
    weights = power[frames, bins]
    by_class = np.zeros(peaks.shape[0] * 2 * columns)  # float even with no peak (silence)
    by_class += np.bincount(cells + classes, weights=weights, minlength=by_class.size)
    by_class += np.bincount(cells + columns - 1, weights=weights * np.log2(lengths), minlength=by_class.size)
    return by_class.reshape(-1, 2, columns)


def spectral_flux(log_mel: np.ndarray) -> np.ndarray:
    """Per frame of log-mel frames [n_frames, n_bands] (dB), the mean rise over bands from the
    previous frame, bands floored FLUX_RANGE_DB under the clip's loudest (0 for the first frame)."""
    if log_mel.shape[0] == 0:
        return np.zeros(0)
    floored = np.maximum(log_mel, log_mel.max() - FLUX_RANGE_DB)
    return np.concatenate([[0.0], np.maximum(np.diff(floored, axis=0), 0.0).mean(axis=1)])


def _continuity_windows(item: Analysis) -> np.ndarray:
    rows = []
    for start in range(0, item.runs.shape[0] - CONTINUITY_WINDOW + 1, CONTINUITY_STRIDE):
        stop = start + CONTINUITY_WINDOW
        runs = item.runs[start:stop].sum(axis=0)
        totals = runs[:, :-1].sum(axis=1, keepdims=True)
        shares = np.divide(runs, totals, out=np.zeros_like(runs), where=totals > 0)
        flux = item.flux[start + 1 : stop]
        motion = [flux.mean(), flux.std(), item.level[start:stop].std()]
        rows.append(
            np.concatenate(
                [
                    np.log(shares[:, :-1] + LOG_FLOOR).ravel(),
                    shares[:, -1],  # mean log2 run length
                    np.log(np.add(motion, LOG_FLOOR)),
                ]
            )
        )
    return np.array(rows).reshape(-1, CONTINUITY_DIMS)


def _tonal_windows(item: Analysis) -> np.ndarray:
    n = item.chroma.shape[0]
    rows = []
    for start in range(0, n - TONAL_WINDOW + 1, TONAL_STRIDE):
        chroma = item.chroma[start : start + TONAL_WINDOW]
        mean = chroma.mean(axis=0)
        norms = np.linalg.norm(chroma, axis=1) * (np.linalg.norm(mean) or 1.0)
        cosine = np.divide(chroma @ mean, norms, out=np.zeros(len(chroma)), where=norms > 0)
        total = float(item.total[start : start + TONAL_WINDOW].sum())
        ratio = float(item.harmonic[start : start + TONAL_WINDOW].sum()) / total if total > 0 else 0.0
        rows.append(np.concatenate([mean, [cosine.mean(), ratio]]))
    return np.array(rows).reshape(-1, 14)


def axis_units(axis: str, analyses: Sequence[Analysis]) -> int:
    """How many of the axis's feature vectors (frames, patches, windows) a set gives."""
    return int(sum(axis_features(axis, [item], basis=None).shape[0] for item in analyses))


def axis_features(
    axis: str, analyses: Sequence[Analysis], *, basis: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    """The axis's feature vectors of a set of clips, pooled; ``basis`` (mean, matrix) projects
    the continuity windows (None: as they are)."""
    if axis == "frames":
        return np.concatenate([item.log_mel for item in analyses])
    if axis == "continuity":
        windows = np.concatenate([_continuity_windows(item) for item in analyses])
        return windows if basis is None else (windows - basis[0]) @ basis[1].T
    if axis == "tonality":
        return np.concatenate([_tonal_windows(item) for item in analyses])
    raise ConfigError(f"unknown axis {axis!r} (choose from {', '.join(AXES)})")


def continuity_basis(reference: Sequence[Analysis]) -> tuple[np.ndarray, np.ndarray]:
    """The continuity axis's standardisation, fitted on the reference's windows: their mean and
    the diagonal matrix of 1 / their spread (at least MIN_SPREAD) [CONTINUITY_DIMS, CONTINUITY_DIMS]."""
    windows = axis_features("continuity", reference, basis=None)
    return windows.mean(axis=0), np.diag(1.0 / np.maximum(windows.std(axis=0), MIN_SPREAD))


def _significant(value: float, digits: int = 5) -> float:
    return float(f"{value:.{digits}g}")


def normalised(d: float, *, zero: float, one: float) -> float | None:
    """``d`` on the scale where ``zero`` (the anchor's distance) is 0 and ``one`` (the real
    continuation's) is 1; None when the anchors are not ordered."""
    span = zero - one
    return round((zero - d) / span, 4) if span > 1e-9 else None


class AxisScorer:
    """The axes' distances of sets of clips against one reference (its statistics computed once)."""

    def __init__(self, reference: Sequence[np.ndarray], *, sample_rate: int, axes: Sequence[str] = AXES):
        self.sample_rate = sample_rate
        self.axes = tuple(axes)
        self.basis: tuple[np.ndarray, np.ndarray] | None = None
        self.reference: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.axes:
            self.fit(self.analyse(reference))

    def fit(self, reference: Sequence[Analysis]) -> None:
        """The reference's statistics on each axis (and the continuity basis)."""
        self.basis = continuity_basis(reference) if "continuity" in self.axes else None
        self.reference = {
            axis: frame_statistics(axis_features(axis, reference, basis=self.basis)) for axis in self.axes
        }

    def analyse(self, clips: Sequence[np.ndarray]) -> list[Analysis]:
        return [analyse(clip, sample_rate=self.sample_rate) for clip in clips]

    def distance(self, axis: str, analyses: Sequence[Analysis]) -> float:
        features = axis_features(axis, analyses, basis=self.basis)
        return frechet_distance(frame_statistics(features), self.reference[axis])

    def missing(self, analyses: Sequence[Analysis], *, source: str = "the clips") -> dict[str, str]:
        """The axes this set (``source``: what it is, in the reason) has too little audio for, each
        with the reason."""
        found = {}
        for axis in self.axes:
            need, unit = AXIS_NEEDS[axis]
            have = axis_units(axis, analyses)
            if have < need:
                found[axis] = f"needs at least {need} {unit}, {source} give {have}"
        return found


def axes_report(
    scorer: AxisScorer,
    clips: Sequence[Analysis],
    *,
    real: Sequence[Sequence[np.ndarray]],
    noise: Sequence[Sequence[np.ndarray]],
    spread: Sequence[Sequence[np.ndarray]],
    ceiling: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Each axis of ``clips``: its score, distances and anchors, the spread of same-sized draws of
    real audio, and the ceiling.

    ``real`` is a few draws of the real continuation set (the 1 of every axis; draws that are the
    same list are analysed once), ``noise`` the shaped-noise draws (frames' 0), ``spread`` draws of
    other real audio of the clips' size, and ``ceiling`` (round-tripped, the real audio it came from),
    the product's sound path, scored against anchors made from the same real audio.
    """
    analysed: dict[int, list[Analysis]] = {}

    def of(clip_set: Sequence[np.ndarray]) -> list[Analysis]:
        if id(clip_set) not in analysed:
            analysed[id(clip_set)] = scorer.analyse(clip_set)
        return analysed[id(clip_set)]

    def anchors(
        real_sets: Sequence[Sequence[np.ndarray]],
        noise_sets: Sequence[Sequence[np.ndarray]],
        axes: Sequence[str],
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Mean distances per axis of the real sets (1) and of each axis's anchor (0): the real
        sets shuffled, or the noise sets."""
        one: dict[str, list[float]] = {axis: [] for axis in axes}
        zero: dict[str, list[float]] = {axis: [] for axis in axes}
        by_anchor = {
            name: [axis for axis in axes if AXIS_ANCHORS[axis] == name] for name in set(AXIS_ANCHORS.values())
        }
        for real_set in real_sets:
            for axis in axes:
                one[axis].append(scorer.distance(axis, of(real_set)))
            if by_anchor["shuffled real"]:
                mixed = scorer.analyse(
                    [shuffled(clip, sample_rate=scorer.sample_rate, rng=rng) for clip in real_set]
                )
                for axis in by_anchor["shuffled real"]:
                    zero[axis].append(scorer.distance(axis, mixed))
        for noise_set in noise_sets if by_anchor["shaped noise"] else []:
            noise_analyses = scorer.analyse(noise_set)
            for axis in by_anchor["shaped noise"]:
                zero[axis].append(scorer.distance(axis, noise_analyses))
        return {axis: float(np.mean(one[axis])) for axis in axes}, {
            axis: float(np.mean(zero[axis])) for axis in axes
        }

    d_real, d_zero = anchors(real, noise, scorer.axes)
    spread_scores: dict[str, list[float | None]] = {axis: [] for axis in scorer.axes}
    for draw in spread:
        draw_analyses = scorer.analyse(draw)
        for axis in scorer.axes:
            distance = scorer.distance(axis, draw_analyses)
            spread_scores[axis].append(normalised(distance, zero=d_zero[axis], one=d_real[axis]))
    ceiling_scores: dict[str, Any] = {}
    if ceiling is not None:
        trip, source = ceiling
        trip_analyses = scorer.analyse(trip)
        short = scorer.missing(trip_analyses)
        # The first noise draw, recut to the round trip's lengths: the same amount of audio.
        pooled = np.concatenate(noise[0])
        cuts = np.cumsum([0] + [item.size for item in source])
        trip_noise = [pooled[start:stop] for start, stop in itertools.pairwise(cuts)]
        scored = [axis for axis in scorer.axes if axis not in short]
        trip_real, trip_zero = anchors([source], [trip_noise], scored)
        for axis in scored:
            distance = scorer.distance(axis, trip_analyses)
            ceiling_scores[axis] = normalised(distance, zero=trip_zero[axis], one=trip_real[axis])
    report: dict[str, Any] = {}
    for axis in scorer.axes:
        d_gen = scorer.distance(axis, clips)
        values = [value for value in spread_scores[axis] if value is not None]
        report[axis] = {
            "score": normalised(d_gen, zero=d_zero[axis], one=d_real[axis]),
            "d_gen": _significant(d_gen),
            "d_real": _significant(d_real[axis]),
            "d_anchor": _significant(d_zero[axis]),
            "anchor": AXIS_ANCHORS[axis],
            "spread": {
                "mean": round(float(np.mean(values)), 4) if values else None,
                "std": round(float(np.std(values)), 4) if values else None,
                "draws": len(spread_scores[axis]),
            },
            "ceiling": ceiling_scores.get(axis),
        }
    return report


def score_axes(
    clips: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    *,
    sample_rate: int,
    axes: Sequence[str],
    drawn: dict[str, list[list[np.ndarray]]],
    ceiling: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """:func:`axes_report` of the clips on the axes both they and the reference have audio for; the
    others ``{"score": None, "not_scored": reason}``. ``drawn``: :func:`quality_report`'s draws of
    real continuations (``real``), other songs (``other``, the spread) and shaped noise."""
    scorer = AxisScorer(reference, sample_rate=sample_rate, axes=())
    reference_analyses = scorer.analyse(reference)
    clip_analyses = scorer.analyse(clips)
    scorer.axes = tuple(check_axes(list(axes)))
    not_scored = scorer.missing(reference_analyses, source="the reference songs")
    not_scored |= {axis: why for axis, why in scorer.missing(clip_analyses).items() if axis not in not_scored}
    scorer.axes = tuple(axis for axis in scorer.axes if axis not in not_scored)
    scorer.fit(reference_analyses)
    report = axes_report(
        scorer,
        clip_analyses,
        real=drawn["real"],
        noise=drawn["noise"],
        spread=drawn["other"],
        ceiling=ceiling,
        rng=rng,
    )
    for axis, reason in not_scored.items():
        report[axis] = {"score": None, "not_scored": reason}
    return {axis: report[axis] for axis in AXES if axis in report}
