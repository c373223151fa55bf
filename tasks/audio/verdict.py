"""The decode verdict: what ffmpeg's log says of a decode, and whether the song is kept.

:func:`read_log` reads ffmpeg's ``level+verbose`` report (errors, the container's
stated length, channels, bitrate, packets read and frames decoded);
:func:`judge_decode` turns it and the decoded length into a verdict: the song is
kept (with warnings for concealed errors), or fails as truncated or corrupt
(:class:`~tasks.errors.DecodeError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import IO

from tasks.errors import DecodeError

_ERROR_LEVEL = re.compile(r"\[(?:error|fatal|panic)\] ")
_CONTEXT = re.compile(r"\[(?:error|fatal|panic|warning|info|verbose)\] |\[[\w:/.#-]+ @ 0x[0-9a-f]+\] ")
# Lines are matched from their start, after the level: a tag's text (a title holding "Duration: 9:00:00")
# is printed after its key on a line of its own, and never starts one.
_DURATION = re.compile(r"^\[info\] +Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_INPUT_AUDIO = re.compile(r"^\[info\] +Stream #0:\d+\S*: Audio: (.*)")
# A demuxer ffmpeg probed but may not use (tasks.audio.decode.allowed_formats): a playlist or manifest.
_REFUSED_FORMAT = re.compile(r"^\[(\w+) @ 0x[0-9a-f]+\] \[error\] Format not on whitelist")
_FINAL_STATS = re.compile(
    r"^\[\w+\] +Input stream #0:\d+ \(audio\): (\d+) packets read .*?; (\d+) frames decoded"
)
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "downmix": 2, "quad": 4, "hexagonal": 6, "octagonal": 8}
# ffmpeg warns so when a container has no exact length (an mp3 without a Xing/Info header).
_ESTIMATED = "Estimating duration from bitrate"
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
class LogFacts:
    errors: list[str]
    n_errors: int
    estimated: bool
    stated_seconds: float | None
    channels: int
    packets: int | None
    frames: int | None
    kbps: float | None
    refused_format: str | None = None


def read_log(log: IO[bytes], *, keep_errors: int = 20) -> LogFacts:
    """What ffmpeg's ``level+verbose`` log says, read line by line (a garbage file logs a lot)."""
    errors: list[str] = []
    n_errors = 0
    estimated = False
    stated = None
    channels = 0
    kbps = None
    packets = frames = None
    refused = None
    in_input = True
    for raw in log:
        line = raw.decode("utf-8", "replace").rstrip()
        if refused is None and (match := _REFUSED_FORMAT.match(line)):
            refused = match.group(1)
        if _ERROR_LEVEL.search(line):
            n_errors += 1
            if len(errors) < keep_errors:
                errors.append(_CONTEXT.sub("", line).strip())
            continue
        if line.startswith("[info] Output #0") or "Output #0," in line:
            in_input = False
        if _ESTIMATED in line:
            estimated = True
        if in_input and stated is None and (match := _DURATION.match(line)):
            hours, minutes, seconds = match.groups()
            stated = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        if in_input and not channels and (match := _INPUT_AUDIO.match(line)):
            channels = _layout_channels(match.group(1))
            if rate := re.search(r", (\d+(?:\.\d+)?) kb/s", match.group(1)):
                kbps = float(rate.group(1))
        if packets is None and (match := _FINAL_STATS.match(line)):
            packets, frames = int(match.group(1)), int(match.group(2))
    return LogFacts(errors, n_errors, estimated, stated, channels, packets, frames, kbps, refused)


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


def summarise(errors: list[str]) -> str:
    if not errors:
        return ""
    distinct = list(dict.fromkeys(errors))
    more = f" (+{len(distinct) - 1} more)" if len(distinct) > 1 else ""
    return distinct[0][:300] + more
