"""tasks.model.tfload: TensorFlow's start-up lines are dropped, anything else it prints is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

FAKE_TENSORFLOW = """
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. You may see ...\\n")
os.write(2, b"E0000 something really went wrong\\n")
__version__ = "fake"
"""


def _load_tensorflow(
    tmp_path: Path, level: str, fake: str = FAKE_TENSORFLOW
) -> subprocess.CompletedProcess[str]:
    """``load_tensorflow()`` in a fresh interpreter that imports ``fake`` as tensorflow."""
    (tmp_path / "tensorflow.py").write_text(fake)
    code = "from tasks.model.tfload import load_tensorflow; print(load_tensorflow().__version__)"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "TF_CPP_MIN_LOG_LEVEL": level},
    )


def test_start_up_noise_is_dropped_and_other_lines_kept(tmp_path: Path) -> None:
    result = _load_tensorflow(tmp_path, "2")
    assert result.returncode == 0 and result.stdout.strip() == "fake"
    assert result.stderr.splitlines() == ["E0000 something really went wrong"]


@pytest.mark.parametrize("level", ["0", ""])
def test_everything_is_shown_at_log_level_0(tmp_path: Path, level: str) -> None:
    result = _load_tensorflow(tmp_path, level)
    assert result.returncode == 0
    assert len(result.stderr.splitlines()) == 3 and "InitializeLog" in result.stderr


def test_an_import_error_still_reaches_the_user(tmp_path: Path) -> None:
    fake = "import os\nos.write(2, b'loading libtensorflow failed\\n')\n"
    fake += "raise ImportError('no libtensorflow')\n"
    result = _load_tensorflow(tmp_path, "2", fake)
    assert result.returncode == 1
    assert "loading libtensorflow failed" in result.stderr and "no libtensorflow" in result.stderr
