"""Feature transforms: audio <-> rows of features, one class per ``FeatureConfig.transform``.

A transform is the only place that knows what a row of a shard means. The rest
of the pipeline (ingest, shards, statistics, windows, training, generation)
asks :func:`get_transform` for the dataset's transform and never branches on
its name::

    transform = get_transform(features)          # features: FeatureConfig
    rows = transform.forward(samples)            # [n_frames, n_features] float32
    audio = transform.inverse(rows)              # [n_samples] float32

Ingest featurises songs chunk by chunk with a :class:`Featurizer`, so a worker
never holds a whole decoded song; pushing any split of a signal and then
calling ``finish`` gives exactly ``forward`` of the whole signal.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from musicflow.config import FeatureConfig
from musicflow.errors import ConfigError
from tasks.features import blocks_to_features, features_to_blocks, frame_blocks


class Featurizer(ABC):
    """Streaming :meth:`Transform.forward`: ``push`` chunks of samples, then ``finish`` once."""

    @abstractmethod
    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feature rows that the samples so far complete, shape [k, n_features] (k may be 0)."""

    @abstractmethod
    def finish(self) -> np.ndarray:
        """The remaining rows (padding the end of the signal), shape [k, n_features]."""


class Transform(ABC):
    """Audio <-> feature rows for one :class:`~musicflow.config.FeatureConfig`."""

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
    def inverse(self, rows: np.ndarray) -> np.ndarray:
        """Audio from rows, shape [n_rows * frame_step] float32 (not clipped)."""

    @abstractmethod
    def featurizer(self) -> Featurizer:
        """A fresh streaming featurizer for one signal."""


class BlockTransform(Transform):
    """The seed's method: consecutive non-overlapping blocks, each one FFT (``rfft`` or ``fft``).

    The last block is zero-padded. See :func:`tasks.features.blocks_to_features`.
    """

    @property
    def frame_step(self) -> int:
        return self.features.block_size

    def n_frames(self, n_samples: int) -> int:
        return -(-n_samples // self.features.block_size)

    def forward(self, samples: np.ndarray) -> np.ndarray:
        blocks = frame_blocks(samples, block_size=self.features.block_size)
        return blocks_to_features(blocks, transform=self.features.transform)

    def inverse(self, rows: np.ndarray) -> np.ndarray:
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


# One class per transform name of musicflow.config.TRANSFORMS.
TRANSFORM_CLASSES: dict[str, type[Transform]] = {"rfft": BlockTransform, "fft": BlockTransform}


def get_transform(features: FeatureConfig) -> Transform:
    """The transform a feature config names."""
    try:
        return TRANSFORM_CLASSES[features.transform](features)
    except KeyError:
        raise ConfigError(
            f"invalid transform {features.transform!r}: expected one of {', '.join(TRANSFORM_CLASSES)}"
        ) from None
