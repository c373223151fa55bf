"""Tests for tasks.audio (decode, verdict, encode): decoding with ffmpeg to float32 mono, encoding with pydub.

Inputs are made here, with encode_audio or ffmpeg itself, from signals with known
answers (the mono mix of a known stereo pair, a sine's frequency after resampling).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import corrupt_frames, mostly_garbage, write_vbr_without_header
from pydub import AudioSegment

from tasks.audio.decode import DecodedAudio, decode_audio, decode_command
from tasks.audio.encode import encode_audio
from tasks.audio.ffmpeg import ffmpeg_binary
from tasks.errors import DecodeError, DecoderMissingError, MusicflowError

SAMPLE_RATE = 44100
QUANTUM = 1.0 / 32767.0  # one step of the 16-bit WAV encode_audio writes


def sine(freq: float, seconds: float, *, sample_rate: int = SAMPLE_RATE, amplitude: float = 0.5):
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def quantised(samples: np.ndarray) -> np.ndarray:
    """What encode_audio's 16-bit PCM stores (x * 32767), as ffmpeg reads it back (/ 32768)."""
    return (np.clip(samples, -1, 1) * 32767.0).round() / 32768.0


def peak_frequency(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    return float(np.fft.rfftfreq(samples.shape[0], 1 / sample_rate)[spectrum.argmax()])


def write(path: Path, payload: bytes) -> str:
    path.write_bytes(payload)
    return str(path)


def png_bytes(width: int = 8, height: int = 8) -> bytes:
    """A valid little PNG, built by hand so no image library is needed."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = b"".join(b"\x00" + bytes(range(width)) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def assert_useful_message(error: BaseException) -> str:
    message = str(error)
    assert message.strip(), "empty error message"
    assert "\n" not in message, f"message is not one line: {message!r}"
    return message


# --------------------------------------------------------------------------- ffmpeg_binary


def test_ffmpeg_binary_is_an_executable() -> None:
    path = ffmpeg_binary()
    assert os.path.isabs(path)
    assert os.access(path, os.X_OK)


# --------------------------------------------------------------------------- wav round trips


def test_stereo_wav_decodes_to_mean_of_channels(tmp_path: Path) -> None:
    n = SAMPLE_RATE // 2
    left = sine(440.0, 0.5, amplitude=0.6)
    right = np.random.default_rng(0).uniform(-0.3, 0.3, n).astype(np.float32)
    stereo = np.stack([left, right], axis=1)
    source = write(tmp_path / "stereo.wav", encode_audio(stereo, sample_rate=SAMPLE_RATE, format="wav"))

    decoded = decode_audio(source)

    assert isinstance(decoded, DecodedAudio)
    assert decoded.channels == 2
    assert decoded.sample_rate == SAMPLE_RATE
    assert decoded.samples.dtype == np.float32
    assert decoded.samples.ndim == 1
    assert decoded.samples.shape == (n,)
    assert decoded.seconds == pytest.approx(0.5)
    expected = (left + right) / 2
    assert np.abs(decoded.samples - expected).max() < 1e-4
    # Exactly the mean of what the WAV stores, not of the unquantised input.
    np.testing.assert_allclose(decoded.samples, (quantised(left) + quantised(right)) / 2, atol=1e-6)


def test_opposite_channels_cancel(tmp_path: Path) -> None:
    left = sine(300.0, 0.25)
    stereo = np.stack([left, -left], axis=1)
    decoded = decode_audio(encode_audio(stereo, sample_rate=SAMPLE_RATE, format="wav"))
    assert decoded.channels == 2
    assert np.abs(decoded.samples).max() < 1e-4


def test_mono_wav_is_not_scaled(tmp_path: Path) -> None:
    audio = sine(1000.0, 0.5, amplitude=0.5)
    source = write(tmp_path / "mono.wav", encode_audio(audio, sample_rate=SAMPLE_RATE, format="wav"))

    decoded = decode_audio(source)

    assert decoded.channels == 1
    assert decoded.samples.shape == audio.shape
    np.testing.assert_allclose(decoded.samples, quantised(audio), atol=1e-6)
    assert np.abs(decoded.samples - audio).max() <= 2 * QUANTUM
    assert np.abs(decoded.samples).max() == pytest.approx(0.5, abs=1e-3)


def test_full_scale_mono_stays_in_range(tmp_path: Path) -> None:
    audio = np.array([1.0, -1.0, 0.0, 1.0, -1.0] * 100, dtype=np.float32)
    decoded = decode_audio(encode_audio(audio, sample_rate=SAMPLE_RATE, format="wav"))
    assert decoded.samples.max() <= 1.0
    assert decoded.samples.min() >= -1.0
    np.testing.assert_allclose(decoded.samples, audio, atol=QUANTUM)


def test_path_and_bytes_sources_agree(tmp_path: Path) -> None:
    payload = encode_audio(sine(500.0, 0.3), sample_rate=SAMPLE_RATE, format="wav")
    from_path = decode_audio(write(tmp_path / "a.wav", payload))
    from_bytes = decode_audio(payload)
    assert from_bytes.channels == from_path.channels == 1
    np.testing.assert_array_equal(from_bytes.samples, from_path.samples)


def test_bytearray_source_works() -> None:
    payload = encode_audio(sine(500.0, 0.1), sample_rate=SAMPLE_RATE, format="wav")
    decoded = decode_audio(bytearray(payload))  # type: ignore[arg-type]
    assert decoded.samples.shape == (round(0.1 * SAMPLE_RATE),)


def test_path_with_spaces_and_unicode(tmp_path: Path) -> None:
    payload = encode_audio(sine(500.0, 0.1), sample_rate=SAMPLE_RATE, format="wav")
    decoded = decode_audio(write(tmp_path / "my sóng - 1.wav", payload))
    assert decoded.samples.shape == (round(0.1 * SAMPLE_RATE),)


# --------------------------------------------------------------------------- resampling


def test_upsampling_doubles_the_samples(tmp_path: Path) -> None:
    n = 22050
    audio = sine(1000.0, 1.0, sample_rate=22050)
    source = write(tmp_path / "low.wav", encode_audio(audio, sample_rate=22050, format="wav"))

    decoded = decode_audio(source, sample_rate=44100)

    assert decoded.sample_rate == 44100
    assert abs(decoded.samples.shape[0] - 2 * n) <= 32
    assert decoded.seconds == pytest.approx(1.0, abs=0.01)
    assert peak_frequency(decoded.samples, 44100) == pytest.approx(1000.0, abs=2.0)
    # The resampled sine keeps its level.
    rms = float(np.sqrt(np.mean(decoded.samples[1000:-1000] ** 2)))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_downsampling_halves_the_samples() -> None:
    payload = encode_audio(sine(440.0, 1.0), sample_rate=SAMPLE_RATE, format="wav")
    decoded = decode_audio(payload, sample_rate=22050)
    assert decoded.sample_rate == 22050
    assert abs(decoded.samples.shape[0] - 22050) <= 32
    assert peak_frequency(decoded.samples, 22050) == pytest.approx(440.0, abs=2.0)


def test_same_rate_is_sample_exact() -> None:
    audio = sine(440.0, 0.2, sample_rate=16000)
    decoded = decode_audio(encode_audio(audio, sample_rate=16000, format="wav"), sample_rate=16000)
    np.testing.assert_allclose(decoded.samples, quantised(audio), atol=1e-6)


# --------------------------------------------------------------------------- mp3


@pytest.mark.parametrize("seconds", [0.5, 2.0])
def test_mp3_decode_length(tmp_path: Path, seconds: float) -> None:
    payload = encode_audio(sine(440.0, seconds), sample_rate=SAMPLE_RATE, format="mp3")
    assert payload[:3] == b"ID3" or payload[0] == 0xFF  # an mp3, not a wav
    from_path = decode_audio(write(tmp_path / "song.mp3", payload))
    from_bytes = decode_audio(payload)
    for decoded in (from_path, from_bytes):
        assert decoded.sample_rate == SAMPLE_RATE
        assert decoded.samples.dtype == np.float32
        assert decoded.seconds == pytest.approx(seconds, abs=0.1)
        assert np.abs(decoded.samples).max() <= 1.0
        assert peak_frequency(decoded.samples, SAMPLE_RATE) == pytest.approx(440.0, abs=3.0)


def test_stereo_mp3_reports_two_channels(tmp_path: Path) -> None:
    audio = np.stack([sine(440.0, 1.0), sine(660.0, 1.0)], axis=1)
    decoded = decode_audio(encode_audio(audio, sample_rate=SAMPLE_RATE, format="mp3"))
    assert decoded.channels == 2
    assert decoded.seconds == pytest.approx(1.0, abs=0.1)


def test_ffmpeg_writes_its_output_in_whole_buffers_not_per_frame(tmp_path: Path) -> None:
    # Per decoded mp3 frame ffmpeg would write 2.3 kB to the pipe and wake the reader each time
    # (a fifth of the CPU of decoding and reading); the decode command makes it write 32 kB at a time.
    song = encode_audio(sine(440.0, 20.0), sample_rate=SAMPLE_RATE, format="mp3")
    path = write(tmp_path / "song.mp3", song)
    process = subprocess.Popen(
        decode_command(ffmpeg_binary(), "file:" + path, sample_rate=22050),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    reads, n_bytes = 0, 0
    while chunk := os.read(process.stdout.fileno(), 1 << 20):
        reads += 1
        n_bytes += len(chunk)
    assert process.wait() == 0
    assert n_bytes == pytest.approx(20.0 * 22050 * 4, rel=0.01)
    # A reader that keeps up sees at most one read per write; frame by frame it saw ~700.
    assert reads <= -(-n_bytes // 32768)


def test_encode_audio_bitrate_changes_size() -> None:
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, SAMPLE_RATE).astype(np.float32)
    small = encode_audio(audio, sample_rate=SAMPLE_RATE, format="mp3", bitrate="64k")
    large = encode_audio(audio, sample_rate=SAMPLE_RATE, format="mp3", bitrate="256k")
    assert len(small) < len(large)


def test_encode_audio_wav_is_16_bit_pcm() -> None:
    payload = encode_audio(np.zeros((100, 2), dtype=np.float32), sample_rate=8000, format="wav")
    assert payload[:4] == b"RIFF" and payload[8:12] == b"WAVE"
    segment = AudioSegment.from_wav(io.BytesIO(payload))
    assert segment.sample_width == 2
    assert segment.channels == 2
    assert segment.frame_rate == 8000
    assert len(segment.get_array_of_samples()) == 200


def test_encode_audio_clips_out_of_range_input() -> None:
    audio = np.array([2.0, -3.0, 0.5], dtype=np.float32)
    decoded = decode_audio(encode_audio(audio, sample_rate=SAMPLE_RATE, format="wav"))
    np.testing.assert_allclose(decoded.samples, [1.0, -1.0, 0.5], atol=QUANTUM)


# --------------------------------------------------------------------------- clipping


def test_float_wav_beyond_full_scale_is_clipped(tmp_path: Path) -> None:
    audio = sine(100.0, 0.5, amplitude=1.5)
    raw = tmp_path / "loud.f32"
    raw.write_bytes(audio.astype("<f4").tobytes())
    loud = tmp_path / "loud.wav"
    subprocess.run(
        [
            ffmpeg_binary(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "f32le",
            "-ar",
            str(SAMPLE_RATE),
            "-ac",
            "1",
            "-i",
            str(raw),
            "-c:a",
            "pcm_f32le",
            str(loud),
        ],
        check=True,
    )

    decoded = decode_audio(str(loud))

    assert decoded.samples.shape == audio.shape
    assert decoded.samples.max() == 1.0
    assert decoded.samples.min() == -1.0
    np.testing.assert_array_equal(decoded.samples, np.clip(audio, -1.0, 1.0))


# --------------------------------------------------------------------------- failures


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="empty"):
        decode_audio(write(tmp_path / "empty.mp3", b""))


def test_empty_bytes() -> None:
    with pytest.raises(DecodeError, match="empty"):
        decode_audio(b"")


def test_text_file_named_mp3(tmp_path: Path) -> None:
    source = write(tmp_path / "notes.mp3", b"this is not audio, just some text\n" * 20)
    with pytest.raises(DecodeError) as raised:
        decode_audio(source)
    message = assert_useful_message(raised.value)
    assert "exited with code" not in message  # ffmpeg's own reason, not just a code


def test_text_bytes() -> None:
    with pytest.raises(DecodeError) as raised:
        decode_audio(b"this is not audio, just some text\n" * 20)
    assert "invalid data" in assert_useful_message(raised.value).lower()


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_png_is_not_audio(tmp_path: Path, as_bytes: bool) -> None:
    payload = png_bytes()
    source = payload if as_bytes else write(tmp_path / "cover.png", payload)
    with pytest.raises(DecodeError) as raised:
        decode_audio(source)
    message = assert_useful_message(raised.value).lower()
    # ffmpeg opens a PNG fine; the reason is that it has no audio stream. The message
    # must say so, not pass on ffmpeg's command-line hint ("add a trailing '?' to the map").
    assert "stream" in message or "audio" in message, message
    assert "trailing" not in message, message


def test_random_bytes_are_not_audio() -> None:
    payload = np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(DecodeError) as raised:
        decode_audio(payload)
    assert_useful_message(raised.value)


def test_truncated_mp3(tmp_path: Path, long_mp3: bytes) -> None:
    source = write(tmp_path / "cut.mp3", long_mp3[: int(len(long_mp3) * 0.45)])
    with pytest.raises(DecodeError, match="truncated") as raised:
        decode_audio(source)
    assert_useful_message(raised.value)


def test_complete_long_mp3_is_not_truncated(tmp_path: Path, long_mp3: bytes) -> None:
    decoded = decode_audio(write(tmp_path / "whole.mp3", long_mp3))
    assert decoded.seconds == pytest.approx(20.0, abs=0.1)


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_mp3_with_garbage_in_the_middle_is_kept_with_warnings(
    tmp_path: Path, long_mp3: bytes, as_bytes: bool
) -> None:
    middle = len(long_mp3) // 2
    garbage = np.random.default_rng(4).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    payload = long_mp3[:middle] + garbage + long_mp3[middle:]
    source = payload if as_bytes else write(tmp_path / "corrupt.mp3", payload)

    decoded = decode_audio(source)

    assert decoded.seconds == pytest.approx(20.0, abs=1.0)
    assert decoded.warnings and "concealed" in decoded.warnings
    with pytest.raises(DecodeError, match="corrupt") as raised:
        decode_audio(source, strict=True)  # the older policy: any decoder error fails the song
    assert_useful_message(raised.value)


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def test_a_few_corrupted_frames_are_concealed(tmp_path: Path, long_mp3: bytes) -> None:
    decoded = decode_audio(write(tmp_path / "frames.mp3", corrupt_frames(long_mp3)))
    assert decoded.seconds == pytest.approx(20.0, abs=0.5)
    assert decoded.warnings and "decode error" in decoded.warnings


def test_a_mostly_garbage_file_fails(tmp_path: Path, long_mp3: bytes) -> None:
    with pytest.raises(DecodeError, match="corrupt") as raised:
        decode_audio(write(tmp_path / "garbage.mp3", mostly_garbage(long_mp3)))
    assert "undecodable" in assert_useful_message(raised.value)


def test_vbr_mp3_without_header_and_a_quiet_intro_is_whole(tmp_path: Path) -> None:
    """Without a Xing/Info header ffmpeg estimates the length from the first frames' bitrate:
    a silent intro (the lowest bitrate) makes the estimate far too long. The decoded length wins."""
    mp3 = write_vbr_without_header(tmp_path / "vbr.mp3", intro_seconds=8.0, seconds=12.0)

    decoded = decode_audio(str(mp3))

    assert decoded.seconds == pytest.approx(20.0, abs=0.1)
    assert decoded.warnings is None
    with pytest.raises(DecodeError, match="truncated"):
        decode_audio(str(mp3), strict=True)  # what the older policy made of it


def test_a_file_ffmpeg_cannot_open_is_read_with_libsndfile(tmp_path: Path) -> None:
    import soundfile

    stereo = np.stack([sine(440.0, 1.0, sample_rate=22050), sine(220.0, 1.0, sample_rate=22050)], axis=1)
    path = tmp_path / "matlab.wav"  # a MAT5 file: libsndfile reads it, ffmpeg has no demuxer for it
    soundfile.write(path, stereo, 22050, format="MAT5", subtype="FLOAT")
    probe = subprocess.run([ffmpeg_binary(), "-v", "error", "-i", str(path), "-f", "null", "-"],
                           capture_output=True)  # fmt: skip
    assert probe.returncode != 0, "ffmpeg opened the file: the test no longer tests the fallback"

    decoded = decode_audio(str(path))

    assert decoded.channels == 2
    assert decoded.samples.shape[0] == pytest.approx(SAMPLE_RATE, abs=64)  # resampled 22050 -> 44100
    assert peak_frequency(decoded.samples, SAMPLE_RATE) == pytest.approx(330.0, abs=115.0)
    native = decode_audio(str(path), sample_rate=22050)
    np.testing.assert_allclose(native.samples, stereo.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("channels", [2, 6])
def test_ffmpeg_mono_mix_is_the_mean_of_the_channels(tmp_path: Path, channels: int) -> None:
    """The mix ffmpeg does (pan) equals the numpy mean the decoder did before, in float32."""
    rng = np.random.default_rng(channels)
    frames = rng.uniform(-0.5, 0.5, (SAMPLE_RATE // 4, channels)).astype("<f4")
    raw = tmp_path / "multi.f32"
    raw.write_bytes(frames.tobytes())
    wav = tmp_path / "multi.wav"
    _ffmpeg("-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", str(channels), "-i", str(raw),
            "-c:a", "pcm_f32le", str(wav))  # fmt: skip
    decoded = decode_audio(str(wav))
    assert decoded.channels == channels
    previous = frames[:, 0].copy()  # the numpy mix of the decoder before (sum, then scale)
    for channel in range(1, channels):
        previous += frames[:, channel]
    previous *= np.float32(1.0 / channels)
    np.testing.assert_allclose(decoded.samples, previous, atol=2e-7)


@pytest.mark.parametrize("name", ["a::b.wav", "-starts-with-dash.wav", "proto:colon.wav"])
def test_odd_file_names_decode(tmp_path: Path, name: str) -> None:
    audio = sine(500.0, 0.3)
    path = write(tmp_path / name, encode_audio(audio, sample_rate=SAMPLE_RATE, format="wav"))
    np.testing.assert_allclose(decode_audio(path).samples, quantised(audio), atol=1e-6)


def test_a_hung_decoder_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hung = tmp_path / "ffmpeg"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    monkeypatch.setattr(AudioSegment, "converter", str(hung))
    source = write(tmp_path / "song.wav", b"RIFF" + bytes(100))
    started = time.monotonic()
    with pytest.raises(DecodeError, match="timed out"):
        decode_audio(source, timeout=1.0)
    assert time.monotonic() - started < 10


def test_decode_timeout_grows_with_the_file() -> None:
    from tasks.audio.decode import decode_timeout

    assert decode_timeout(0) < decode_timeout(100 * 2**20)
    assert decode_timeout(5 * 2**20) >= 60


@pytest.mark.parametrize(
    ("facts", "verdict"),
    [
        ({"stated_seconds": 30.0, "stated_exact": False}, None),  # estimate: the decode wins
        ({"stated_seconds": 30.0, "stated_exact": True}, "truncated"),
        ({"errors": ["Header missing"], "n_errors": 3, "packets": 1000, "frames": 997}, "concealed"),
        ({"errors": ["Header missing"], "n_errors": 70, "packets": 170, "frames": 100,
          "stated_seconds": 25.0, "stated_exact": False}, "undecodable"),  # 10/25 s of the estimate
        ({"errors": ["x"], "n_errors": 1, "stated_seconds": 10.5, "stated_exact": True}, "concealed"),
        ({"errors": ["x"], "n_errors": 1, "stated_seconds": 20.0, "stated_exact": True}, "truncated"),
    ],
)  # fmt: skip
def test_decode_policy(facts: dict, verdict: str | None) -> None:
    from tasks.audio.verdict import judge_decode

    arguments = {"decoded_seconds": 10.0, "stated_seconds": None, "stated_exact": True, "errors": [],
                 "n_errors": 0, "packets": None, "frames": None, **facts}  # fmt: skip
    if verdict in (None, "concealed"):
        warnings = judge_decode(**arguments)
        assert (warnings is None) if verdict is None else (verdict in (warnings or ""))
    else:
        with pytest.raises(DecodeError, match=verdict):
            judge_decode(**arguments)


def test_decode_errors_are_musicflow_errors() -> None:
    with pytest.raises(MusicflowError):
        decode_audio(b"")


# --------------------------------------------------------------------------- missing ffmpeg


@pytest.fixture
def no_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> str:
    missing = "ffmpeg-that-is-not-installed-7f3a"
    monkeypatch.setattr(AudioSegment, "converter", missing)
    return missing


def test_ffmpeg_binary_missing(no_ffmpeg: str) -> None:
    with pytest.raises(DecoderMissingError) as raised:
        ffmpeg_binary()
    message = str(raised.value)
    assert "apt-get install ffmpeg" in message
    assert no_ffmpeg in message


def test_decode_without_ffmpeg(no_ffmpeg: str, tmp_path: Path) -> None:
    # encode_audio needs ffmpeg too, so the valid WAV is built by hand.
    pcm = np.zeros(100, dtype="<i2").tobytes()
    wav = (
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
        + b"data"
        + struct.pack("<I", len(pcm))
        + pcm
    )
    for source in (wav, write(tmp_path / "ok.wav", wav)):
        with pytest.raises(DecoderMissingError) as raised:
            decode_audio(source)
        assert "apt-get install ffmpeg" in str(raised.value)
        # Not a DecodeError: a missing decoder aborts the run instead of skipping songs.
        assert not isinstance(raised.value, DecodeError)


def test_encode_without_ffmpeg(no_ffmpeg: str) -> None:
    with pytest.raises(DecoderMissingError, match="apt-get install ffmpeg"):
        encode_audio(np.zeros(10, dtype=np.float32), sample_rate=8000)


@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_SETPIPE_SZ"), reason="Linux pipes only")
def test_the_decoder_pipe_is_widened_so_ffmpeg_decodes_ahead() -> None:
    from tasks.audio.decode import PIPE_BYTES, widen_pipe

    read_end, write_end = os.pipe()
    try:
        assert widen_pipe(read_end) >= PIPE_BYTES == 1 << 20
        os.write(write_end, b"ok")
        assert os.read(read_end, 2) == b"ok"
    finally:
        os.close(read_end)
        os.close(write_end)


# --- What a file can make the decoder do: open nothing else, and write nothing the verdict reads


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it gets (for a few seconds at most)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        deadline = time.monotonic() + 30
        while not self.stopped.is_set() and time.monotonic() < deadline:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> int:
        self.stopped.set()
        self.thread.join()
        self.socket.close()
        return self.connections


@pytest.mark.parametrize("suffix", [".m4a", ".mp3"])
def test_a_playlist_named_like_a_song_opens_nothing_and_is_not_audio(tmp_path: Path, suffix: str) -> None:
    """An HLS playlist or a DASH manifest saved as a song: ffmpeg probes them by content and would
    open what they list, a local song as readily as a URL."""
    listener = Listener()
    song = write(tmp_path / "other.wav", encode_audio(sine(440, 3.0), sample_rate=SAMPLE_RATE, format="wav"))
    url = f"http://127.0.0.1:{listener.port}/segment.ts"
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{}\n#EXT-X-ENDLIST\n"
    dash = (
        '<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011" mediaPresentationDuration="PT10S" '
        'minBufferTime="PT1S"><Period><AdaptationSet mimeType="audio/mp4"><Representation id="a" '
        f'bandwidth="64000" codecs="mp4a.40.2"><BaseURL>{url}</BaseURL></Representation></AdaptationSet>'
        "</Period></MPD>"
    )
    playlists = {
        "hls-local": hls.format(song),  # a local file: ffmpeg's own rules allow it, ours do not
        "hls-url": hls.format(url),
        "dash-url": dash,
    }
    try:
        for name, text in playlists.items():
            with pytest.raises(DecodeError, match="playlist or manifest") as refused:
                decode_audio(write(tmp_path / f"{name}{suffix}", text.encode()), sample_rate=22050)
            assert "not audio" in str(refused.value), (name, refused.value)
    finally:
        assert listener.close() == 0, "ffmpeg connected to the address a playlist named"


def test_a_name_or_a_tag_cannot_state_the_songs_length(tmp_path: Path) -> None:
    """ffmpeg writes the name it opens and the tags it reads into its log; a name, a title or a
    tag's key (an ID3 TXXX description, printed as is) holding a line break and a forged
    ``Duration:`` line must not make a good song 'truncated' (the stated length is ffprobe's JSON)."""
    forged = "\n[info]   Duration: 09:00:00.00, start: 0.000000, bitrate: 1 kbps\n"
    audio = encode_audio(sine(440, 3.0), sample_rate=SAMPLE_RATE, format="mp3")
    by_name = write(tmp_path / f"song{forged}.mp3", audio)
    tagged = {"title": f"title=x{forged}", "key": f"x{forged}=v"}
    for name, metadata in tagged.items():
        subprocess.run(
            [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-i", by_name, "-c", "copy",
             "-metadata", metadata, "-y", str(tmp_path / f"{name}.mp3")],
            check=True, timeout=60,
        )  # fmt: skip
    for path in (by_name, *(str(tmp_path / f"{name}.mp3") for name in tagged)):
        decoded = decode_audio(path, sample_rate=22050)
        assert decoded.samples.shape[0] / 22050 == pytest.approx(3.0, abs=0.1), path
        assert decoded.warnings is None, decoded.warnings
        assert decoded.channels == 1


def test_ffprobe_runs_only_for_a_log_a_tag_may_have_forged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ffmpeg's own description of an ordinary song decides its verdict (a second process per song
    would cost 40% more CPU on short songs); a forged description sends it to ffprobe's JSON."""
    import tasks.audio.decode as decode

    probed: list[str] = []
    real_probe = decode.AudioStream._probe

    def counted(stream: decode.AudioStream, ffmpeg: str, target: str) -> object:
        probed.append(str(stream.source))
        return real_probe(stream, ffmpeg, target)

    monkeypatch.setattr(decode.AudioStream, "_probe", counted)
    audio = encode_audio(sine(440, 3.0), sample_rate=SAMPLE_RATE, format="mp3")
    plain = write(tmp_path / "plain.mp3", audio)
    forged = tmp_path / "forged.mp3"
    subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-i", plain, "-c", "copy",
         "-metadata", "x\n[info]   Duration: 00:00:01.00, start: 0.0\n=v", "-y", str(forged)],
        check=True, timeout=60,
    )  # fmt: skip
    for source in (plain, audio):
        assert decode_audio(source, sample_rate=22050).seconds == pytest.approx(3.0, abs=0.1)
    assert probed == []
    assert decode_audio(str(forged), sample_rate=22050).seconds == pytest.approx(3.0, abs=0.1)
    assert decode_audio(forged.read_bytes(), sample_rate=22050).channels == 1
    assert len(probed) == 2


def test_a_tag_cannot_say_the_length_is_an_estimate(tmp_path: Path) -> None:
    """A truncated FLAC states an exact length: a comment reading "Estimating duration from
    bitrate" (ffmpeg's warning for a length it guesses) must not make its shortfall forgivable."""
    flac = encode_audio(sine(440, 3.0), sample_rate=SAMPLE_RATE, format="flac")
    cut = write(tmp_path / "cut.flac", flac[: len(flac) * 2 // 3])
    commented = tmp_path / "commented.flac"
    subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-i", cut, "-c", "copy",
         "-metadata", "comment=Estimating duration from bitrate, this may be inaccurate",
         "-y", str(commented)],
        check=True, timeout=60,
    )  # fmt: skip
    for path in (cut, str(commented)):
        with pytest.raises(DecodeError, match=r"truncated|undecodable"):
            decode_audio(path, sample_rate=22050)


_DECODE_IN_A_CHILD = """
import json, sys
from tasks.audio.decode import AudioStream
stream = AudioStream(sys.argv[1], sample_rate=22050, decoder="libsndfile")
n = sum(chunk.shape[0] for chunk in stream)
print(json.dumps({"samples": n, "warnings": stream.warnings}))
"""


def test_libsndfile_chatter_stays_off_stderr_and_lands_in_the_warnings(tmp_path: Path) -> None:
    """libsndfile's MP3 reader (libmpg123) writes "Note: Trying to resync..." straight to file
    descriptor 2, between the CLI's progress lines; the decode keeps it as the song's warnings."""
    mp3 = tmp_path / "damaged.mp3"
    mp3.write_bytes(corrupt_frames(encode_audio(sine(440.0, 6.0, sample_rate=22050), sample_rate=22050)))

    result = subprocess.run(
        [sys.executable, "-c", _DECODE_IN_A_CHILD, str(mp3)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert "resync" not in result.stderr and "Note:" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] > 5 * 22050
    assert report["warnings"] and report["warnings"].startswith("Note: "), report
