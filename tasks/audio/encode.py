"""Encoding audio to mp3 or WAV bytes, with pydub (and so the ffmpeg it is configured with)."""

from __future__ import annotations

import io

import numpy as np

from tasks.audio.ffmpeg import AudioSegment, ffmpeg_binary


def encode_audio(
    samples: np.ndarray, *, sample_rate: int, format: str = "mp3", bitrate: str = "192k"
) -> bytes:
    """Encode float mono or ``[n_samples, channels]`` audio in [-1, 1] with pydub/ffmpeg.

    ``format="wav"`` gives 16-bit PCM. Returns the encoded bytes.
    """
    ffmpeg_binary()
    frames = np.atleast_2d(np.asarray(samples, dtype=np.float32).T).T
    pcm = (np.clip(frames, -1.0, 1.0) * 32767.0).round().astype("<i2")
    segment = AudioSegment(pcm.tobytes(), frame_rate=sample_rate, sample_width=2, channels=frames.shape[1])
    buffer = io.BytesIO()
    segment.export(buffer, format=format, bitrate=bitrate if format != "wav" else None)
    return buffer.getvalue()
