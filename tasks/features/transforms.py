"""Feature transforms: audio <-> rows of features, one class per ``FeatureConfig.transform``.

``stft`` (:class:`SpectralTransform`, log-mel frames) is the default
(:data:`tasks.config.DEFAULT_TRANSFORM`: what the flows and the CLI use unless told
otherwise); ``rfft``/``fft`` (:class:`BlockTransform`) are the seed's GRUV blocks
(:mod:`tasks.features.blocks`).

A transform is the only place that knows what a row of a shard means. The rest
of the pipeline (ingest, shards, statistics, windows, training, generation)
asks :func:`get_transform` for the dataset's transform and never branches on
its name::

    transform = get_transform(features)          # features: FeatureConfig
    rows = transform.forward(samples)            # [n_frames, n_features] float32
    audio = transform.inverse(rows)              # [n_samples] float32

Ingest featurises songs chunk by chunk with a :class:`Featurizer` (:mod:`tasks.features.stream`), so a worker
never holds a whole decoded song; pushing any split of a signal and then
calling ``finish`` gives exactly ``forward`` of the whole signal.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import scipy.fft

from tasks.config import DEFAULT_PHASE, FeatureConfig, check_phase
from tasks.errors import ConfigError
from tasks.features.blocks import blocks_to_features, features_to_blocks, frame_blocks


class Featurizer(ABC):
    """Streaming :meth:`Transform.forward`: ``push`` chunks of samples, then ``finish`` once."""

    @abstractmethod
    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feature rows that the samples so far complete, shape [k, n_features] (k may be 0)."""

    @abstractmethod
    def finish(self) -> np.ndarray:
        """The remaining rows (padding the end of the signal), shape [k, n_features]."""


class Transform(ABC):
    """Audio <-> feature rows for one :class:`~tasks.config.FeatureConfig`."""

    def __init__(self, features: FeatureConfig) -> None:
        self.features = features

    @property
    def n_features(self) -> int:
        """Values per row."""
        return self.features.n_features

    @property
    @abstractmethod
    def frame_step(self) -> int:
        """Samples of audio per row (the hop between consecutive rows)."""

    @property
    def frame_seconds(self) -> float:
        return self.frame_step / self.features.sample_rate

    @property
    def min_samples(self) -> int:
        """The shortest signal worth a row: ingest records shorter songs as too short."""
        return self.frame_step

    @abstractmethod
    def n_frames(self, n_samples: int) -> int:
        """Rows that :meth:`forward` gives for a signal of ``n_samples``."""

    @abstractmethod
    def forward(self, samples: np.ndarray) -> np.ndarray:
        """Rows of a mono signal.

        Parameters
        ----------
        samples : np.ndarray, shape [n_samples], float32

        Returns
        -------
        np.ndarray, shape [n_frames(n_samples), n_features], float32
        """

    @abstractmethod
    def inverse(self, rows: np.ndarray, *, phase: str = DEFAULT_PHASE) -> np.ndarray:
        """Audio from rows, shape [n_rows * frame_step] float32 (not clipped); ``phase`` is how a
        transform without phases reconstructs them (one of ``tasks.config.PHASES``)."""

    @abstractmethod
    def featurizer(self) -> Featurizer:
        """A fresh streaming featurizer for one signal."""


class BlockTransform(Transform):
    """The GRUV path (the seed's method): consecutive non-overlapping blocks, each one FFT
    (``rfft`` or ``fft``).

    The last block is zero-padded. See :func:`tasks.features.blocks.blocks_to_features`.
    """

    @property
    def frame_step(self) -> int:
        return self.features.block_size

    def n_frames(self, n_samples: int) -> int:
        return -(-n_samples // self.features.block_size)

    def forward(self, samples: np.ndarray) -> np.ndarray:
        blocks = frame_blocks(samples, block_size=self.features.block_size)
        return blocks_to_features(blocks, transform=self.features.transform)

    def inverse(self, rows: np.ndarray, *, phase: str = DEFAULT_PHASE) -> np.ndarray:
        check_phase(phase)  # the blocks carry their phase: any method gives the same audio
        blocks = features_to_blocks(
            rows, transform=self.features.transform, block_size=self.features.block_size
        )
        return blocks.reshape(-1)

    def featurizer(self) -> Featurizer:
        return _BlockFeaturizer(self)


class _BlockFeaturizer(Featurizer):
    def __init__(self, transform: BlockTransform) -> None:
        self.transform = transform
        self.block_size = transform.features.block_size
        self.pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        signal = np.concatenate([self.pending, np.asarray(samples, dtype=np.float32)])
        usable = signal.shape[0] - signal.shape[0] % self.block_size
        self.pending = signal[usable:].copy()
        return self.transform.forward(signal[:usable])

    def finish(self) -> np.ndarray:
        rows, self.pending = self.transform.forward(self.pending), np.zeros(0, dtype=np.float32)
        return rows


# Power under which a bin counts as silent: -100 dB below a full-scale sine.
POWER_FLOOR = 1e-10
# Griffin-Lim: iterations, and the frames inverted at once (longer clips go in crossfaded segments,
# so memory stays bounded whatever the length).
GRIFFIN_LIM_ITERATIONS = 32
# Griffin-Lim iterations after phase-gradient heap integration ("pghi-gl"): from PGHI's phases 4
# come near the spectral convergence of 32 from random ones on 128 mels (0.072 against 0.071 on
# synthetic songs, 0.092 against 0.080 on drascula-music) and beat it on linear bins (0.031 against
# 0.067, 0.069 against 0.081), in half the time or less (docs/benchmarks.md, "Phase reconstruction").
PGHI_GL_ITERATIONS = 4
# PGHI: a Hann window's time-frequency ratio, gamma = 0.25645 L^2 (Prusa et al. 2017, table 1), and
# the magnitude, relative to the loudest bin, under which a bin's phase is not integrated (-100 dB).
_PGHI_HANN_GAMMA = 0.25645
_PGHI_TOLERANCE = 1e-5
GRIFFIN_LIM_SEGMENT_FRAMES = 4096
_CROSSFADE_FRAMES = 64
# Multiplicative updates of the mel-to-linear step (SpectralTransform.magnitudes). 30 instead of 10
# keep more of the partials' persistence: the 128-band round trip's `continuity` went 0.899 -> 0.918
# on the synthetic songs and 0.908 -> 0.924 on drascula-music (benchmarks/bench_axes.py, 16 x 15 s;
# frames and tonality unchanged), at 0.059 CPU s per 15 s, band by band (10 dense ones took 0.047).
MEL_INVERSE_ITERATIONS = 30
# Frames transformed at once: the windowed frames, their spectrum and power (~5 MB) stay in the
# CPU's caches (2048 at once was 1.5x slower here).
_FORWARD_FRAMES = 512
# Mel bands per matrix product: each group of adjacent bands multiplies only the bins its
# triangles cover (13% of the dense product's work for 128 bands of a 1024-point FFT).
_MEL_GROUP = 16
MIN_SONG_SECONDS = 0.25


def hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window of ``n_fft`` samples, float64 (``scipy.signal.get_window("hann", n_fft)``,
    without importing scipy.signal: 1.3 s of a worker's start-up)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


@functools.lru_cache(maxsize=16)
def scaled_hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window scaled to sum 1 (a full-scale sine peaks at magnitude 0.5), float32."""
    window = hann(n_fft)
    return (window / window.sum()).astype(np.float32)


# The Slaney mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_MEL_HZ_PER_MEL = 200.0 / 3
_MEL_LOG_HZ = 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _MEL_HZ_PER_MEL
    logarithmic = _MEL_LOG_HZ / _MEL_HZ_PER_MEL + np.log(np.maximum(hz, 1e-300) / _MEL_LOG_HZ) / _MEL_LOG_STEP
    return np.where(hz >= _MEL_LOG_HZ, logarithmic, linear)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    log_mel = _MEL_LOG_HZ / _MEL_HZ_PER_MEL
    logarithmic = _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mels - log_mel))
    return np.where(mels >= log_mel, logarithmic, _MEL_HZ_PER_MEL * mels)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular mel filters [n_mels, n_fft // 2 + 1] float32, from 0 Hz to Nyquist.

    The same matrix as ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)`` (tested
    to float32 precision), in numpy: librosa's filters module imports numba, 2.7 s of an ingest
    worker's start-up for a matrix computed once.
    """
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, np.newaxis] - bins[np.newaxis, :]
    rising = -ramps[:-2] / widths[:-1, np.newaxis]
    falling = ramps[2:] / widths[1:, np.newaxis]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, np.newaxis]
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=16)
def mel_band_groups(
    sample_rate: int, n_fft: int, n_mels: int, group: int = _MEL_GROUP
) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The mel filterbank cut into groups of ``group`` adjacent bands, each with the bins its
    filters cover: ``(first band, end band, first bin, end bin, weights [bins, bands])``.

    ``power[:, first_bin:end_bin] @ weights`` is ``(power @ basis.T)[:, first_band:end_band]``
    without the products by the zeros outside the triangles.
    """
    basis = mel_filterbank(sample_rate, n_fft, n_mels)
    covered = basis != 0
    groups = []
    for first in range(0, n_mels, group):
        end = min(first + group, n_mels)
        bins = np.flatnonzero(covered[first:end].any(axis=0))
        lo, hi = (int(bins[0]), int(bins[-1]) + 1) if bins.size else (0, 1)
        groups.append((first, end, lo, hi, np.ascontiguousarray(basis[first:end, lo:hi].T)))
    return tuple(groups)


_BandGroups = tuple[tuple[int, int, int, int, np.ndarray], ...]


def _project_bands(power: np.ndarray, groups: _BandGroups, out: np.ndarray) -> np.ndarray:
    """``power @ basis.T`` into ``out`` [n, n_mels]: the mel bands of linear power [n, n_bins],
    group by group (:func:`mel_band_groups`)."""
    for first_band, end_band, first_bin, end_bin, weights in groups:
        np.matmul(power[:, first_bin:end_bin], weights, out=out[:, first_band:end_band])
    return out


def _spread_bands(bands: np.ndarray, groups: _BandGroups, out: np.ndarray) -> np.ndarray:
    """``bands @ basis`` into ``out`` [n, n_bins]: mel band values [n, n_mels] spread over the bins,
    group by group (adjacent groups share their edge bins, so the groups add up)."""
    out[:] = 0.0
    for first_band, end_band, first_bin, end_bin, weights in groups:
        out[:, first_bin:end_bin] += bands[:, first_band:end_band] @ weights.T
    return out


@functools.lru_cache(maxsize=16)
def mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """The mel filterbank [n_mels, n_bins] (:func:`mel_filterbank`) and its pseudo-inverse."""
    basis = mel_filterbank(sample_rate, n_fft, n_mels)
    return basis, np.linalg.pinv(basis).astype(np.float32)


def spectral_convergence(reference: np.ndarray, estimate: np.ndarray) -> float:
    """``||estimate - reference|| / ||reference||`` of the magnitudes of two sets of stft rows
    (log power, [n_frames, n_features]; the shorter length of the two is compared)."""
    n_frames = min(reference.shape[0], estimate.shape[0])
    truth, guess = np.exp(reference[:n_frames] / 2), np.exp(estimate[:n_frames] / 2)
    return float(np.linalg.norm(guess - truth) / np.linalg.norm(truth))


def pghi_phases(magnitudes: np.ndarray, *, n_fft: int, hop_length: int) -> np.ndarray:
    """Phases [n_bins, n_frames] of a Hann-window STFT (librosa's layout and phase convention: frames
    not shifted, centred) from its magnitudes [n_bins, n_frames], by phase-gradient heap integration
    (:func:`tasks.features.pghi.pghi`, pghipy's integration without its rescans; Prusa, Balazs and
    Sondergaard 2017): the phase's time and frequency derivatives
    follow from the log-magnitude's frequency and time derivatives, integrated outwards from the
    loudest bins. Deterministic, no iteration; bins under ``_PGHI_TOLERANCE`` of the loudest keep
    phase 0.
    """
    from tasks.features.pghi import pghi  # numba: not in an ingest worker's start-up

    # C-contiguous float64 [frames, bins]: the signature the cache holds (another one compiles again).
    spectrogram = np.ascontiguousarray(magnitudes.T, dtype=np.float64)
    phases = pghi(spectrogram, n_fft, hop_length, _PGHI_HANN_GAMMA * n_fft**2, _PGHI_TOLERANCE)
    return np.ascontiguousarray(phases.T)


class SpectralTransform(Transform):
    """The default transform, ``stft``: log-(mel-)magnitude of Hann-windowed overlapping frames;
    the inverse reconstructs the phase.

    Frame ``t`` is centred on sample ``t * hop_length`` (the signal is zero-padded by
    ``n_fft / 2`` on each side, as ``librosa.stft(center=True, pad_mode="constant")``), and there
    are ``ceil(n_samples / hop_length)`` frames, so the frames cover every sample and
    :meth:`inverse` of ``k`` rows gives ``k * hop_length`` samples. A row is
    ``log(max(power, 1e-10))`` of the ``n_mels`` mel bands (or of every bin when ``n_mels`` is 0),
    with the window scaled so a full-scale sine is 0.25 in power.

    The forward pass is numpy/scipy (framing by strides, ``scipy.fft.rfft`` in float32, the mel
    bands as banded matrix products, :func:`mel_band_groups`), faster than ``librosa.stft`` +
    ``librosa.feature.melspectrogram`` on the ingest hot path (``benchmarks/bench_quality.py``
    measures the ratio); librosa gives the Griffin-Lim phase reconstruction (its mel filterbank
    is :func:`mel_filterbank`).
    """

    @property
    def frame_step(self) -> int:
        return self.features.hop_length

    @property
    def min_samples(self) -> int:
        # A frame is 12 ms: a song must hold the seed's unit, a quarter of a second, and a window.
        return max(self.features.n_fft, round(MIN_SONG_SECONDS * self.features.sample_rate))

    def n_frames(self, n_samples: int) -> int:
        return -(-n_samples // self.features.hop_length)

    def forward(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ConfigError(f"audio must be mono (1-D), got shape {samples.shape}")
        n_fft, hop = self.features.n_fft, self.features.hop_length
        n_frames = self.n_frames(samples.shape[0])
        padded = np.zeros(max(0, (n_frames - 1) * hop + n_fft), dtype=np.float32)
        padded[n_fft // 2 : n_fft // 2 + samples.shape[0]] = samples
        return self.frames_to_rows(padded, n_frames)

    def frames_to_rows(self, padded: np.ndarray, n_frames: int) -> np.ndarray:
        """Rows of the ``n_frames`` frames starting every ``hop_length`` samples of ``padded``."""
        n_fft, hop, n_mels = self.features.n_fft, self.features.hop_length, self.features.n_mels
        rows = np.empty((max(n_frames, 0), self.n_features), dtype=np.float32)
        if n_frames <= 0:
            return rows
        window = scaled_hann(n_fft)
        frames = np.lib.stride_tricks.sliding_window_view(padded[: (n_frames - 1) * hop + n_fft], n_fft)
        frames = frames[::hop]
        bands = mel_band_groups(self.features.sample_rate, n_fft, n_mels) if n_mels else ()
        block = min(n_frames, _FORWARD_FRAMES)
        windowed = np.empty((block, n_fft), dtype=np.float32)
        power = np.empty((block, n_fft // 2 + 1), dtype=np.float32)
        # In place, block by block (memory traffic, not arithmetic, was the cost): window,
        # rfft, |X|^2 on the interleaved (re, im) floats, the mel bands, the log.
        for start in range(0, n_frames, block):
            stop = min(start + block, n_frames)
            k = stop - start
            np.multiply(frames[start:stop], window, out=windowed[:k])
            interleaved = scipy.fft.rfft(windowed[:k], axis=1).view(np.float32)
            np.square(interleaved, out=interleaved)
            out = rows[start:stop]
            np.add(interleaved[:, 0::2], interleaved[:, 1::2], out=power[:k] if bands else out)
            if bands:
                _project_bands(power[:k], bands, out)
            np.maximum(out, POWER_FLOOR, out=out)
            np.log(out, out=out)
        return rows

    def magnitudes(self, rows: np.ndarray) -> np.ndarray:
        """Linear-frequency magnitudes [n_rows, n_fft // 2 + 1] of rows (the mel bands spread back
        over the bins by the filterbank's pseudo-inverse, clipped at 0)."""
        expected = self.n_features
        if rows.ndim != 2 or rows.shape[1] != expected:
            raise ConfigError(f"rows of shape {rows.shape} do not match stft with {expected} features")
        power = np.exp(np.minimum(rows.astype(np.float32), 30.0))
        if self.features.n_mels:
            sample_rate, n_fft, n_mels = self.features.sample_rate, self.features.n_fft, self.features.n_mels
            _, inverse = mel_basis(sample_rate, n_fft, n_mels)
            groups = mel_band_groups(sample_rate, n_fft, n_mels)
            # Non-negative least squares, approximately: the pseudo-inverse clipped at 0, then
            # multiplicative updates (spectral convergence 0.26 -> 0.18 on a demo song in 10 steps;
            # librosa's mel_to_stft gets 0.26, 200x slower). The products with the filterbank go
            # band group by band group, as in the forward pass (half the time of dense ones).
            linear = np.maximum(power @ inverse.T, 0.0) + np.float32(POWER_FLOOR)
            target = _spread_bands(power, groups, np.empty_like(linear))
            bands, back = np.empty_like(power), np.empty_like(linear)
            for _ in range(MEL_INVERSE_ITERATIONS):
                _spread_bands(_project_bands(linear, groups, bands), groups, back)
                back += np.float32(1e-20)
                np.divide(target, back, out=back)
                linear *= back
            power = linear
        return np.sqrt(power)

    def inverse(
        self, rows: np.ndarray, *, phase: str = DEFAULT_PHASE, n_iter: int | None = None, seed: int = 0
    ) -> np.ndarray:
        """Audio [n_rows * hop_length], the phase reconstructed by ``phase`` (one of
        ``tasks.config.PHASES``), overlap-added.

        ``griffin-lim``: Griffin-Lim with momentum from random phases (``seed``),
        ``GRIFFIN_LIM_ITERATIONS``; ``pghi``: phase-gradient heap integration
        (:func:`pghi_phases`), no iteration; ``pghi-gl``: ``PGHI_GL_ITERATIONS`` of Griffin-Lim
        from PGHI's phases. ``n_iter`` overrides the method's iterations.

        Clips longer than ``GRIFFIN_LIM_SEGMENT_FRAMES`` frames are reconstructed in segments
        that overlap by ``_CROSSFADE_FRAMES`` frames; each segment starts from the phases of the
        audio already made in its overlap, so the crossfade joins two signals in phase (no dip,
        no click) and memory stays bounded whatever the length.
        """
        check_phase(phase)
        if n_iter is None:
            n_iter = {"pghi": 0, "pghi-gl": PGHI_GL_ITERATIONS}.get(phase, GRIFFIN_LIM_ITERATIONS)
        magnitudes = self.magnitudes(rows)
        hop = self.features.hop_length
        n_rows = rows.shape[0]
        audio = np.zeros(n_rows * hop, dtype=np.float32)
        if n_rows == 0:
            return audio
        rng = np.random.default_rng(seed)
        segment, overlap = max(GRIFFIN_LIM_SEGMENT_FRAMES, 2 * _CROSSFADE_FRAMES), _CROSSFADE_FRAMES
        start, known = 0, None
        while True:
            stop = min(n_rows, start + segment)
            piece = self._griffin_lim(
                magnitudes[start:stop], n_iter=n_iter, rng=rng, known=known, pghi=phase != "griffin-lim"
            )
            first = start * hop
            if start == 0:
                audio[: piece.size] = piece
            else:
                fade = np.linspace(0.0, 1.0, overlap * hop, dtype=np.float32)
                head = piece[: fade.size]
                audio[first : first + fade.size] = audio[first : first + fade.size] * (1 - fade) + head * fade
                audio[first + fade.size : first + piece.size] = piece[fade.size :]
            if stop == n_rows:
                return audio
            start = stop - overlap
            known = audio[start * hop : stop * hop]

    def _griffin_lim(
        self,
        magnitudes: np.ndarray,
        *,
        n_iter: int,
        rng: np.random.Generator,
        known: np.ndarray | None,
        pghi: bool = False,
    ) -> np.ndarray:
        """librosa's fast Griffin-Lim (momentum 0.99), from random phases or PGHI's (``pghi``), the
        phases of ``known`` audio held for the first frames; with ``n_iter`` 0, the first phases."""
        import librosa

        n_fft, hop = self.features.n_fft, self.features.hop_length
        length = magnitudes.shape[0] * hop
        # librosa's STFT window is unscaled: undo the normalisation of the forward pass. It frames
        # a signal of k * hop samples into k + 1 frames: the last one repeats.
        gain = np.float32(hann(n_fft).sum())
        target = np.ascontiguousarray((np.concatenate([magnitudes, magnitudes[-1:]]) * gain).T)
        options: dict[str, Any] = {"n_fft": n_fft, "hop_length": hop, "window": "hann", "center": True}
        if known is None and not pghi:  # librosa's own loop: the same algorithm, with its buffers reused
            return librosa.griffinlim(
                target,
                n_iter=n_iter,
                length=length,
                pad_mode="constant",
                momentum=0.99,
                init="random",
                random_state=int(rng.integers(2**31)),
                **options,
            ).astype(np.float32)
        if pghi:
            angles = np.exp(1j * pghi_phases(target, n_fft=n_fft, hop_length=hop)).astype(np.complex64)
        else:
            angles = np.exp(2j * np.pi * rng.random(target.shape)).astype(np.complex64)
        pinned = np.zeros((target.shape[0], 0), dtype=np.complex64)
        if known is not None:
            # The phases of the audio already made, held for the frames it fully covers.
            head = librosa.stft(known, pad_mode="constant", **options)[:, : known.size // hop - n_fft // hop]
            pinned = head / np.maximum(np.abs(head), 1e-16)
            held = pinned.shape[1]
            if pghi and held:
                # Each bin's PGHI phases turned to go on from the known audio's last held phase (PGHI's
                # own start is arbitrary: pasted after the held frames, they would jump, and the
                # crossfade would dip); silent bins of the known audio are left as they are.
                turn = pinned[:, held - 1 : held] * np.conj(angles[:, held - 1 : held])
                angles[:, held:] *= np.where(np.abs(turn) > 0.5, turn, 1.0).astype(np.complex64)
            angles[:, :held] = pinned
        momentum = 0.99
        previous = np.zeros_like(angles)
        for _ in range(n_iter):
            audio = librosa.istft(target * angles, length=length, **options)
            rebuilt = librosa.stft(audio, pad_mode="constant", **options)
            angles = rebuilt - (momentum / (1 + momentum)) * previous
            angles /= np.abs(angles) + 1e-16
            angles[:, : pinned.shape[1]] = pinned
            previous = rebuilt
        return librosa.istft(target * angles, length=length, **options).astype(np.float32)

    def featurizer(self) -> Featurizer:
        return _SpectralFeaturizer(self)


class _SpectralFeaturizer(Featurizer):
    """Keeps the samples of frames not yet complete (at most ``n_fft``), so pushes of any size
    give exactly the frames :meth:`SpectralTransform.forward` gives for the whole signal."""

    def __init__(self, transform: SpectralTransform) -> None:
        self.transform = transform
        self.n_fft, self.hop = transform.features.n_fft, transform.features.hop_length
        # The buffer starts at frame ``emitted``'s first sample (the left padding at first).
        self.buffer = np.zeros(self.n_fft // 2, dtype=np.float32)
        self.emitted = 0
        self.n_samples = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.n_samples += samples.shape[0]
        self.buffer = np.concatenate([self.buffer, samples])
        ready = (
            (self.buffer.shape[0] - self.n_fft) // self.hop + 1 if self.buffer.shape[0] >= self.n_fft else 0
        )
        return self._emit(ready)

    def finish(self) -> np.ndarray:
        remaining = self.transform.n_frames(self.n_samples) - self.emitted
        needed = max(0, (remaining - 1) * self.hop + self.n_fft)
        if self.buffer.shape[0] < needed:
            self.buffer = np.concatenate([self.buffer, np.zeros(needed - self.buffer.shape[0], np.float32)])
        return self._emit(max(0, remaining))

    def _emit(self, n_frames: int) -> np.ndarray:
        rows = self.transform.frames_to_rows(self.buffer, n_frames)
        if n_frames:
            self.buffer = self.buffer[n_frames * self.hop :].copy()
            self.emitted += n_frames
        return rows


# One class per transform name of tasks.config.TRANSFORMS.
TRANSFORM_CLASSES: dict[str, type[Transform]] = {
    "stft": SpectralTransform,
    "rfft": BlockTransform,
    "fft": BlockTransform,
}


def get_transform(features: FeatureConfig) -> Transform:
    """The transform a feature config names."""
    try:
        return TRANSFORM_CLASSES[features.transform](features)
    except KeyError:
        raise ConfigError(
            f"invalid transform {features.transform!r}: expected one of {', '.join(TRANSFORM_CLASSES)}"
        ) from None
