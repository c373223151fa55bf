"""The ffmpeg binary: the one pydub is configured with.

pydub (``pydub.AudioSegment.converter``) is the single place the ffmpeg path is
configured; decoding (:mod:`tasks.audio.decode`) calls that binary directly,
encoding (:mod:`tasks.audio.encode`) goes through pydub.
"""

from __future__ import annotations

import os
import shutil
import warnings

with warnings.catch_warnings():
    # pydub warns at import when ffmpeg is missing; ffmpeg_binary() raises a clearer error.
    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
    from pydub import AudioSegment as AudioSegment

from tasks.errors import DecoderMissingError

INSTALL_HINT = (
    "install it with `apt-get install ffmpeg` (Debian/Ubuntu), `brew install ffmpeg` (macOS) "
    "or `conda install -c conda-forge ffmpeg`, or point pydub.AudioSegment.converter at it"
)


def ffmpeg_binary() -> str:
    """Path of the ffmpeg pydub uses; :class:`DecoderMissingError` when there is none."""
    found = shutil.which(AudioSegment.converter)
    if found is None:
        raise DecoderMissingError(f"ffmpeg not found (looked for {AudioSegment.converter!r}): {INSTALL_HINT}")
    return found


def ffprobe_binary() -> str:
    """Path of the ffprobe beside that ffmpeg (every ffmpeg build ships one), else the one on the
    PATH; :class:`DecoderMissingError` when there is none."""
    ffmpeg = ffmpeg_binary()
    folder, name = os.path.split(ffmpeg)
    beside = os.path.join(folder, name.replace("ffmpeg", "ffprobe")) if "ffmpeg" in name else ""
    found = beside if beside and os.access(beside, os.X_OK) else shutil.which("ffprobe")
    if found is None:
        raise DecoderMissingError(f"ffprobe not found (beside {ffmpeg!r} or on the PATH): {INSTALL_HINT}")
    return found
