"""Typed configuration, one object per stage, serialised into every output.

Every value is checked when the object is built, so a bad value fails early
with a :class:`~musicflow.errors.ConfigError` that names it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from musicflow.errors import ConfigError

Transform = Literal["rfft", "fft"]
ShardFormat = Literal["zarr", "parquet"]

TRANSFORMS: tuple[str, ...] = ("rfft", "fft")
SHARD_FORMATS: tuple[str, ...] = ("zarr", "parquet")
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".mp3",
    ".ogg",
    ".oga",
    ".opus",
    ".wav",
    ".flac",
    ".m4a",
    ".aac",
    ".aif",
    ".aiff",
    ".wma",
)

# Bump when the meaning of stored features changes, so old datasets get a new id.
FEATURE_VERSION = 1


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"invalid {name} {value!r}: expected one of {', '.join(choices)}")


def _positive(name: str, value: float, *, maximum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"invalid {name} {value!r}: must be a positive number")
    if maximum is not None and value > maximum:
        raise ConfigError(f"invalid {name} {value!r}: must be at most {maximum}")


@dataclass(frozen=True)
class FeatureConfig:
    """How songs become feature blocks; its hash is the dataset id.

    Parameters
    ----------
    sample_rate : int
        Rate every song is resampled to, in Hz.
    block_size : int
        Samples per block (11025 = 0.25 s at 44.1 kHz, as GRUV).
    transform : {"rfft", "fft"}
        ``rfft``: real||imag of the real FFT, ``2 * (block_size // 2 + 1)`` values.
        ``fft``: real||imag of the full FFT, ``2 * block_size`` values (GRUV layout).
    """

    sample_rate: int = 44100
    block_size: int = 11025
    transform: str = "rfft"

    def __post_init__(self) -> None:
        _positive("sample_rate", self.sample_rate, maximum=384_000)
        _positive("block_size", self.block_size, maximum=1 << 20)
        if self.block_size < 2:
            raise ConfigError(f"invalid block_size {self.block_size!r}: must be at least 2")
        check_choice("transform", self.transform, TRANSFORMS)

    @property
    def n_features(self) -> int:
        """Values per block after the transform."""
        if self.transform == "rfft":
            return 2 * (self.block_size // 2 + 1)
        return 2 * self.block_size

    @property
    def block_seconds(self) -> float:
        return self.block_size / self.sample_rate

    @property
    def dataset_id(self) -> str:
        """Readable and unique: ``rfft-b11025-sr44100-<hash>``."""
        payload = json.dumps({**asdict(self), "version": FEATURE_VERSION}, sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
        return f"{self.transform}-b{self.block_size}-sr{self.sample_rate}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "version": FEATURE_VERSION, "n_features": self.n_features}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureConfig:
        return cls(
            sample_rate=int(values["sample_rate"]),
            block_size=int(values["block_size"]),
            transform=str(values["transform"]),
        )


@dataclass(frozen=True)
class IngestConfig:
    """Everything an ingest run needs besides the source and the store.

    ``batch_mb`` bounds the compressed audio one Dask task decodes (songs are
    decoded in chunks, so a worker's memory does not depend on it);
    ``min_peak_db`` is the level under which a song counts as silent and is
    recorded as failed; ``strict`` fails any song the decoder reported errors
    for (otherwise a song whose errors were concealed is kept, with warnings).
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    shard_format: str = "zarr"
    batch_mb: float = 32.0
    min_peak_db: float = -60.0
    retry_failed: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        check_choice("format", self.shard_format, SHARD_FORMATS)
        _positive("batch_mb", self.batch_mb, maximum=4096)
        if not -200.0 <= self.min_peak_db <= 0.0:
            raise ConfigError(f"invalid min_peak_db {self.min_peak_db!r}: must be in [-200, 0]")

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.features.to_dict(),
            "shard_format": self.shard_format,
            "batch_mb": self.batch_mb,
            "min_peak_db": self.min_peak_db,
            "retry_failed": self.retry_failed,
            "strict": self.strict,
        }


LOSSES: tuple[str, ...] = ("mse", "mae")
PRESETS: dict[str, dict[str, Any]] = {
    # The seed's model (GRUV): for the 22050-feature `fft` dataset, 1024 units, batch 5.
    "gruv": {"hidden": 1024, "layers": 1, "batch_size": 5, "loss": "mse", "learning_rate": 1e-3},
    # Small enough that an epoch over the demo songs takes seconds on 2 CPU cores.
    "small": {"hidden": 256, "layers": 1, "batch_size": 8, "loss": "mse", "learning_rate": 1e-3},
}


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained; with the dataset id, its hash names the model.

    Windows: inputs are blocks ``t .. t+seq_len-1`` of a song, targets blocks
    ``t+1 .. t+seq_len``; ``hop`` blocks between window starts (``seq_len`` =
    no overlap, as the seed). Architecture: Dense(hidden) -> LSTM(hidden) x
    layers -> Dense(n_features), each applied at every time step.
    """

    preset: str = "small"
    hidden: int = 256
    layers: int = 1
    seq_len: int = 40
    hop: int = 40
    batch_size: int = 8
    loss: str = "mse"
    learning_rate: float = 1e-3
    clipnorm: float = 1.0
    epochs: int = 10
    val_fraction: float = 0.1
    seed: int = 0
    normalize: bool = True
    shuffle_buffer: int = 256
    patience: int | None = None

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, tuple(PRESETS))
        check_choice("loss", self.loss, LOSSES)
        for name in ("hidden", "layers", "seq_len", "hop", "batch_size", "epochs", "shuffle_buffer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"invalid {name} {value!r}: must be a positive integer")
        _positive("learning_rate", self.learning_rate, maximum=10.0)
        _positive("clipnorm", self.clipnorm)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"invalid val_fraction {self.val_fraction!r}: must be in (0, 1)")
        if self.patience is not None and (isinstance(self.patience, bool) or self.patience < 1):
            raise ConfigError(f"invalid patience {self.patience!r}: must be a positive integer")

    @classmethod
    def from_preset(cls, preset: str = "small", **overrides: Any) -> TrainConfig:
        """The preset's values, then every override that is not None."""
        check_choice("preset", preset, tuple(PRESETS))
        values = {**PRESETS[preset], **{key: value for key, value in overrides.items() if value is not None}}
        if "hop" not in values or values["hop"] is None:
            values["hop"] = values.get("seq_len", cls.seq_len)
        return cls(preset=preset, **values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls(**values)

    def model_hash(self, dataset_id: str, songs_hash: str = "") -> str:
        """Hash of what determines the trained weights: the dataset, its songs (they fix the
        train/validation split) and the config but for the epoch count and patience."""
        identity = {key: value for key, value in asdict(self).items() if key not in ("epochs", "patience")}
        payload = json.dumps({"dataset_id": dataset_id, "songs": songs_hash, **identity}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]
