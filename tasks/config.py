"""Typed configuration, one object per stage, serialised into every output.

Every value is checked when the object is built, so a bad value fails early
with a :class:`~tasks.errors.ConfigError` that names it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tasks.errors import ConfigError

Transform = Literal["stft", "rfft", "fft"]
ShardFormat = Literal["zarr", "parquet"]

# "stft" is the default (log-mel frames, phase reconstructed at generation); "rfft"/"fft" are the
# seed's (GRUV) blocks.
TRANSFORMS: tuple[str, ...] = ("stft", "rfft", "fft")
DEFAULT_TRANSFORM = "stft"
# Rates the transforms are decoded at unless told otherwise: the spectral model works at 22.05 kHz
# (music up to 11 kHz, half the frames and compute), the seed at 44.1 kHz.
DEFAULT_SAMPLE_RATES: dict[str, int] = {"stft": 22050, "rfft": 44100, "fft": 44100}
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
    """How songs become rows of features; its hash is the dataset id.

    Parameters
    ----------
    sample_rate : int
        Rate every song is resampled to, in Hz.
    block_size : int
        ``rfft``/``fft`` only: samples per block (11025 = 0.25 s at 44.1 kHz, as GRUV).
    transform : {"stft", "rfft", "fft"}
        ``stft``: log-magnitude of Hann-windowed overlapping frames (``n_fft`` samples every
        ``hop_length``), compressed to ``n_mels`` mel bands (0 = every one of the
        ``n_fft // 2 + 1`` linear bins). ``rfft``: real||imag of the real FFT of each block,
        ``2 * (block_size // 2 + 1)`` values. ``fft``: real||imag of the full FFT,
        ``2 * block_size`` values (GRUV layout).
    n_fft, hop_length, n_mels : int
        ``stft`` only (ignored, and left out of the dataset id, for the block transforms).
    """

    sample_rate: int = 44100
    block_size: int = 11025
    transform: str = "rfft"
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128

    def __post_init__(self) -> None:
        _positive("sample_rate", self.sample_rate, maximum=384_000)
        _positive("block_size", self.block_size, maximum=1 << 20)
        if self.block_size < 2:
            raise ConfigError(f"invalid block_size {self.block_size!r}: must be at least 2")
        check_choice("transform", self.transform, TRANSFORMS)
        for name in ("n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"invalid {name} {value!r}: must be a non-negative integer")
        if self.transform != "stft":
            return
        if not 16 <= self.n_fft <= 1 << 16:
            raise ConfigError(f"invalid n_fft {self.n_fft!r}: must be in [16, 65536]")
        if self.n_fft % 2:
            raise ConfigError(f"invalid n_fft {self.n_fft!r}: must be even")
        if not 1 <= self.hop_length <= self.n_fft // 2:
            # Hann windows overlap-add to a constant only when they overlap at least by half.
            raise ConfigError(
                f"invalid hop_length {self.hop_length!r}: must be in [1, n_fft / 2 = {self.n_fft // 2}]"
            )
        if self.n_mels > self.n_fft // 2 + 1:
            raise ConfigError(
                f"invalid n_mels {self.n_mels!r}: more mel bands than the {self.n_fft // 2 + 1} "
                f"frequency bins of n_fft {self.n_fft}"
            )

    @classmethod
    def for_transform(cls, transform: str = DEFAULT_TRANSFORM, **values: Any) -> FeatureConfig:
        """The config of ``transform`` with its default sample rate; ``values`` that are None are
        left at their defaults."""
        check_choice("transform", transform, TRANSFORMS)
        given = {key: value for key, value in values.items() if value is not None}
        given.setdefault("sample_rate", DEFAULT_SAMPLE_RATES[transform])
        return cls(transform=transform, **given)

    @property
    def n_features(self) -> int:
        """Values per row after the transform."""
        if self.transform == "stft":
            return self.n_mels or self.n_fft // 2 + 1
        if self.transform == "rfft":
            return 2 * (self.block_size // 2 + 1)
        return 2 * self.block_size

    @property
    def frame_step(self) -> int:
        """Samples of audio per row: the hop for ``stft``, the block for ``rfft``/``fft``."""
        return self.hop_length if self.transform == "stft" else self.block_size

    @property
    def block_seconds(self) -> float:
        """Seconds of audio per row (block or frame)."""
        return self.frame_step / self.sample_rate

    def _identity(self) -> dict[str, Any]:
        # The block transforms keep the fields (and so the ids) they had before stft existed.
        identity: dict[str, Any] = {
            "sample_rate": self.sample_rate,
            "block_size": self.block_size,
            "transform": self.transform,
        }
        if self.transform == "stft":
            identity = {
                "sample_rate": self.sample_rate,
                "transform": self.transform,
                "n_fft": self.n_fft,
                "hop_length": self.hop_length,
                "n_mels": self.n_mels,
            }
        return identity

    def __eq__(self, other: object) -> bool:
        # Fields a transform ignores (block_size for stft; n_fft, hop_length, n_mels for the
        # block transforms) do not make two configs, or their datasets, differ.
        if not isinstance(other, FeatureConfig):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._identity().items())))

    @property
    def dataset_id(self) -> str:
        """Readable and unique: ``rfft-b11025-sr44100-<hash>``, ``stft-n1024-h256-m80-sr22050-<hash>``."""
        payload = json.dumps({**self._identity(), "version": FEATURE_VERSION}, sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
        if self.transform == "stft":
            shape = f"n{self.n_fft}-h{self.hop_length}-m{self.n_mels}"
            return f"stft-{shape}-sr{self.sample_rate}-{digest}"
        return f"{self.transform}-b{self.block_size}-sr{self.sample_rate}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        return {**self._identity(), "version": FEATURE_VERSION, "n_features": self.n_features}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureConfig:
        optional = {
            name: int(values[name])
            for name in ("block_size", "n_fft", "hop_length", "n_mels")
            if name in values
        }
        return cls(sample_rate=int(values["sample_rate"]), transform=str(values["transform"]), **optional)


# The longest song ingest keeps by default (a long DJ mix or concert fits), and the most it may be set to.
DEFAULT_MAX_SONG_SECONDS = 4 * 3600.0
MAX_SONG_SECONDS_LIMIT = 7 * 24 * 3600.0


@dataclass(frozen=True)
class IngestConfig:
    """Everything an ingest run needs besides the source and the store.

    ``batch_mb`` bounds the compressed audio one Dask task decodes (songs are
    decoded in chunks, so a worker's memory does not depend on it);
    ``min_peak_db`` is the level under which a song counts as silent and is
    recorded as failed; ``strict`` fails any song the decoder reported errors
    for (otherwise a song whose errors were concealed is kept, with warnings);
    ``max_seconds`` is the longest song kept: decoding stops there and the song is
    a failed row (a few MB of constant FLAC can decode to days of rows);
    ``batch_timeout`` is how long the flow waits for one batch before it gives up on
    it as stuck (None: ``flows.prefect_tasks.batch_wait_seconds`` of its files).
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    shard_format: str = "zarr"
    batch_mb: float = 32.0
    min_peak_db: float = -60.0
    retry_failed: bool = False
    strict: bool = False
    max_seconds: float = DEFAULT_MAX_SONG_SECONDS
    batch_timeout: float | None = None

    def __post_init__(self) -> None:
        check_choice("format", self.shard_format, SHARD_FORMATS)
        _positive("batch_mb", self.batch_mb, maximum=4096)
        _positive("max_seconds", self.max_seconds, maximum=MAX_SONG_SECONDS_LIMIT)
        if self.batch_timeout is not None:
            _positive("batch_timeout", self.batch_timeout, maximum=7 * 24 * 3600)
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
            "max_seconds": self.max_seconds,
            "batch_timeout": self.batch_timeout,
        }


# "units": a softmax over discrete units, the k-means centroids of the training steps (see TrainConfig).
LOSSES: tuple[str, ...] = ("mse", "mae", "gaussian", "units")
PRESETS: dict[str, dict[str, Any]] = {
    # The default, for stft datasets: a 4-component mixture density over the next 4 log-mel frames
    # (46 ms), 64 steps (3 s) of context, noise and dropout on the inputs so that it continues from
    # its own samples. Chosen by the quality score on the demo songs and drascula-music
    # (docs/benchmarks.md, "Quality: the default against the GRUV path").
    "spectral": {
        "hidden": 256,
        "layers": 2,
        "batch_size": 16,
        "loss": "gaussian",
        "learning_rate": 1e-3,
        "seq_len": 64,
        "hop": 16,
        "frames_per_step": 4,
        "mixtures": 4,
        "input_noise": 0.3,
        "dropout": 0.1,
    },
    # Discrete units: the spectral model's LSTM over the same 4-frame steps, each step one of 512
    # k-means centroids of the training steps, predicted by a softmax and sampled; holding a note is
    # predicting the same unit again. Not the default: on synthetic held notes its peaks last as long
    # as the songs' (the spectral model's 1-2 frames), but on drascula-music after 7 epochs it either
    # sticks on a unit (temperature 0.7: 3/16 clips static, a 2.7 s copy) or changes unit every step
    # (1.0; 0.85: partials of 0.15 s), with tonality under the spectral model's
    # (docs/benchmarks.md, "Models that hold notes").
    "units": {
        "hidden": 256,
        "layers": 2,
        "batch_size": 16,
        "loss": "units",
        "learning_rate": 1e-3,
        "seq_len": 64,
        "hop": 16,
        "frames_per_step": 4,
        "units": 512,
        "input_noise": 0.3,
        "dropout": 0.1,
    },
    # The seed's model (GRUV): for the 22050-feature `fft` dataset, 1024 units, batch 5.
    "gruv": {"hidden": 1024, "layers": 1, "batch_size": 5, "loss": "mse", "learning_rate": 1e-3},
    # Small enough that an epoch over the demo songs takes seconds on 2 CPU cores.
    "small": {"hidden": 256, "layers": 1, "batch_size": 8, "loss": "mse", "learning_rate": 1e-3},
}


# The preset a dataset trains with when none is named: the spectral model for stft features,
# the seed's small model for its FFT blocks.
DEFAULT_PRESETS: dict[str, str] = {"stft": "spectral", "rfft": "small", "fft": "small"}
# Fields added with the spectral model, and their values for the seed's models: left out of the
# model hash at these values, so models trained before them keep their ids (and resume).
_LATER_FIELDS: dict[str, Any] = {
    "frames_per_step": 1,
    "mixtures": 1,
    "input_noise": 0.0,
    "dropout": 0.0,
    "units": 0,
}
# The most discrete units a model may have (its softmax and codebook grow with them).
MAX_UNITS = 8192


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained; with the dataset id, its hash names the model.

    Windows: inputs are blocks ``t .. t+seq_len-1`` of a song, targets blocks
    ``t+1 .. t+seq_len``; ``hop`` blocks between window starts (``seq_len`` =
    no overlap, as the seed). Architecture: Dense(hidden) -> LSTM(hidden) x
    layers -> Dense(n_features), each applied at every time step.

    The spectral model (``tasks/model/network.py``): a step is ``frames_per_step`` rows;
    ``loss="gaussian"`` predicts a mixture of ``mixtures`` diagonal Gaussians over
    the next step and generation samples it; ``input_noise`` (std, normalised
    units) and ``dropout`` perturb the inputs in training only. ``loss="units"``: each step
    is one of ``units`` discrete units, the k-means centroids of the training steps (fitted
    when training starts, stored in the model), the model's inputs are the units of the
    previous steps and it predicts the next one by a softmax that generation samples.
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
    frames_per_step: int = 1
    mixtures: int = 1
    input_noise: float = 0.0
    dropout: float = 0.0
    units: int = 0

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, tuple(PRESETS))
        check_choice("loss", self.loss, LOSSES)
        self._check_units()
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"invalid dropout {self.dropout!r}: must be in [0, 1)")
        if not 0.0 <= self.input_noise <= 10.0:
            raise ConfigError(f"invalid input_noise {self.input_noise!r}: must be in [0, 10]")
        if self.mixtures > 1 and self.loss != "gaussian":
            raise ConfigError(
                f"invalid mixtures {self.mixtures!r} with loss {self.loss!r}: needs loss gaussian"
            )
        for name in (
            "hidden",
            "layers",
            "seq_len",
            "hop",
            "batch_size",
            "epochs",
            "shuffle_buffer",
            "frames_per_step",
            "mixtures",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"invalid {name} {value!r}: must be a positive integer")
        _positive("learning_rate", self.learning_rate, maximum=10.0)
        _positive("clipnorm", self.clipnorm)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"invalid val_fraction {self.val_fraction!r}: must be in (0, 1)")
        if self.patience is not None and (isinstance(self.patience, bool) or self.patience < 1):
            raise ConfigError(f"invalid patience {self.patience!r}: must be a positive integer")

    def _check_units(self) -> None:
        units = self.units
        if isinstance(units, bool) or not isinstance(units, int) or not 0 <= units <= MAX_UNITS:
            raise ConfigError(
                f"invalid units {units!r}: must be an integer in [2, {MAX_UNITS}] (0 without loss units)"
            )
        if self.loss == "units" and units < 2:
            raise ConfigError(f"invalid units {units!r} with loss 'units': must be in [2, {MAX_UNITS}]")
        if self.loss != "units" and units:
            raise ConfigError(f"invalid units {units!r} with loss {self.loss!r}: needs loss units")

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

    @property
    def is_distribution(self) -> bool:
        """Whether the model predicts a distribution that generation samples (a mixture density or
        a softmax over units)."""
        return self.loss in ("gaussian", "units")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls(**values)

    def model_hash(self, dataset_id: str, songs_hash: str = "") -> str:
        """Hash of what determines the trained weights: the dataset, its songs (they fix the
        train/validation split) and the config but for the epoch count and patience."""
        identity = {
            key: value
            for key, value in asdict(self).items()
            if key not in ("epochs", "patience")
            and not (key in _LATER_FIELDS and value == _LATER_FIELDS[key])
        }
        payload = json.dumps({"dataset_id": dataset_id, "songs": songs_hash, **identity}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


# --- Builders: the one place each config is made from the options the CLI, the deployments and
# the flows take (the flows' parameters keep these names: the Prefect UI and prefect.yaml show them).

# The train flow's model options: every TrainConfig field a run may override but the preset,
# the epochs and the fixed ones (normalize, seed).
MODEL_OPTIONS: tuple[str, ...] = (
    "hidden",
    "layers",
    "seq_len",
    "hop",
    "batch_size",
    "loss",
    "learning_rate",
    "patience",
    "shuffle_buffer",
    "frames_per_step",
    "mixtures",
    "input_noise",
    "dropout",
    "units",
)


def ingest_config(
    *,
    format: str = "zarr",
    transform: str = DEFAULT_TRANSFORM,
    batch_mb: float = 32.0,
    retry_failed: bool = False,
    strict: bool = False,
    max_seconds: float | None = None,
    batch_timeout: float | None = None,
    **frame_options: int | None,
) -> IngestConfig:
    """The ingest config of the ingest flow's options; ``frame_options`` (``block_size``,
    ``sample_rate``, ``n_fft``, ``hop_length``, ``n_mels``) that are None are the transform's
    defaults (:meth:`FeatureConfig.for_transform`)."""
    return IngestConfig(
        features=FeatureConfig.for_transform(transform, **frame_options),
        shard_format=format,
        batch_mb=batch_mb,
        retry_failed=retry_failed,
        strict=strict,
        max_seconds=DEFAULT_MAX_SONG_SECONDS if max_seconds is None else max_seconds,
        batch_timeout=batch_timeout,
    )


def model_options(config: TrainConfig) -> dict[str, Any]:
    """The train flow's model options (:data:`MODEL_OPTIONS`) of ``config``."""
    return {name: getattr(config, name) for name in MODEL_OPTIONS}


def check_max_minutes(max_minutes: float | None) -> None:
    """Check a training's wall-clock budget in minutes (None: no budget): a positive, finite number."""
    if max_minutes is None:
        return
    number = isinstance(max_minutes, int | float) and not isinstance(max_minutes, bool)
    if not (number and 0 < max_minutes < float("inf")):
        reason = "must be a positive, finite number of minutes"
        raise ConfigError(f"invalid max_minutes {max_minutes!r}: {reason}")


# How a mixture model's steps are sampled (tasks.model.network.sample_step): "independent" draws a
# component by its weight at every step and independent noise per output; "sticky" keeps the previous
# step's component while its weight stays within a margin of the best one; "smooth" carries each
# output's noise over from step to step (correlated in time); "sticky-smooth" does both;
# "smooth-frames" carries it from frame to frame (within a step as well), with the same time constant.
# The default is smooth-frames: on drascula-music (2 seeds) it beat independent (the default before)
# on tonality by 7-16 spreads (0.50 and 0.52 against -0.51 and -0.39), with frames and continuity
# as good on average and no clip collapsed (docs/benchmarks.md, "Sampling that keeps notes"); sticky
# held one chord for seconds (continuity fell, copies grew).
SAMPLINGS: tuple[str, ...] = ("independent", "sticky", "smooth", "sticky-smooth", "smooth-frames")
DEFAULT_SAMPLING = "smooth-frames"

# How the stft inverse reconstructs the phase (tasks.features.transforms.SpectralTransform.inverse):
# "pghi" integrates the phase from the log-magnitude's gradients (phase-gradient heap integration,
# Prusa et al. 2017), no iteration; "pghi-gl" starts a few Griffin-Lim iterations from it;
# "griffin-lim" is 32 iterations from random phases (the only method before). The rfft/fft blocks
# carry their phase and ignore it. The default is pghi-gl: its round trips of real audio scored
# within the spread of Griffin-Lim's on every axis (synthetic songs and drascula-music, 128 mels and
# linear bins) at a similar or lower spectral convergence, inverted 2.0-3.0x as fast and generated
# 1.9x as fast per CPU second (18x real time; Griffin-Lim 9.5x); PGHI alone
# was faster still but fell below the shuffled anchor on continuity on drascula-music
# (docs/benchmarks.md, "Phase reconstruction").
PHASES: tuple[str, ...] = ("pghi", "pghi-gl", "griffin-lim")
DEFAULT_PHASE = "pghi-gl"

# Generated clips: at most an hour each, at most 100 in a run.
MAX_CLIP_SECONDS = 3600.0
MAX_CLIPS = 100


def check_generate_request(
    seconds: float,
    count: int,
    temperature: float | None,
    *,
    sampling: str | None = None,
    phase: str | None = None,
    option_prefix: str = "",
) -> None:
    """Check a generate run's length, clip count, temperature, sampling and phase method
    (``option_prefix="--"`` names them as the CLI's options)."""
    if not 0 < seconds <= MAX_CLIP_SECONDS:
        raise ConfigError(f"invalid {option_prefix}seconds {seconds!r}: must be in (0, {MAX_CLIP_SECONDS:g}]")
    if not 1 <= count <= MAX_CLIPS:
        raise ConfigError(f"invalid {option_prefix}count {count!r}: must be in [1, {MAX_CLIPS}]")
    if temperature is not None and temperature < 0:
        raise ConfigError(f"invalid {option_prefix}temperature {temperature!r}: must be >= 0")
    if sampling is not None:
        check_sampling(sampling, option_prefix=option_prefix)
    if phase is not None:
        check_phase(phase, option_prefix=option_prefix)


def check_sampling(sampling: str, *, option_prefix: str = "") -> None:
    """:class:`ConfigError` naming ``sampling`` unless it is one of :data:`SAMPLINGS`."""
    if sampling not in SAMPLINGS:
        choices = ", ".join(SAMPLINGS)
        raise ConfigError(f"invalid {option_prefix}sampling {sampling!r}: must be one of {choices}")


def check_phase(phase: str, *, option_prefix: str = "") -> None:
    """:class:`ConfigError` naming ``phase`` unless it is one of :data:`PHASES`."""
    if phase not in PHASES:
        raise ConfigError(f"invalid {option_prefix}phase {phase!r}: must be one of {', '.join(PHASES)}")
