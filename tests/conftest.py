"""Shared fixtures: a Prefect test server, an S3 server (moto) on 127.0.0.1, demo songs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tasks.config import TrainConfig

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One Prefect test server for the session; its URL is exported so that
    Dask worker processes and CLI subprocesses use it too."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    previous = os.environ.get("PREFECT_API_URL")
    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        yield url
    if previous is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = previous


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (random port); AWS_* variables point every
    client (s3fs, zarr, pyarrow, Dask workers, subprocesses) at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {key: os.environ.get(key) for key in _S3_ENV}
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "FSSPEC_S3_ENDPOINT_URL": endpoint,
        }
    )
    import fsspec.config

    # fsspec read its FSSPEC_* variables when it was imported, before this fixture ran.
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint
    try:
        yield endpoint
    finally:
        fsspec.config.conf.get("s3", {}).pop("endpoint_url", None)
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "FSSPEC_S3_ENDPOINT_URL",
)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket; returns ``s3://<bucket>``."""
    import s3fs

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    fs.mkdir(bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="session")
def demo_songs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six short synthetic mp3 songs (3-6 s), made once per session; copy them before changing."""
    from tasks.audio.synth import write_demo_songs

    return write_demo_songs(tmp_path_factory.mktemp("songs"), n_songs=6, seconds=(3.0, 6.0), seed=100)


@pytest.fixture(scope="session")
def long_mp3() -> bytes:
    """~20 s of a chord as mp3, for the truncation and corruption tests."""
    import numpy as np

    from tasks.audio.encode import encode_audio

    t = np.arange(20 * 44100) / 44100
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 4
    return encode_audio(chord.astype(np.float32), sample_rate=44100, format="mp3")


TINY_BLOCK = 1024  # 23 ms blocks, 1026 rfft features: a model that trains in seconds
TINY_TRAIN = {
    "hidden": 32,
    "seq_len": 8,
    "hop": 4,
    "batch_size": 8,
    "learning_rate": 3e-3,
    "val_fraction": 0.25,
}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A local store holding one dataset of 4 periodic 3 s songs (block size 1024);
    returns ``(store_url, dataset_id)``. Read-only: copy the store before changing it."""
    from helpers import ingest_direct, write_periodic_songs

    from tasks.config import FeatureConfig, IngestConfig

    root = tmp_path_factory.mktemp("tiny")
    songs = root / "songs"
    write_periodic_songs(songs, n_songs=4, seconds=3.0, block_size=TINY_BLOCK)
    store = str(root / "store")
    config = IngestConfig(features=FeatureConfig(block_size=TINY_BLOCK))
    return store, ingest_direct(songs, store, config)


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A copy of ``tiny_dataset``'s store with a small model trained for 3 epochs;
    returns ``(store_url, model_id)``. Read-only: copy the store before changing it."""
    from tasks.config import TrainConfig

    config = TrainConfig.from_preset("small", epochs=3, **TINY_TRAIN)
    return _trained_copy(tiny_dataset, tmp_path_factory.mktemp("tiny-model"), config)


# The spectral path, small: 512-sample frames every 128 (5.8 ms) in 40 mel bands at 22.05 kHz, a
# model of 4-frame steps with a 2-component mixture density, trained in seconds.
STFT_FEATURES = {"n_fft": 512, "hop_length": 128, "n_mels": 40}
STFT_TRAIN = {
    "hidden": 64,
    "layers": 1,
    "seq_len": 24,
    "hop": 6,
    "batch_size": 8,
    "frames_per_step": 4,
    "mixtures": 2,
    "learning_rate": 3e-3,
    "val_fraction": 0.25,
    "input_noise": 0.3,
    "dropout": 0.1,
}


# The units model on the same features: the spectral model's LSTM over 4-frame steps, each step one of
# 32 k-means units (the dataset's 3 training songs of 4 s have 516 steps).
UNITS_TRAIN = {**{key: value for key, value in STFT_TRAIN.items() if key != "mixtures"}, "units": 32}


@pytest.fixture(scope="session")
def stft_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A local store with one stft dataset of 4 periodic 4 s songs; ``(store_url, dataset_id)``.
    Read-only: copy the store before changing it."""
    from helpers import ingest_direct, write_periodic_music

    from tasks.config import FeatureConfig, IngestConfig

    root = tmp_path_factory.mktemp("stft")
    songs = root / "songs"
    write_periodic_music(songs, n_songs=4, seconds=4.0)
    store = str(root / "store")
    config = IngestConfig(features=FeatureConfig.for_transform("stft", **STFT_FEATURES))
    return store, ingest_direct(songs, store, config)


@pytest.fixture(scope="session")
def stft_model(stft_dataset: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A copy of ``stft_dataset``'s store with a spectral model trained for 12 epochs;
    ``(store_url, model_id)``. Read-only: copy the store before changing it."""
    from tasks.config import TrainConfig

    config = TrainConfig.from_preset("spectral", epochs=12, **STFT_TRAIN)
    return _trained_copy(stft_dataset, tmp_path_factory.mktemp("stft-model"), config)


def _trained_copy(dataset: tuple[str, str], folder: Path, config: TrainConfig) -> tuple[str, str]:
    """A session dataset's store (``(store_url, dataset_id)``) copied into ``folder`` and a model
    trained there by ``config``; ``(store_url, model_id)``."""
    import shutil

    from tasks.model.train import train_model

    store = str(folder / "store")
    shutil.copytree(dataset[0], store)
    return store, train_model(store, config).model_id


@pytest.fixture
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS_* credential/endpoint variable, no ~/.aws, no fsspec config, nothing registered: a
    test's S3 credentials come only from the options or blocks it gives."""
    import fsspec.config

    import tasks.store.store

    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("FSSPEC_"):
            monkeypatch.delenv(name)
    # not a credential: keeps botocore from asking the EC2 metadata address when a wiring is broken
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delitem(fsspec.config.conf, "s3", raising=False)
    monkeypatch.setattr(tasks.store.store, "_STORAGE_OPTIONS", {})


@pytest.fixture(scope="session")
def units_model(stft_dataset: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A copy of ``stft_dataset``'s store with a units model trained for 8 epochs (as many seconds);
    ``(store_url, model_id)``. Read-only: copy the store before changing it."""
    from tasks.config import TrainConfig

    config = TrainConfig.from_preset("units", epochs=8, **UNITS_TRAIN)
    return _trained_copy(stft_dataset, tmp_path_factory.mktemp("units-model"), config)
