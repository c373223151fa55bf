"""The decode verdict: what ffmpeg says of a decode, and whether the song is kept.

:func:`read_log` reads ffmpeg's ``level+verbose`` report: errors, the container's stated
length and whether it is only an estimate, channels, bitrate, packets read and frames decoded.
A file can write into that log: its tags are printed there (and its name, but ffmpeg opens a
name of ours), and a tag holding a line break prints lines of its choosing, a ``Duration:``
line among them. A tag cannot remove ffmpeg's own lines, so a forged line shows as a
description that is not ffmpeg's (two ``Duration:`` lines, streams out of order, an estimate
warning after the description began: :attr:`LogFacts.trusted` is False); the decode then takes
those facts from ffprobe's JSON instead (:func:`read_probe`, where a tag stays one escaped
string). :func:`judge_decode` turns the facts and the decoded length into a verdict: the song is
kept (with warnings for concealed errors), or fails as truncated or corrupt
(:class:`~tasks.errors.DecodeError`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import IO

from tasks.errors import DecodeError

# A line ffmpeg starts itself at an error level ("[mp3float @ 0x...] [error] Header missing"),
# matched from the line's start: a tag's text is printed after its key and never starts a line
# unless the tag holds a line break (then it only adds to the warnings' text, it decides nothing).
_ERROR_LEVEL = re.compile(r"^(?:\[[^\]\n]+ @ 0x[0-9a-f]+\] )*\[(?:error|fatal|panic)\] ")
_CONTEXT = re.compile(r"\[(?:error|fatal|panic|warning|info|verbose)\] |\[[\w:/.#-]+ @ 0x[0-9a-f]+\] ")
# The input's description: from "Input #0" to "Stream mapping:", once each in ffmpeg's own log.
_INPUT = re.compile(r"^\[info\] Input #0, ")
_MAPPING = re.compile(r"^\[info\] Stream mapping:")
_DURATION = re.compile(r"^\[info\] +Duration: ")
_STATED = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_STREAM = re.compile(r"^\[info\] +Stream #0:(\d+)")
_INPUT_AUDIO = re.compile(r"^\[info\] +Stream #0:\d+\S*: Audio: (.*)")
# A demuxer ffmpeg probed but may not use (tasks.audio.decode.allowed_formats): a playlist or manifest.
_REFUSED_FORMAT = re.compile(r"^\[(\w+) @ 0x[0-9a-f]+\] \[error\] Format not on whitelist")
# ffmpeg's closing counts, among the last lines it writes: the last match is taken (a forged one
# can only come earlier, in the input's description).
_FINAL_STATS = re.compile(
    r"^\[\w+\] +Input stream #0:\d+ \(audio\): (\d+) packets read .*?; (\d+) frames decoded"
)
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "downmix": 2, "quad": 4, "hexagonal": 6, "octagonal": 8}
# The demuxer's warning when a container has no exact length (an mp3 without a Xing/Info header),
# written while ffmpeg probes the file, before its description (ffprobe writes it as well).
_ESTIMATED = re.compile(r"^\[\w+ @ 0x[0-9a-f]+\] \[warning\] Estimating duration from bitrate")
# A decode that stops this much short of the container's stated (exact) length is a truncated file.
TRUNCATION_TOLERANCE_S = 0.5
# With decode errors, the least share of the stream that must decode for the song to be kept:
# of an exact stated length (errors conceal a few frames, they do not lose a tenth of a song),
# and of ffmpeg's estimates (bitrate-based length, packets that decoded), which are rougher.
MIN_DECODED_OF_EXACT = 0.9
MIN_DECODED_OF_ESTIMATE = 0.5


def judge_decode(
    *,
    decoded_seconds: float,
    stated_seconds: float | None,
    stated_exact: bool,
    errors: list[str],
    n_errors: int,
    packets: int | None,
    frames: int | None,
    size_seconds: float | None = None,
    strict: bool = False,
) -> str | None:
    """The decode policy (as :class:`~tasks.audio.decode.AudioStream` states it): a kept song's
    warnings, or :class:`DecodeError`.

    ``stated_seconds`` is the container's length (``stated_exact`` False when
    ffmpeg only estimated it from the bitrate); ``packets`` and ``frames`` are
    ffmpeg's counts of packets read and frames decoded; ``size_seconds`` is
    the file's size at the stream's bitrate (an estimate too).
    """
    short = (
        stated_seconds is not None
        and decoded_seconds < stated_seconds - TRUNCATION_TOLERANCE_S - 0.02 * stated_seconds
    )
    detail = f" ({summarise(errors)})" if errors else ""
    truncated = (
        f"truncated: decoded {decoded_seconds:.2f} s of the {stated_seconds or 0:.2f} s "
        f"the file states{detail}"
    )
    if strict:
        if short:
            raise DecodeError(truncated)
        if errors:
            raise DecodeError(f"corrupt audio: {summarise(errors)}")
        return None
    if not errors:
        if short and stated_exact:
            raise DecodeError(truncated)
        return None
    shares = []
    if stated_seconds:
        shares.append(decoded_seconds / stated_seconds)
    if packets:
        shares.append((frames or 0) / packets)
    if size_seconds:
        shares.append(decoded_seconds / size_seconds)
    share = min(1.0, *shares) if shares else 1.0
    exact_share = decoded_seconds / stated_seconds if stated_exact and stated_seconds else None
    if exact_share is not None and exact_share < MIN_DECODED_OF_EXACT:
        if n_errors <= 2:  # a clean cut, or one broken frame where the file ends
            raise DecodeError(truncated)
        raise DecodeError(
            f"corrupt audio: mostly undecodable, {exact_share:.0%} of the stated length decoded{detail}"
        )
    if share < MIN_DECODED_OF_ESTIMATE:
        raise DecodeError(
            f"corrupt audio: mostly undecodable, about {share:.0%} of the stream decoded{detail}"
        )
    count = f"{n_errors} decode error{'s' if n_errors != 1 else ''}"
    return f"{count} concealed, {share:.0%} of the stream decoded: {summarise(errors)}"


@dataclass(frozen=True)
class ProbeFacts:
    """What ffmpeg (or ffprobe) states of a file's container and first audio stream.

    ``stated_seconds`` is the container's length (None when it states none), ``estimated`` True
    when it is only an estimate from the bitrate; ``kbps`` is the stream's bitrate.
    """

    stated_seconds: float | None = None
    estimated: bool = False
    channels: int = 0
    kbps: float | None = None


@dataclass(frozen=True)
class LogFacts:
    """What ffmpeg's log says of a decode. ``stated`` is only to be used when ``trusted``: the
    input's description is ffmpeg's own, with no line a tag could have forged."""

    errors: list[str]
    n_errors: int
    packets: int | None
    frames: int | None
    stated: ProbeFacts
    trusted: bool
    refused_format: str | None = None


def read_log(log: IO[bytes], *, keep_errors: int = 20) -> LogFacts:
    """What ffmpeg's ``level+verbose`` log says, read line by line (a garbage file logs a lot)."""
    errors: list[str] = []
    n_errors = 0
    packets = frames = None
    refused = None
    section = "probe"  # then "input" (its description), then "after"
    inputs = mappings = durations = estimates = 0
    estimated_late = False
    stated = None
    streams: list[int] = []
    audio: str | None = None
    for raw in log:
        line = raw.decode("utf-8", "replace").rstrip()
        if refused is None and (match := _REFUSED_FORMAT.match(line)):
            refused = match.group(1)
        if _ERROR_LEVEL.match(line):
            n_errors += 1
            if len(errors) < keep_errors:
                errors.append(_CONTEXT.sub("", line).strip())
            continue
        if _ESTIMATED.match(line):
            estimates += 1
            estimated_late |= section != "probe"
        elif _INPUT.match(line):
            inputs += 1
            section = "input" if section == "probe" else section
        elif _MAPPING.match(line):
            mappings += 1
            section = "after"
        elif section == "input" and _DURATION.match(line):
            durations += 1
            if durations == 1 and (match := _STATED.search(line)):
                hours, minutes, seconds = match.groups()
                stated = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        elif section == "input" and (match := _STREAM.match(line)):
            streams.append(int(match.group(1)))
            if audio is None and (described := _INPUT_AUDIO.match(line)):
                audio = described.group(1)
        elif match := _FINAL_STATS.match(line):
            packets, frames = int(match.group(1)), int(match.group(2))
    kbps = None
    if audio is not None and (rate := re.search(r", (\d+(?:\.\d+)?) kb/s", audio)):
        kbps = float(rate.group(1))
    trusted = (
        inputs == 1 and mappings == 1 and durations == 1 and estimates <= 1 and not estimated_late
        and streams == list(range(len(streams))) and audio is not None
    )  # fmt: skip
    facts = ProbeFacts(stated, estimates > 0, _layout_channels(audio) if audio else 0, kbps)
    return LogFacts(errors, n_errors, packets, frames, facts, trusted, refused)


def read_probe(report: bytes, warnings: IO[bytes]) -> ProbeFacts:
    """The facts of ffprobe's JSON ``report`` (``-show_entries format=duration:stream=channels,
    bit_rate`` of the first audio stream) and of its ``level+warning`` stderr, ``warnings``
    (whether the length is an estimate). An empty or unreadable report states nothing."""
    try:
        parsed = json.loads(report or b"{}")
    except ValueError:
        parsed = {}
    fields = parsed.get("format") if isinstance(parsed, dict) else None
    streams = parsed.get("streams") if isinstance(parsed, dict) else None
    stream = streams[0] if isinstance(streams, list) and streams and isinstance(streams[0], dict) else {}
    stated = _number(fields.get("duration")) if isinstance(fields, dict) else None
    bit_rate = _number(stream.get("bit_rate"))
    channels = _number(stream.get("channels"))
    estimated = any(_ESTIMATED.match(raw.decode("utf-8", "replace")) for raw in warnings)
    return ProbeFacts(
        stated_seconds=stated if stated and stated > 0 else None,
        estimated=estimated,
        channels=int(channels) if channels and channels > 0 else 0,
        kbps=bit_rate / 1000 if bit_rate and bit_rate > 0 else None,
    )


def _layout_channels(description: str) -> int:
    """Channels of ffmpeg's stream description, e.g. ``mp3, 44100 Hz, stereo, fltp, 128 kb/s``."""
    fields = [field.strip() for field in description.split(", ")]
    for index, field in enumerate(fields[:-1]):
        if field.endswith(" Hz"):
            layout = fields[index + 1]
            if match := re.match(r"(\d+) channels", layout):
                return int(match.group(1))
            name = layout.split("(")[0]
            if name in _LAYOUT_CHANNELS:
                return _LAYOUT_CHANNELS[name]
            if match := re.match(r"(\d+)\.(\d+)$", name):
                return int(match.group(1)) + int(match.group(2))
    return 0


def _number(value: object) -> float | None:
    """A JSON number or numeric string as a finite float; None otherwise ("N/A", missing)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def summarise(errors: list[str]) -> str:
    if not errors:
        return ""
    distinct = list(dict.fromkeys(errors))
    more = f" (+{len(distinct) - 1} more)" if len(distinct) > 1 else ""
    return distinct[0][:300] + more
