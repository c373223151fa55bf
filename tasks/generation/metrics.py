"""Quality metrics of generated audio, and the collapse and memorisation checks.

The seed had none; these say whether a clip is music-like (level, spectrum
against the training data's distribution) or collapsed into silence, white
noise or a loop, and whether it copies a training window.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tasks.config import FeatureConfig
from tasks.generation.quality import log_mel_frames, temporal_variation

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
