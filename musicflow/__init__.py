"""musicflow: learn to make music from a collection of songs.

The pipeline is three Prefect flows (``flows/``) over plain functions (``tasks/``);
this small core package holds what every layer shares: configuration, errors,
the Prefect server helper and the command line.
"""

import os

# TensorFlow's C++ INFO/WARNING lines (oneDNN, absl) would bury our output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tasks.errors import (
    ConfigError,
    DecodeError,
    DecoderMissingError,
    MusicflowError,
    StoreError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DecodeError",
    "DecoderMissingError",
    "MusicflowError",
    "StoreError",
    "__version__",
]
