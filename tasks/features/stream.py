"""Streaming featurisation: decode an audio file and featurise it chunk by chunk.

Ingest writes the rows of each song into its shard as they come
(:func:`featurise_stream`); generation decodes seed audio whole
(:func:`decode_features`). Either way the song is never held decoded in full.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.audio.decode import AudioStream, DecoderFallback
from tasks.config import FeatureConfig
from tasks.errors import DecodeError
from tasks.features.transforms import get_transform


def decode_features(
    path: str, *, features: FeatureConfig, min_peak_db: float = -60.0, strict: bool = False
) -> tuple[np.ndarray, float, int]:
    """Decode one local file to feature rows, whole (generation's seed audio; tests).

    Returns ``(features [n_frames, n_features] float32, seconds, channels)``;
    raises :class:`DecodeError` for undecodable, too short or silent audio.
    """
    rows: list[np.ndarray] = []
    song = featurise_stream(
        path, features=features, min_peak_db=min_peak_db, strict=strict, sink=rows.append, restart=rows.clear
    )
    return (
        np.concatenate(rows) if rows else np.zeros((0, features.n_features), np.float32),
        song.seconds,
        song.channels,
    )


@dataclass(frozen=True)
class StreamedSong:
    """What :func:`featurise_stream` learnt of a song."""

    seconds: float
    channels: int
    warnings: str | None


def featurise_stream(
    path: str,
    *,
    features: FeatureConfig,
    sink: Callable[[np.ndarray], Any],
    min_peak_db: float = -60.0,
    strict: bool = False,
    timeout: float | None = None,
    restart: Callable[[], Any] | None = None,
    max_seconds: float | None = None,
) -> StreamedSong:
    """Decode a local file chunk by chunk and hand its feature rows to ``sink`` as they come.

    The transform's streaming :class:`~tasks.features.transforms.Featurizer` gives
    exactly what ``forward`` gives on the whole signal; nothing here depends on
    which transform it is. Memory: one decoded chunk and its rows. When the
    decoder has to start again (:class:`~tasks.audio.decode.DecoderFallback`),
    ``restart`` is called to discard the rows ``sink`` got. Raises
    :class:`DecodeError` (after ``sink`` got some rows: the caller discards
    them) for undecodable, too short, too long (over ``max_seconds``: decoding stops
    there) or silent audio.
    """
    transform = get_transform(features)
    max_samples = None if max_seconds is None else max_seconds * features.sample_rate
    for decoder in ("ffmpeg", "libsndfile"):
        featurizer = transform.featurizer()
        stream = AudioStream(
            path, sample_rate=features.sample_rate, strict=strict, timeout=timeout, decoder=decoder
        )
        peak = 0.0
        try:
            for chunk in stream:
                if max_samples is not None and stream.n_samples > max_samples:
                    raise DecodeError(
                        f"too long: over the {max_seconds:g} s a song may last (--max-seconds); "
                        "decoding stopped there"
                    )
                if chunk.shape[0]:
                    peak = max(peak, float(chunk.max()), -float(chunk.min()))
                rows = featurizer.push(chunk)
                if rows.shape[0]:
                    sink(rows)
            break
        except DecoderFallback:
            if restart is None:
                raise
            restart()  # ffmpeg decoded it badly; libsndfile can open it: from the start
    if stream.n_samples < transform.min_samples:
        raise DecodeError(
            f"too short: {stream.seconds:.3f} s is less than one block "
            f"({transform.min_samples / features.sample_rate:.3f} s)"
        )
    if peak <= 10 ** (min_peak_db / 20):
        level = f"{20 * math.log10(peak):.1f} dBFS" if peak > 0 else "-inf dBFS"
        raise DecodeError(f"silent: peak level {level} is below {min_peak_db:g} dBFS")
    rows = featurizer.finish()
    if rows.shape[0]:
        sink(rows)
    return StreamedSong(seconds=stream.seconds, channels=stream.channels, warnings=stream.warnings)
