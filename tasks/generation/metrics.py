"""Quality metrics of generated audio, and the collapse and memorisation checks.

The seed had none; these say whether a clip is music-like (level, spectrum
against the training data's distribution) or collapsed into silence, white
noise or a loop, and whether it copies training audio: the nearest training window, and the
longest span a clip copies from one training song (:func:`longest_copy`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.config import FeatureConfig
from tasks.features.transforms import POWER_FLOOR, mel_filterbank
from tasks.generation.quality import log_mel_frames, run_lengths, temporal_variation

SILENCE_DBFS = -60.0
# Spectral flatness of Gaussian white noise is exp(-euler_gamma) ~ 0.56; music sits far below.
NOISE_FLATNESS = 0.4
# Blocks repeating (waveform correlation at some lag) this closely means a loop.
LOOP_CORRELATION = 0.98
MAX_LOOP_LAG = 16
MEMORISED_SIMILARITY = 0.95
# Log-mel bands that vary over time by less than this (dB, std over time averaged over bands) mean a
# held drone or stationary noise: the demo songs vary by ~14 dB, white noise by 1.6 dB, a held sine by 0.
STATIC_VARIATION_DB = 2.5
# A clip needs this much audio before its variation over time says anything.
STATIC_MIN_SECONDS = 1.0
# Blocks the collapse checks cut a clip into when the transform has no block of its own (stft).
ANALYSIS_BLOCK_SECONDS = 0.25
# The longest copied span (docs/quality.md, "Memorisation"): a clip and a training song are compared
# in units of about this long (stft: 8 frames of 11.6 ms, starting at every frame on the training
# side; a block layout: one block), as log power in bands (a block's real||imag in this many mel
# bands), standardised and reduced to this many principal components (of the rows, then of units).
COPY_UNIT_SECONDS = 0.09
COPY_BLOCK_BANDS = 64
COPY_DIMS = 32
# Cosine similarity at which two units match. Calibrated on the demo songs (docs/quality.md): a
# copy scores 1, a copy under sampling noise stays above it, while other demo songs (one synthesiser,
# the same pitches) cross it for a few units at most.
COPY_SIMILARITY = 0.98
# A run of matching units along one offset survives this many seconds (at least one unit) below
# the threshold: a copy with a sampled glitch is still one copy.
COPY_GAP_SECONDS = 0.1
# Units whose loudest band is this far (dB) under the training units' median never match: silence is
# not a copy.
COPY_QUIET_DB = 40.0
# Clip units under this quantile of the training rows' levels are faint: they never match, and a
# run of matches goes on through up to COPY_FAINT_BRIDGE_SECONDS of them (beside the gap). The
# quietest twentieth of a collection is its fade-outs and reverb tails, whose noise floor any clip
# that fades out matches: on wesnoth-1.16-music three quiet clips "copied" 5.3-7.1 s of two songs'
# last seconds (0.65-1.1 s now); a verbatim 15 s excerpt of a training song still spans 3-15 s
# (its faint intro or tail not counted). A sampled copy's faint moments do not cut it in pieces.
COPY_FAINT_QUANTILE = 0.05
COPY_FAINT_BRIDGE_SECONDS = 0.3
# A copy at least this long names the song it comes from (unseen demo songs span up to 0.74 s by chance).
COPY_NAMED_SECONDS = 1.0


def analysis_block_size(features: FeatureConfig) -> int:
    """Samples per block of the metrics: the dataset's block (rfft/fft), else 0.25 s."""
    if features.transform in ("rfft", "fft"):
        return features.block_size
    return round(ANALYSIS_BLOCK_SECONDS * features.sample_rate)


def power_spectra(blocks: np.ndarray) -> np.ndarray:
    """Power spectrum of each block, shape [n_blocks, block_size // 2 + 1]."""
    return np.abs(np.fft.rfft(blocks.astype(np.float64), axis=1)) ** 2


def spectral_centroid(power: np.ndarray, *, sample_rate: int, block_size: int) -> np.ndarray:
    """Centroid in Hz of each power spectrum (0 for a silent block), shape [n_blocks]."""
    frequencies = np.fft.rfftfreq(block_size, 1.0 / sample_rate)
    total = power.sum(axis=1)
    return np.where(total > 0, (power * frequencies).sum(axis=1) / np.maximum(total, 1e-30), 0.0)


def spectral_flatness(power: np.ndarray) -> np.ndarray:
    """Geometric over arithmetic mean of each power spectrum, in [0, 1], shape [n_blocks]."""
    floor = 1e-20
    geometric = np.exp(np.log(power + floor).mean(axis=1))
    return geometric / (power.mean(axis=1) + floor)


def loop_score(blocks: np.ndarray) -> tuple[float, int]:
    """Highest mean waveform correlation between blocks ``lag`` apart, and that lag.

    Identical repeated blocks score 1.0 at their period.
    """
    n_blocks = blocks.shape[0]
    centred = blocks - blocks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    best, best_lag = 0.0, 0
    for lag in range(1, min(MAX_LOOP_LAG, n_blocks - 1) + 1):
        a, b = centred[:-lag], centred[lag:]
        denominator = norms[:-lag] * norms[lag:]
        valid = denominator > 1e-9
        if not valid.any():
            continue
        correlation = float(((a * b).sum(axis=1)[valid] / denominator[valid]).mean())
        if correlation > best:
            best, best_lag = correlation, lag
    return best, best_lag


def audio_metrics(
    audio: np.ndarray,
    *,
    sample_rate: int,
    block_size: int,
    reference: dict[str, float] | None = None,
    unclipped_peak: float | None = None,
    clipped_fraction: float = 0.0,
) -> dict[str, Any]:
    """Metrics of one clip (mono float in [-1, 1]).

    ``reference`` holds the training data's centroid/flatness mean and std
    (:func:`reference_distribution`); the clip's values are then also given as
    z-scores. ``collapsed`` names the failure or is None: "silence", "noise" (flat spectrum),
    "loop" (blocks repeat) or "static" (the spectrum barely changes over time: a held drone or
    stationary noise, the fixed point a fed-back model decays to).
    """
    n_blocks = max(1, audio.shape[0] // block_size)
    blocks = (
        audio[: n_blocks * block_size].reshape(n_blocks, -1)
        if audio.shape[0] >= block_size
        else audio[None, :]
    )
    power = power_spectra(blocks)
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    rms_dbfs = 20 * math.log10(rms) if rms > 0 else -math.inf
    audible = power.sum(axis=1) > 0
    centroid = (
        float(spectral_centroid(power, sample_rate=sample_rate, block_size=blocks.shape[1])[audible].mean())
        if audible.any()
        else 0.0
    )
    flatness = float(spectral_flatness(power)[audible].mean()) if audible.any() else 0.0
    loop, lag = loop_score(blocks)
    variation = (
        temporal_variation(log_mel_frames(audio, sample_rate=sample_rate))
        if audio.shape[0] >= STATIC_MIN_SECONDS * sample_rate
        else None
    )
    collapsed = None
    if rms_dbfs < SILENCE_DBFS:
        collapsed = "silence"
    elif flatness > NOISE_FLATNESS:
        collapsed = "noise"
    elif loop > LOOP_CORRELATION:
        collapsed = "loop"
    elif variation is not None and variation < STATIC_VARIATION_DB:
        collapsed = "static"
    metrics: dict[str, Any] = {
        "seconds": audio.shape[0] / sample_rate,
        "rms_dbfs": round(rms_dbfs, 3) if math.isfinite(rms_dbfs) else None,
        "peak": float(np.abs(audio).max()) if audio.size else 0.0,
        "unclipped_peak": unclipped_peak,
        "clipped_fraction": clipped_fraction,
        "spectral_centroid_hz": round(centroid, 2),
        "spectral_flatness": round(flatness, 5),
        "loop_correlation": round(loop, 5),
        "loop_lag_blocks": lag,
        "variation_db": None if variation is None else round(variation, 3),
        "collapsed": collapsed,
    }
    if reference:
        for name, key in (("spectral_centroid_hz", "centroid"), ("spectral_flatness", "flatness")):
            std = reference[f"{key}_std"] or 1.0
            metrics[f"{name}_z"] = round((metrics[name] - reference[f"{key}_mean"]) / std, 3)
    return metrics


def reference_distribution(blocks: np.ndarray, *, sample_rate: int) -> dict[str, float]:
    """Mean and std of block centroid and flatness of training audio, shape [n_blocks, block_size]."""
    power = power_spectra(blocks)
    audible = power.sum(axis=1) > 0
    centroid = spectral_centroid(power, sample_rate=sample_rate, block_size=blocks.shape[1])[audible]
    flatness = spectral_flatness(power)[audible]
    return {
        "centroid_mean": float(centroid.mean()),
        "centroid_std": float(centroid.std()),
        "flatness_mean": float(flatness.mean()),
        "flatness_std": float(flatness.std()),
        "n_blocks": int(audible.sum()),
    }


def nearest_training_similarity(generated: np.ndarray, training: np.ndarray) -> dict[str, float]:
    """How close generated feature blocks come to training blocks (memorisation check).

    Parameters
    ----------
    generated, training : np.ndarray, shape [n, n_features]
        Normalised feature blocks.

    Returns
    -------
    dict with ``mean`` and ``max`` over generated blocks of the cosine similarity
    to their nearest training block, and ``memorised`` when the mean passes
    ``MEMORISED_SIMILARITY``.
    """

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    similarity = unit(generated.astype(np.float64)) @ unit(training.astype(np.float64)).T
    nearest = similarity.max(axis=1)
    mean = float(nearest.mean())
    return {
        "mean": round(mean, 5),
        "max": round(float(nearest.max()), 5),
        "memorised": mean > MEMORISED_SIMILARITY,
    }


# --- memorisation: the longest span copied from one training song ---------------------------------


def copy_unit(features: FeatureConfig) -> int:
    """Rows per unit of the copy check: about :data:`COPY_UNIT_SECONDS`, at least one row."""
    return max(1, round(COPY_UNIT_SECONDS / features.block_seconds))


def band_log_power(rows: np.ndarray, features: FeatureConfig) -> np.ndarray:
    """Log power in frequency bands of raw feature rows [n, n_features], the view the copy check
    compares: ``stft`` rows as they are (log mel or linear power); a block's real||imag
    (``rfft``, or ``fft``'s non-negative frequencies) as log power in :data:`COPY_BLOCK_BANDS`
    mel bands, so a copy is found whatever the phase."""
    rows = np.asarray(rows, dtype=np.float32)
    if features.transform == "stft":
        return rows
    n_bins = features.block_size // 2 + 1
    half = rows.shape[1] // 2
    real, imag = rows[:, :n_bins], rows[:, half : half + n_bins]
    bands = (np.square(real) + np.square(imag)) @ mel_filterbank(
        features.sample_rate, features.block_size, COPY_BLOCK_BANDS
    ).T
    return np.log(np.maximum(bands, POWER_FLOOR)).astype(np.float32)


def stacked_units(bands: np.ndarray, unit: int, *, step: int = 1) -> np.ndarray:
    """Every ``unit`` consecutive rows side by side, one unit every ``step`` rows:
    [(n - unit) // step + 1, unit * n_bands] (the order of the rows within a unit is kept)."""
    if bands.shape[0] < unit:
        return np.zeros((0, unit * bands.shape[1]), np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(bands, unit, axis=0)[::step]
    return np.ascontiguousarray(windows.transpose(0, 2, 1)).reshape(windows.shape[0], -1)


def unit_levels(levels: np.ndarray, unit: int, *, step: int = 1) -> np.ndarray:
    """Level of each unit of ``unit`` rows (one every ``step`` rows): its loudest row's, from the
    rows' :func:`frame_levels`."""
    return stacked_units(levels[:, None], unit, step=step).max(axis=1)


def frame_levels(bands: np.ndarray) -> np.ndarray:
    """Level of each row of log band powers: its loudest band's log power, [n] (the mean over bands
    would sink with the many near-empty high bands of quiet music)."""
    return bands.max(axis=1) if bands.shape[1] else np.zeros(bands.shape[0], np.float32)


def principal_axes(sample: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` principal axes of centred rows [n, d], as columns [d, min(dims, d)]."""
    _, vectors = np.linalg.eigh(sample.T.astype(np.float64) @ sample)
    return np.ascontiguousarray(vectors[:, ::-1][:, :dims]).astype(np.float32)


@dataclass
class CopyIndex:
    """Training songs prepared for :func:`longest_copy`: each song's units (starting at every row) as
    unit-length descriptors (zero where quiet), and what was searched.

    A descriptor: each row's log band powers standardised and projected on the rows' first
    :data:`COPY_DIMS` principal axes, ``unit`` such rows side by side, projected on the units' first
    :data:`COPY_DIMS` principal axes (two small PCAs, not one of ``unit * n_bands`` dimensions).
    """

    features: FeatureConfig
    unit: int
    mean: np.ndarray
    std: np.ndarray
    row_axes: np.ndarray
    unit_axes: np.ndarray
    quiet_level: float
    faint_level: float
    song_ids: list[str]
    units: list[np.ndarray]
    searched_seconds: float
    training_songs: int
    training_seconds: float

    def rows(self, bands: np.ndarray) -> np.ndarray:
        """Log band powers [n, n_bands] -> projected rows [n, row dims]."""
        return (((bands - self.mean) / self.std) @ self.row_axes).astype(np.float32)

    def project(self, rows: np.ndarray, levels: np.ndarray, *, step: int = 1) -> np.ndarray:
        """Projected rows and their levels -> the descriptors of their units, one every ``step``
        rows: [(n - unit) // step + 1, COPY_DIMS], of unit length, zero where the unit is quiet."""
        projected = stacked_units(rows, self.unit, step=step) @ self.unit_axes
        loud = unit_levels(levels, self.unit, step=step) >= self.quiet_level
        norms = np.linalg.norm(projected, axis=1)
        keep = loud & (norms > 1e-9)
        return np.where(keep[:, None], projected / np.maximum(norms, 1e-9)[:, None], 0.0).astype(np.float32)

    def project_song(self, bands: np.ndarray, *, chunk: int = 65_536) -> np.ndarray:
        """Descriptors of a song's units starting at every row, [n - unit + 1, COPY_DIMS]."""
        rows, levels = self.rows(bands), frame_levels(bands)
        n_units = max(0, bands.shape[0] - self.unit + 1)
        out = np.empty((n_units, self.unit_axes.shape[1]), np.float32)
        for start in range(0, n_units, chunk):
            stop = min(n_units, start + chunk)
            window = slice(start, stop + self.unit - 1)
            out[start:stop] = self.project(rows[window], levels[window])
        return out

    def searched(self) -> dict[str, Any]:
        """What the check searched: songs and seconds, against the training set's; a
        ``lower_bound`` when some training songs were left out."""
        return {
            "songs": len(self.song_ids),
            "seconds": round(self.searched_seconds, 1),
            "training_songs": self.training_songs,
            "training_seconds": round(self.training_seconds, 1),
            "lower_bound": len(self.song_ids) < self.training_songs,
            "similarity": COPY_SIMILARITY,
        }


def copy_index(
    songs: Iterable[tuple[str, np.ndarray]],
    features: FeatureConfig,
    *,
    training_songs: int | None = None,
    training_seconds: float | None = None,
    max_fit_rows: int = 20_000,
) -> CopyIndex:
    """Index raw feature rows of training songs, ``(song_id, rows [n, n_features])`` one by one,
    for :func:`longest_copy`. ``training_songs``/``training_seconds`` are the whole training set's
    (default: the songs given), so that a sample is reported as one. The principal axes come from
    up to ``max_fit_rows`` rows (and units) spread over the songs, quiet ones left out."""
    unit = copy_unit(features)
    ids: list[str] = []
    bands: list[np.ndarray] = []
    seconds = 0.0
    for song_id, rows in songs:
        seconds += rows.shape[0] * features.block_seconds
        if rows.shape[0] >= unit:
            ids.append(song_id)
            bands.append(band_log_power(rows, features))
    n_bands = bands[0].shape[1] if bands else 1
    every = np.concatenate(bands) if bands else np.zeros((0, n_bands), np.float32)
    levels = frame_levels(every)
    quiet_level = float(np.median(levels)) - COPY_QUIET_DB * math.log(10) / 10 if levels.size else 0.0
    faint_level = max(quiet_level, float(np.quantile(levels, COPY_FAINT_QUANTILE))) if levels.size else 0.0
    loud = every[levels >= quiet_level]
    loud = loud[:: max(1, loud.shape[0] // max_fit_rows)]
    if not loud.shape[0]:
        loud = np.zeros((1, n_bands), np.float32)
    mean, std = loud.mean(axis=0), loud.std(axis=0) + 1e-3
    row_axes = principal_axes((loud - mean) / std, COPY_DIMS)
    fit_units = np.concatenate(
        [
            stacked_units(((song - mean) / std) @ row_axes, unit, step=max(1, every.shape[0] // max_fit_rows))
            for song in bands
        ]
        or [np.zeros((1, unit * row_axes.shape[1]), np.float32)]
    )
    index = CopyIndex(
        features=features,
        unit=unit,
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        row_axes=row_axes,
        unit_axes=principal_axes(fit_units - fit_units.mean(axis=0), COPY_DIMS),
        quiet_level=quiet_level,
        faint_level=faint_level,
        song_ids=ids,
        units=[],
        searched_seconds=seconds,
        training_songs=len(ids) if training_songs is None else training_songs,
        training_seconds=seconds if training_seconds is None else training_seconds,
    )
    index.units = [index.project_song(song) for song in bands]
    return index


def longest_copy(rows: np.ndarray, index: CopyIndex, *, chunk: int = 32_768) -> dict[str, Any]:
    """The longest span of ``rows`` (a clip's raw feature rows) copied from one training song.

    The clip's units (consecutive, non-overlapping) are compared with every unit of every indexed
    song by cosine similarity; a copy is a run of clip units matching the song's units at one
    constant offset (unit ``k`` of the clip with the song's unit starting at row ``k * unit +
    offset``), each at least :data:`COPY_SIMILARITY`, with gaps of up to :data:`COPY_GAP_SECONDS`
    bridged, and faint clip units (:data:`COPY_FAINT_QUANTILE`) up to
    :data:`COPY_FAINT_BRIDGE_SECONDS` more. Returns ``seconds`` (0 without any match) and, from
    :data:`COPY_NAMED_SECONDS`, the ``song_id`` and where the span starts in the clip and in the
    song.
    """
    unit, block_seconds = index.unit, index.features.block_seconds
    n_units = rows.shape[0] // unit
    best: dict[str, Any] = {
        "seconds": 0.0,
        "song_id": None,
        "clip_start_seconds": None,
        "song_start_seconds": None,
    }
    if n_units == 0 or not index.units:
        return best
    bands = band_log_power(rows[: n_units * unit], index.features)
    levels = frame_levels(bands)
    clip = index.project(index.rows(bands), levels, step=unit)
    faint = unit_levels(levels, unit, step=unit) < index.faint_level
    clip[faint] = 0.0
    # Matches follow each other when at most `gap` units lie between them, faint ones not counted,
    # and at most `bridge` in all.
    heard = np.cumsum(~faint)
    gap = max(1, round(COPY_GAP_SECONDS / (unit * block_seconds)))
    bridge = gap + max(0, round(COPY_FAINT_BRIDGE_SECONDS / (unit * block_seconds)))
    best_units = 0
    for song_id, song in zip(index.song_ids, index.units, strict=True):
        hits_k, hits_j = [], []
        for start in range(0, song.shape[0], chunk):
            k, j = np.nonzero(clip @ song[start : start + chunk].T >= COPY_SIMILARITY)
            hits_k.append(k)
            hits_j.append(j + start)
        k = np.concatenate(hits_k)
        if not k.size:
            continue
        offset = np.concatenate(hits_j) - k * unit
        order = np.lexsort((k, offset))
        k, offset = k[order], offset[order]
        # A new run where the offset changes or the gap along it is too long.
        starts = np.flatnonzero(
            np.r_[True, (np.diff(offset) != 0) | (np.diff(heard[k]) > gap + 1) | (np.diff(k) > bridge + 1)]
        )
        first, last = k[starts], k[np.r_[starts[1:], k.size] - 1]
        lengths = last - first + 1
        run = int(np.argmax(lengths))
        if lengths[run] > best_units:
            best_units = int(lengths[run])
            best = {
                "seconds": round(best_units * unit * block_seconds, 3),
                "song_id": song_id,
                "clip_start_seconds": round(int(first[run]) * unit * block_seconds, 3),
                "song_start_seconds": round(
                    (int(first[run]) * unit + int(offset[starts[run]])) * block_seconds, 3
                ),
            }
    if best["seconds"] < COPY_NAMED_SECONDS:
        best = {**best, "song_id": None, "clip_start_seconds": None, "song_start_seconds": None}
    return best


# --- how long partials last -----------------------------------------------------------------------

# A spectral peak counts when it is within this many dB of the loudest bin of the whole spectrogram,
# and stands this many dB above the median of the bins around it (PEAK_SPAN either side): the peaks of
# noise (power spread exponentially) clear 10 dB above their neighbourhood's median once in ~1000 bins.
PEAK_FLOOR_DB = 40.0
PEAK_PROMINENCE_DB = 10.0
PEAK_SPAN = 8
# The linear spectrogram audio's partials are measured on: 2048-sample Hann frames every 256 samples
# (93 ms, 11.6 ms at 22.05 kHz; 10.8 Hz bins, fine enough to tell partials apart).
PEAK_N_FFT = 2048
PEAK_HOP = 256


def partial_peaks(power_db: np.ndarray, *, floor_db: float = PEAK_FLOOR_DB) -> np.ndarray:
    """Which bins of ``power_db`` [frames, bins] (dB) are the peaks of partials (bool, same shape):
    louder than the bin below, at least as loud as the one above, within ``floor_db`` of the
    loudest value of the whole array and :data:`PEAK_PROMINENCE_DB` above the median of the
    :data:`PEAK_SPAN` bins either side (so that noise has few). Stricter than the ``continuity``
    axis's :func:`~tasks.generation.quality.spectral_peaks`, which keeps every local maximum near
    its frame's loudest: this one asks for a partial one sees in a spectrogram."""
    power = np.asarray(power_db, dtype=np.float64)
    peaks = np.zeros(power.shape, bool)
    if power.ndim != 2 or power.shape[0] == 0 or power.shape[1] < 3:
        return peaks
    from scipy.ndimage import median_filter

    middle = power[:, 1:-1]
    peaks[:, 1:-1] = (middle > power[:, :-2]) & (middle >= power[:, 2:]) & (middle >= power.max() - floor_db)
    peaks &= power >= median_filter(power, size=(1, 2 * PEAK_SPAN + 1), mode="nearest") + PEAK_PROMINENCE_DB
    return peaks


def peak_persistence(power_db: np.ndarray, *, frame_seconds: float, floor_db: float = PEAK_FLOOR_DB) -> float:
    """How long the partial that a spectral peak belongs to lasts, in seconds, on average over the
    peaks of ``power_db`` [frames, bins] (dB): each :func:`partial_peaks` peak's run (followed from
    frame to frame in the same bin or a neighbour, so a partial that glides stays one run:
    :func:`~tasks.generation.quality.run_lengths`, the one linking rule). A held note is a run of
    many frames; noise and bursts give runs of one or two. 0 without peaks."""
    peaks = partial_peaks(power_db, floor_db=floor_db)
    lengths = run_lengths(peaks)[peaks]
    return float(lengths.mean() * frame_seconds) if lengths.size else 0.0


def audio_peak_persistence(audio: np.ndarray, *, sample_rate: int) -> float:
    """:func:`peak_persistence` of audio, on its linear spectrogram (:data:`PEAK_N_FFT`,
    :data:`PEAK_HOP`): the seconds that partials last, as one sees them in a spectrogram."""
    import librosa

    if audio.size < PEAK_N_FFT:
        return 0.0
    magnitude = np.abs(
        librosa.stft(audio.astype(np.float32), n_fft=PEAK_N_FFT, hop_length=PEAK_HOP, center=False)
    )
    power_db = 20.0 * np.log10(np.maximum(magnitude, 1e-10)).T
    return peak_persistence(power_db, frame_seconds=PEAK_HOP / sample_rate)
