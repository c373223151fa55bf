"""Decoding any ffmpeg-readable file to float32 mono, whole or chunk by chunk.

Decoding calls the ffmpeg binary that pydub is configured with
(:func:`tasks.audio.ffmpeg.ffmpeg_binary`) directly and reads 32-bit float WAV
from its stdout: no temporary files, no int16 round trip, and 1.4x faster than
``AudioSegment.from_file`` (see ``benchmarks/bench_ingest.py``). Files ffmpeg
cannot open, or decodes badly, are read with libsndfile when it can. Whether a
decode is kept is :mod:`tasks.audio.verdict`'s policy; encoding is
:mod:`tasks.audio.encode`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from tasks.audio.ffmpeg import ffmpeg_binary, ffprobe_binary
from tasks.audio.verdict import (
    TRUNCATION_TOLERANCE_S,
    ProbeFacts,
    judge_decode,
    read_log,
    read_probe,
    summarise,
)
from tasks.errors import DecodeError

_READ_BYTES = 1 << 20  # ffmpeg output read per chunk: 262144 float32 samples, 6 s at 44.1 kHz
# ffmpeg's stdout pipe holds this much (Linux's default is 64 kB, 0.7 s at 22.05 kHz): ffmpeg decodes
# the next chunk while the reader featurises and writes this one, instead of waiting for it.
PIPE_BYTES = 1 << 20
# ffmpeg writes its raw output in whole 32 kB buffers, not once per decoded frame (its default on a
# pipe: a 2.3 kB write, and a reader wake-up, per mp3 frame at 22.05 kHz). On the drascula songs
# as mp3, decoding and reading alone: ffmpeg 6.2 -> 5.5 CPU s, the reader 0.97 -> 0.35 s.
BUFFERED_OUTPUT = ("-flush_packets", "0")
# ffmpeg's mono mix: the mean of the channels, (L + R) / 2 for stereo, for up to 64 channels
# ("<" renormalises the gains over the channels the input has; -ac 1 would weight them otherwise).
MONO_MIX = "aformat=sample_fmts=flt|fltp,pan=mono|c0<" + "+".join(f"c{index}" for index in range(64))
# What ffmpeg may open: the file or pipe we hand it, and nothing that file names. A playlist or
# manifest saved as .mp3/.m4a is probed as one (hls and dash are probed by content) and would make
# ffmpeg open the inputs it lists; those demuxers are left out of the formats it may use, and no
# protocol but the file and the pipe is allowed (no network, whatever a demuxer asks for).
PROTOCOLS = "file,pipe"
INPUT_OPENERS = frozenset(
    {"hls", "dash", "concat", "sdp", "rtp", "rtsp", "imf", "webm_dash_manifest", "lavfi", "avisynth",
     "vapoursynth"}
)  # fmt: skip
# Decoding time limit: a base plus a time per byte, far beyond what any real decoder needs
# (ffmpeg decodes mp3 at ~10 MB/s per core), so only a hung decoder or a stalled read hits it.
# What libsndfile's MP3 reader (libmpg123) writes to the process's stderr about a damaged stream:
# "Note: Trying to resync...", "Warning: Xing stream size off by more than 1%...",
# "[src/libmpg123/parse.c:...] error: ...". Kept off the terminal: the song's ``warnings``.
_CHATTER = re.compile(r"^\s*(Note:|Warning:|Error:|\[src/|\[.*mpg123)", re.IGNORECASE)
_STDERR_LOCK = threading.Lock()  # one redirection of file descriptor 2 at a time per process

DECODE_TIMEOUT_BASE_S = 120.0
# ffprobe reads a file's header only (when ffmpeg's log cannot be trusted, see tasks.audio.verdict).
PROBE_TIMEOUT_S = 30.0
DECODE_TIMEOUT_S_PER_MB = 4.0


def decode_timeout(n_bytes: int) -> float:
    """Seconds a decode of an ``n_bytes`` file may take before it is stopped."""
    return DECODE_TIMEOUT_BASE_S + DECODE_TIMEOUT_S_PER_MB * n_bytes / 2**20


@dataclass(frozen=True)
class DecodedAudio:
    """A decoded song.

    Attributes
    ----------
    samples : np.ndarray, shape [n_samples], float32 in [-1, 1]
        Mono mix, the mean of the channels (``(L + R) / 2`` for stereo).
    sample_rate : int
    channels : int
        Channels in the source before the mono mix.
    warnings : str or None
        Decode errors that were concealed (the song was kept), in a line.
    """

    samples: np.ndarray
    sample_rate: int
    channels: int
    warnings: str | None = None

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate


# Formats libsndfile reads and ffmpeg has no demuxer for (ffmpeg may misread them as another).
_SNDFILE_ONLY = frozenset({"MAT4", "MAT5", "PVF", "XI", "HTK", "SDS", "AVR", "SD2", "MPC2K", "PAF", "WVE"})


class DecoderFallback(DecodeError):
    """ffmpeg's decode failed after it gave chunks, and libsndfile can open the file: decode again
    with ``AudioStream(..., decoder="libsndfile")``, discarding what the failed decode gave."""


class AudioStream:
    """Decode a file chunk by chunk to float32 mono at ``sample_rate``, in bounded memory.

    Iterate it for chunks (``np.ndarray [k] float32`` in [-1, 1]); once the
    iteration is over, ``channels``, ``n_samples`` and ``warnings`` describe the
    decode. The verdict comes at the end of the iteration: :class:`DecodeError`
    for empty, non-audio, truncated or mostly undecodable input (the caller
    discards what it consumed). Policy (``strict=False``):

    - the decoded length is trusted over a length ffmpeg only estimates (an mp3
      without a Xing/Info header); a file is truncated when its container
      states an exact length that the decode falls short of;
    - a decode with errors is kept, with ``warnings``, when most of the stream
      decoded (:data:`~tasks.audio.verdict.MIN_DECODED_OF_EXACT` of an exact length,
      :data:`~tasks.audio.verdict.MIN_DECODED_OF_ESTIMATE` of estimates), and fails otherwise;
    - a file ffmpeg cannot open, or decodes badly, is read with libsndfile when
      libsndfile can open it (after a bad partial decode, :class:`DecoderFallback`
      tells the consumer to start again with ``decoder="libsndfile"``).

    ``strict=True`` is the older policy: any decoder error fails the song as
    corrupt, any shortfall of the stated length as truncated. ffmpeg is killed
    after ``timeout`` seconds (default :func:`decode_timeout` of the size).
    """

    def __init__(
        self,
        source: str | bytes,
        *,
        sample_rate: int = 44100,
        strict: bool = False,
        timeout: float | None = None,
        decoder: str = "ffmpeg",
    ) -> None:
        self.source = source
        self.sample_rate = sample_rate
        self.strict = strict
        self.start_with = decoder
        self.n_bytes = os.path.getsize(source) if isinstance(source, str) else len(source)
        self.timeout = decode_timeout(self.n_bytes) if timeout is None else timeout
        self.channels = 0
        self.n_samples = 0
        self.warnings: str | None = None
        self.decoder = "ffmpeg"

    @property
    def seconds(self) -> float:
        return self.n_samples / self.sample_rate

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.n_bytes == 0:
            raise DecodeError("empty file (0 bytes)")
        ffmpeg = ffmpeg_binary()
        if self.start_with == "libsndfile":
            self.decoder = "libsndfile"
            yield from self._sndfile(ffmpeg)
            return
        try:
            yield from self._ffmpeg(ffmpeg)
            return
        except DecodeError as error:
            # libsndfile reads some files ffmpeg refuses (some Vorbis), and formats ffmpeg has no
            # demuxer for, which it may misread as another format. A file ffmpeg decoded in part
            # in its own format keeps ffmpeg's verdict (truncated, corrupt).
            sndfile_format = self._sndfile_format()
            if sndfile_format is None or (self.n_samples and sndfile_format not in _SNDFILE_ONLY):
                raise
            if self.n_samples:  # the consumer has chunks of a bad decode: it starts again
                raise DecoderFallback(str(error)) from error
        self.decoder = "libsndfile"
        yield from self._sndfile(ffmpeg)

    # ------------------------------------------------------------------ ffmpeg

    def _ffmpeg(self, ffmpeg: str) -> Iterator[np.ndarray]:
        piped = not isinstance(self.source, str)
        with contextlib.ExitStack() as stack:
            # ffmpeg opens a name of ours, so the song's own name never reaches its log ("file:"
            # so that it is never read as a protocol or an option either).
            target = "pipe:0" if piped else "file:" + stack.enter_context(neutral_name(self.source))  # type: ignore[arg-type]
            command = decode_command(ffmpeg, target, sample_rate=self.sample_rate)
            log = stack.enter_context(tempfile.TemporaryFile())
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
            feeder = _feed_stdin(process, [bytes(self.source)]) if piped else None  # type: ignore[arg-type]
            returncode = yield from self._pump(process, feeder)
            log.seek(0)
            facts = read_log(log)
            if facts.refused_format:
                raise DecodeError(
                    f"not audio: a {facts.refused_format} playlist or manifest, which would make the "
                    "decoder open the inputs it names (refused)"
                )
            errors = [line.replace(target, "the file") for line in facts.errors]
            # A log whose description a tag may have forged: the facts come from ffprobe's JSON.
            stated = facts.stated if facts.trusted or self.n_samples == 0 else self._probe(ffmpeg, target)
        self.channels = stated.channels
        if self.n_samples == 0:
            raise DecodeError(summarise(errors) or f"ffmpeg exited with code {returncode}")
        if returncode != 0 and not errors:
            errors = [f"ffmpeg exited with code {returncode}"]
        self.warnings = judge_decode(
            decoded_seconds=self.seconds,
            stated_seconds=stated.stated_seconds,
            stated_exact=not stated.estimated,
            errors=errors,
            n_errors=max(facts.n_errors, len(errors)),
            packets=facts.packets,
            frames=facts.frames,
            size_seconds=self.n_bytes * 8 / (1000 * stated.kbps) if stated.kbps else None,
            strict=self.strict,
        )

    def _probe(self, ffmpeg: str, target: str) -> ProbeFacts:
        """ffprobe's JSON statement of ``target``'s length, channels and bitrate (:func:`probe_command`)."""
        piped = target == "pipe:0"
        with tempfile.TemporaryFile() as report, tempfile.TemporaryFile() as warnings:
            probe = subprocess.Popen(
                probe_command(ffprobe_binary(), target, allowed=allowed_formats(ffmpeg)),
                stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                stdout=report,
                stderr=warnings,
            )
            try:
                if piped:
                    _feed_stdin(probe, [bytes(self.source)])  # type: ignore[arg-type]
                probe.wait(timeout=PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise DecodeError(
                    f"timed out: ffprobe did not describe the file in {PROBE_TIMEOUT_S:.0f} s"
                ) from None
            finally:
                _stop(probe)
            report.seek(0)
            warnings.seek(0)
            return read_probe(report.read(), warnings)

    def _read_samples(self, stream: IO[bytes]) -> Iterator[np.ndarray]:
        remainder = b""
        while True:
            data = stream.read(_READ_BYTES)
            if not data:
                break
            if remainder:
                data = remainder + data
            usable = len(data) - len(data) % 4
            remainder = data[usable:]
            if not usable:
                continue
            samples = np.frombuffer(data, dtype="<f4", count=usable // 4).copy()
            np.clip(samples, -1.0, 1.0, out=samples)
            self.n_samples += samples.shape[0]
            yield samples

    # ------------------------------------------------------------------ libsndfile

    def _sndfile_format(self) -> str | None:
        """libsndfile's name of the file's format ("WAV", "MAT5"...), None when it cannot open it."""
        try:
            import soundfile
        except ImportError:  # pragma: no cover - a dependency; without it, ffmpeg's verdict stands
            return None
        try:
            # Its chatter is dropped: the decode that may follow records the same in its warnings.
            with decoder_chatter([]), soundfile.SoundFile(self._sndfile_source()) as handle:
                return str(handle.format) if handle.frames else None
        except Exception:  # libsndfile's verdict on a file ffmpeg refused: not audio either
            return None

    def _sndfile_source(self) -> Any:
        return self.source if isinstance(self.source, str) else io.BytesIO(bytes(self.source))

    def _sndfile(self, ffmpeg: str) -> Iterator[np.ndarray]:
        """Read with libsndfile, mix to mono, and resample with ffmpeg when the rates differ."""
        import soundfile

        chatter: list[str] = []
        with decoder_chatter(chatter):
            handle = soundfile.SoundFile(self._sndfile_source())
        with handle:
            self.channels = handle.channels
            native = handle.samplerate
            expected = handle.frames

            def mono_chunks() -> Iterator[np.ndarray]:
                blocks = handle.blocks(blocksize=1 << 16, dtype="float32", always_2d=True)
                while True:
                    with decoder_chatter(chatter):  # around libsndfile only, not the consumer's work
                        block = next(blocks, None)
                    if block is None:
                        return
                    mixed = block[:, 0].copy()
                    for channel in range(1, block.shape[1]):
                        mixed += block[:, channel]
                    if block.shape[1] > 1:
                        mixed *= np.float32(1.0 / block.shape[1])
                    yield mixed

            if native == self.sample_rate:
                decoded = 0
                for chunk in mono_chunks():
                    decoded += chunk.shape[0]
                    np.clip(chunk, -1.0, 1.0, out=chunk)
                    self.n_samples += chunk.shape[0]
                    yield chunk
            else:
                decoded = yield from self._resampled(ffmpeg, mono_chunks(), native)
        self.warnings = summarise(chatter) or None
        if self.n_samples == 0:
            raise DecodeError("libsndfile read no samples")
        if expected and decoded < expected - TRUNCATION_TOLERANCE_S * native:
            raise DecodeError(
                f"truncated: decoded {decoded / native:.2f} s "
                f"of the {expected / native:.2f} s the file states"
            )

    def _resampled(
        self, ffmpeg: str, chunks: Iterator[np.ndarray], native: int
    ) -> Generator[np.ndarray, None, int]:
        command = [ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error", "-protocol_whitelist", "pipe",
                   "-f", "f32le", "-ar", str(native), "-ac", "1", "-i", "pipe:0",
                   "-ar", str(self.sample_rate), *BUFFERED_OUTPUT, "-f", "f32le", "pipe:1"]  # fmt: skip
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        counted = [0]

        def pcm() -> Iterator[bytes]:
            for chunk in chunks:
                counted[0] += chunk.shape[0]
                yield chunk.astype("<f4").tobytes()

        yield from self._pump(process, _feed_stdin(process, pcm()))
        return counted[0]

    def _pump(
        self, process: subprocess.Popen[bytes], feeder: threading.Thread | None
    ) -> Generator[np.ndarray, None, int]:
        """Chunks of ``process``'s stdout until it ends, killed after ``timeout``; its exit code."""
        assert process.stdout is not None
        widen_pipe(process.stdout.fileno())
        with _Watchdog(self.timeout, process) as watchdog:
            try:
                yield from self._read_samples(process.stdout)
            finally:
                process.stdout.close()
                returncode = _wait(process)
                if feeder is not None:
                    feeder.join(timeout=5)
        if watchdog.fired:
            raise DecodeError(f"timed out: decoding took longer than {self.timeout:.0f} s (ffmpeg stopped)")
        return returncode


@contextlib.contextmanager
def decoder_chatter(into: list[str]) -> Iterator[None]:
    """Keep what a decoder library writes to the process's stderr (file descriptor 2) off the
    terminal while the block runs: its notes and warnings (:data:`_CHATTER`) are appended to
    ``into``, anything else is written to stderr when the block ends."""
    with _STDERR_LOCK:  # the dup too: another thread's redirection is no stderr to restore
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all (a daemon): nothing can reach a terminal
            saved = -1
        if saved < 0:
            yield
            return
        with _restored(saved, into):
            yield


@contextlib.contextmanager
def _restored(saved: int, into: list[str]) -> Iterator[None]:
    """Point file descriptor 2 at a temporary file, then back at ``saved`` (see :func:`decoder_chatter`)."""
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = [line.strip() for line in capture.read().decode(errors="replace").splitlines()]
            into.extend(line for line in lines if _CHATTER.match(line))
            other = [line for line in lines if line and not _CHATTER.match(line)]
            if other:
                os.write(2, ("\n".join(other) + "\n").encode())


def decode_command(ffmpeg: str, target: str, *, sample_rate: int) -> list[str]:
    """ffmpeg's command line that decodes ``target``'s first audio stream to float32 mono at
    ``sample_rate`` on its stdout (:data:`MONO_MIX`, :data:`BUFFERED_OUTPUT`), logging what
    :func:`~tasks.audio.verdict.read_log` reads (each line with its level: the decoder's errors
    and its closing counts) on stderr, and opening
    nothing but ``target`` (:data:`PROTOCOLS`, :func:`allowed_formats`)."""
    return [ffmpeg, "-hide_banner", "-nostats", "-loglevel", "level+verbose",
            "-protocol_whitelist", PROTOCOLS, "-format_whitelist", allowed_formats(ffmpeg), "-i", target,
            "-map", "0:a:0", "-map_metadata", "-1", "-af", MONO_MIX, "-ar", str(sample_rate),
            "-c:a", "pcm_f32le", *BUFFERED_OUTPUT, "-f", "f32le", "pipe:1"]  # fmt: skip


def probe_command(ffprobe: str, target: str, *, allowed: str) -> list[str]:
    """ffprobe's command line that writes ``target``'s stated length and its first audio stream's
    channels and bitrate as JSON on its stdout (a tag is one escaped string there), and on stderr
    only warnings and errors (never the tags or the name: those are info), opening nothing but
    ``target`` (``allowed`` demuxers)."""
    return [ffprobe, "-hide_banner", "-loglevel", "level+warning", "-protocol_whitelist", PROTOCOLS,
            "-format_whitelist", allowed, "-select_streams", "a:0",
            "-show_entries", "format=duration:stream=channels,bit_rate", "-of", "json", target]  # fmt: skip


_ALLOWED_FORMATS: dict[str, str] = {}
LIST_DEMUXERS_TIMEOUT_S = 5.0


def allowed_formats(ffmpeg: str) -> str:
    """The demuxers ``ffmpeg`` may pick for an input (``-format_whitelist``): every one it has, but
    those that open other inputs (:data:`INPUT_OPENERS`). Asked once per process and binary; an
    ffmpeg that cannot list them in time decodes nothing (:class:`DecodeError`), rather than
    decoding without the list."""
    if ffmpeg not in _ALLOWED_FORMATS:
        try:
            listing = subprocess.run(
                [ffmpeg, "-hide_banner", "-demuxers"],
                capture_output=True, text=True, timeout=LIST_DEMUXERS_TIMEOUT_S, check=True,
            ).stdout  # fmt: skip
        except subprocess.TimeoutExpired as error:
            raise DecodeError(
                f"timed out: ffmpeg did not list its demuxers in {error.timeout:.0f} s"
            ) from None
        except (subprocess.CalledProcessError, OSError) as error:
            raise DecodeError(f"ffmpeg cannot list its demuxers ({error})") from None
        names: list[str] = []
        for row in listing.split("--", 1)[-1].splitlines():
            fields = row.split(None, 2)
            if len(fields) >= 2 and "D" in fields[0]:
                names += [name for name in fields[1].split(",") if name not in INPUT_OPENERS]
        _ALLOWED_FORMATS[ffmpeg] = ",".join(dict.fromkeys(names))
    return _ALLOWED_FORMATS[ffmpeg]


@contextlib.contextmanager
def neutral_name(path: str) -> Iterator[str]:
    """``path`` under a name of ours, ``input.<ext>`` in a fresh folder (a symbolic link), its
    extension kept for ffmpeg's probing: ffmpeg writes the name it opens into the log the verdict is
    read from, and a song's name is anybody's text (one holding a line break and ``Duration:`` would
    state a length)."""
    extension = os.path.splitext(path)[1].lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,8}", extension):
        extension = ""
    with tempfile.TemporaryDirectory(prefix="musicflow-decode-") as folder:
        link = os.path.join(folder, "input" + extension)
        os.symlink(os.path.abspath(path), link)
        yield link


def widen_pipe(fd: int, n_bytes: int = PIPE_BYTES) -> int:
    """Ask for a pipe buffer of ``n_bytes`` (Linux ``F_SETPIPE_SZ``); the size it has, or 0 where the
    platform cannot tell (the pipe works the same, only with less read-ahead)."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, n_bytes)
        return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
    except (ImportError, AttributeError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size
        return 0


def decode_audio(
    source: str | bytes, *, sample_rate: int = 44100, strict: bool = False, timeout: float | None = None
) -> DecodedAudio:
    """Decode a whole file to float32 mono at ``sample_rate`` (see :class:`AudioStream`).

    Parameters
    ----------
    source : str or bytes
        A local file path, or the file's bytes (piped to ffmpeg's stdin).
    sample_rate : int
        Output rate; ffmpeg resamples.
    strict : bool
        Fail on any decoder error (see :class:`AudioStream`).

    Returns
    -------
    DecodedAudio

    Raises
    ------
    DecodeError
        Empty, non-audio, mostly corrupt or truncated input.
    DecoderMissingError
        ffmpeg is not installed.
    """
    stream = AudioStream(source, sample_rate=sample_rate, strict=strict, timeout=timeout)
    try:
        pieces = list(stream)
    except DecoderFallback:
        stream = AudioStream(
            source, sample_rate=sample_rate, strict=strict, timeout=timeout, decoder="libsndfile"
        )
        pieces = list(stream)
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return DecodedAudio(
        samples=samples, sample_rate=sample_rate, channels=stream.channels, warnings=stream.warnings
    )


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        process.kill()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Kill ``process`` if it still runs, and reap it."""
    _kill(process)
    _wait(process)


def _wait(process: subprocess.Popen[bytes]) -> int:
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _kill(process)
        return process.wait()


class _Watchdog:
    """Kill a process after ``seconds`` unless the ``with`` block ends first; ``fired`` says if it did."""

    def __init__(self, seconds: float, process: subprocess.Popen[bytes]) -> None:
        self.fired = False
        self._process = process
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        _kill(self._process)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()


def _feed_stdin(process: subprocess.Popen[bytes], pieces: Iterable[bytes]) -> threading.Thread:
    """Write ``pieces`` to ``process``'s stdin from a daemon thread, then close it; the thread."""

    def feed() -> None:
        assert process.stdin is not None
        try:
            for piece in pieces:
                process.stdin.write(piece)
        except (BrokenPipeError, OSError):
            pass  # ffmpeg stopped reading (bad input): its exit code says why
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread
