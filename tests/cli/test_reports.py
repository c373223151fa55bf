"""How ``musicflow generate`` prints a run: the clip lines keep what they showed and add the longest
copied span, with the song it copies when it names one."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from musicflow.cli.reports import print_generated

CLIP_METRICS = {"seconds": 10.0, "rms_dbfs": -18.5, "spectral_centroid_hz": 1234.0, "collapsed": None}
REPORT: dict[str, Any] = {
    "model_id": "m-1",
    "location": "/store/generated/run-1",
    "memorisation": {
        "longest_copy_seconds": 1.49,
        "clip": "clip-02",
        "searched": {
            "songs": 3,
            "training_songs": 8,
            "seconds": 60.2,
            "training_seconds": 150.0,
            "lower_bound": True,
        },
    },
    "clips": [
        {
            "name": "clip-01",
            "files": ["clip-01.wav"],
            "quality": {"quality": 0.7},
            "metrics": {**CLIP_METRICS, "longest_copy_seconds": 0.19, "longest_copy": None},
        },
        {
            "name": "clip-02",
            "files": ["clip-02.wav"],
            "quality": {"quality": 0.5},
            "metrics": {
                **CLIP_METRICS,
                "longest_copy_seconds": 1.49,
                "longest_copy": {
                    "song_id": "abcdef0123456789",
                    "song_start_seconds": 4.2,
                    "clip_start_seconds": 3.0,
                },
            },
        },
    ],
}


def test_clip_lines_show_the_longest_copy_and_the_run_what_was_searched(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_generated(REPORT)
    lines = capsys.readouterr().out.splitlines()
    assert (
        "longest copied span 1.49 s, searched 3 of 8 training songs (60 of 150 s, a lower bound)" in lines[1]
    )
    first, second = lines[2], lines[3]
    assert first.startswith(
        "  clip-01: 10.0 s, -18.5 dBFS, quality 0.7, centroid 1234 Hz, longest copy 0.19 s, ok"
    )
    assert "longest copy 1.49 s of song abcdef012345 at 4.2 s, ok  (clip-02.wav)" in second


def test_a_run_from_before_the_check_prints_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    old = copy.deepcopy(REPORT)
    del old["memorisation"]
    for clip in old["clips"]:
        del clip["metrics"]["longest_copy_seconds"], clip["metrics"]["longest_copy"]
    print_generated(old)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[1] == "  clip-01: 10.0 s, -18.5 dBFS, quality 0.7, centroid 1234 Hz, ok  (clip-01.wav)"
