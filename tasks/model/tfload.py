"""Import TensorFlow without the C++ start-up lines it prints whatever ``TF_CPP_MIN_LOG_LEVEL`` says.

``import tensorflow`` writes "All log messages before absl::InitializeLog() is called
are written to STDERR" and oneDNN / CPU-feature INFO lines straight to file
descriptor 2, twice. With ``TF_CPP_MIN_LOG_LEVEL`` at 1 or more (musicflow's default
is 2) :func:`load_tensorflow` captures that descriptor during the first import and
writes back every captured line but those; at 0 it leaves the output alone.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from types import ModuleType

_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* rebuild TensorFlow"
)


def load_tensorflow() -> ModuleType:
    """The ``tensorflow`` module, imported quietly the first time (then ``import keras`` is quiet)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # musicflow's default (as ``import musicflow`` sets)
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
        import tensorflow

        return tensorflow
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines()
                if line.strip() and not _START_UP_NOISE.search(line)
            ]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return tensorflow
