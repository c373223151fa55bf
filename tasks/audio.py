"""Decoding any ffmpeg-readable file to float32 mono, and encoding audio back.

Decoding calls the ffmpeg binary that pydub is configured with
(``pydub.AudioSegment.converter``) directly and reads 32-bit float WAV from
its stdout: no temporary files, no int16 round trip, and 1.4x faster than
``AudioSegment.from_file`` (see ``benchmarks/bench_ingest.py``). pydub stays
our encoder (mp3 export) and the single place the ffmpeg path is configured.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass
from typing import IO

import numpy as np

with warnings.catch_warnings():
    # pydub warns at import when ffmpeg is missing; ffmpeg_binary() raises a clearer error.
    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
    from pydub import AudioSegment

import contextlib

from musicflow.errors import DecodeError, DecoderMissingError

INSTALL_HINT = (
    "install it with `apt-get install ffmpeg` (Debian/Ubuntu), `brew install ffmpeg` (macOS) "
    "or `conda install -c conda-forge ffmpeg`, or point pydub.AudioSegment.converter at it"
)
_READ_BYTES = 1 << 20
_ERROR_LEVEL = re.compile(r"\[(?:error|fatal|panic)\] ")
_CONTEXT = re.compile(r"\[(?:error|fatal|panic)\] |\[[\w:]+ @ 0x[0-9a-f]+\] ")
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
# A decode that stops this much short of the container's stated length is a truncated file.
_TRUNCATION_TOLERANCE_S = 0.5


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded song.

    Attributes
    ----------
    samples : np.ndarray, shape [n_samples], float32 in [-1, 1]
        Mono mix, ``mean`` of the channels (pydub's ``(L + R) / 2`` for stereo).
    sample_rate : int
    channels : int
        Channels in the source before the mono mix.
    """

    samples: np.ndarray
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def ffmpeg_binary() -> str:
    """Path of the ffmpeg pydub uses; :class:`DecoderMissingError` when there is none."""
    found = shutil.which(AudioSegment.converter)
    if found is None:
        raise DecoderMissingError(f"ffmpeg not found (looked for {AudioSegment.converter!r}): {INSTALL_HINT}")
    return found


def decode_audio(source: str | bytes, *, sample_rate: int = 44100) -> DecodedAudio:
    """Decode a file to float32 mono at ``sample_rate``.

    Parameters
    ----------
    source : str or bytes
        A local file path, or the file's bytes (piped to ffmpeg's stdin).
    sample_rate : int
        Output rate; ffmpeg resamples.

    Returns
    -------
    DecodedAudio

    Raises
    ------
    DecodeError
        Empty, non-audio, corrupt (the decoder reported errors) or truncated
        input (decoded length short of the length the container states).
    DecoderMissingError
        ffmpeg is not installed.
    """
    if (os.path.getsize(source) if isinstance(source, str) else len(source)) == 0:
        raise DecodeError("empty file (0 bytes)")
    piped = not isinstance(source, str)
    command = [
        ffmpeg_binary(),
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "level+info",
        "-i",
        "pipe:0" if piped else source,
        "-map",
        "0:a:0",
        "-map_metadata",
        "-1",
        "-c:a",
        "pcm_f32le",
        "-ar",
        str(sample_rate),
        "-f",
        "wav",
        "pipe:1",
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        feeder = _feed_stdin(process, bytes(source)) if piped else None  # type: ignore[arg-type]
        try:
            assert process.stdout is not None
            samples, channels = _read_wav_stream(process.stdout)
        finally:
            process.stdout.close()  # type: ignore[union-attr]
            returncode = process.wait()
            if feeder is not None:
                feeder.join()
        log.seek(0)
        messages = log.read().decode("utf-8", "replace").splitlines()
    errors = [_CONTEXT.sub("", line).strip() for line in messages if _ERROR_LEVEL.search(line)]
    if returncode != 0 or samples is None:
        raise DecodeError(_summarise(errors) or f"ffmpeg exited with code {returncode}")
    decoded = DecodedAudio(samples=samples, sample_rate=sample_rate, channels=channels)
    stated = _stated_seconds(messages)
    if stated is not None and decoded.seconds < stated - _TRUNCATION_TOLERANCE_S - 0.02 * stated:
        detail = f" ({_summarise(errors)})" if errors else ""
        raise DecodeError(
            f"truncated: decoded {decoded.seconds:.2f} s of the {stated:.2f} s the file states{detail}"
        )
    if errors:
        raise DecodeError(f"corrupt audio: {_summarise(errors)}")
    return decoded


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


def _feed_stdin(process: subprocess.Popen[bytes], payload: bytes) -> threading.Thread:
    def feed() -> None:
        assert process.stdin is not None
        try:
            process.stdin.write(payload)
        except (BrokenPipeError, OSError):
            pass  # ffmpeg stopped reading (bad input): its exit code says why
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_wav_stream(stream: IO[bytes]) -> tuple[np.ndarray | None, int]:
    """Read a float32 WAV from a pipe, mixing to mono chunk by chunk.

    The RIFF/data sizes of a piped WAV are placeholders, so the data chunk is
    read to the end of the stream. Returns ``(None, 0)`` when there is no WAV.
    """
    header = _read_exact(stream, 12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return None, 0
    channels = 0
    while True:
        chunk_header = _read_exact(stream, 8)
        if len(chunk_header) < 8:
            return None, 0
        chunk_id, size = chunk_header[:4], struct.unpack("<I", chunk_header[4:])[0]
        if chunk_id == b"data":
            break
        body = _read_exact(stream, size + (size & 1))
        if chunk_id == b"fmt ":
            channels = struct.unpack("<H", body[2:4])[0]
    if channels < 1:
        return None, 0
    frame_bytes = 4 * channels
    pieces: list[np.ndarray] = []
    remainder = b""
    while True:
        data = stream.read(_READ_BYTES)
        if not data:
            break
        data = remainder + data
        usable = len(data) - len(data) % frame_bytes
        remainder = data[usable:]
        frames = np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels)
        mixed = frames[:, 0].copy()
        for channel in range(1, channels):  # 15x faster than frames.mean(axis=1) for stereo
            mixed += frames[:, channel]
        if channels > 1:
            mixed *= np.float32(1.0 / channels)
        pieces.append(mixed)
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    np.clip(samples, -1.0, 1.0, out=samples)
    return samples, channels


def _stated_seconds(messages: list[str]) -> float | None:
    for line in messages:
        match = _DURATION.search(line)
        if match:
            hours, minutes, seconds = match.groups()
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return None


def _summarise(errors: list[str]) -> str:
    if not errors:
        return ""
    distinct = list(dict.fromkeys(errors))
    more = f" (+{len(distinct) - 1} more)" if len(distinct) > 1 else ""
    return distinct[0][:300] + more
