"""musicflow: learn to make music from a collection of songs.

The pipeline is three Prefect flows (``flows/``) over plain functions (``tasks/``);
this small core package holds what every layer shares: configuration, errors,
the Prefect server helper and the command line.
"""

import os
from typing import TYPE_CHECKING, Any

# TensorFlow's C++ INFO/WARNING lines (oneDNN, absl) would bury our output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tasks.errors import (
    ConfigError,
    DecodeError,
    DecoderMissingError,
    MusicflowError,
    StoreError,
)

if TYPE_CHECKING:
    from musicflow.dataset import Dataset

__version__ = "0.1.0"


def open_dataset(
    store: str, dataset_id: str | None = None, storage_options: dict[str, Any] | None = None
) -> "Dataset":
    """A dataset of a store: its songs, their frames (numpy), training windows, a ``tf.data.Dataset``
    (:class:`musicflow.dataset.Dataset`; docs/data-format.md, "Reading a dataset")."""
    # lazy: start-up (``import musicflow`` stays light: the CLI's --help imports it)
    from musicflow.dataset import open_dataset as open_one

    return open_one(store, dataset_id, storage_options)


__all__ = [
    "ConfigError",
    "DecodeError",
    "DecoderMissingError",
    "MusicflowError",
    "StoreError",
    "__version__",
    "open_dataset",
]
