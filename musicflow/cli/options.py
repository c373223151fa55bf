"""The choices and options that several ``musicflow`` commands share, spelled out for typer.

The choices must stay those of the libraries (the asserts below; ``SeedChoice`` is
``tasks.generation.generate.SEED_KINDS`` and ``DemoFormatChoice`` is
``tasks.audio.synth.DEMO_FORMATS``: tests/cli/test_cli_operator.py checks them without importing
those modules here).
"""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from tasks.config import (
    DEFAULT_PHASE,
    LOSSES,
    PHASES,
    PRESETS,
    SAMPLINGS,
    SHARD_FORMATS,
    TRANSFORMS,
    check_max_minutes,
)
from tasks.errors import ConfigError


class TransformChoice(enum.StrEnum):
    stft = "stft"
    rfft = "rfft"
    fft = "fft"


class ShardFormatChoice(enum.StrEnum):
    zarr = "zarr"
    parquet = "parquet"


class DemoFormatChoice(enum.StrEnum):
    mp3 = "mp3"
    wav = "wav"
    ogg = "ogg"
    flac = "flac"


class LossChoice(enum.StrEnum):
    mse = "mse"
    mae = "mae"
    gaussian = "gaussian"
    units = "units"


class PresetChoice(enum.StrEnum):
    spectral = "spectral"
    units = "units"
    small = "small"
    gruv = "gruv"


class SeedChoice(enum.StrEnum):
    validation = "validation"
    audio = "audio"
    noise = "noise"


class SamplingChoice(enum.StrEnum):
    independent = "independent"
    sticky = "sticky"
    smooth = "smooth"
    sticky_smooth = "sticky-smooth"
    smooth_frames = "smooth-frames"


class PhaseChoice(enum.StrEnum):
    pghi = "pghi"
    pghi_gl = "pghi-gl"
    griffin_lim = "griffin-lim"


assert tuple(SamplingChoice) == SAMPLINGS and tuple(PhaseChoice) == PHASES
assert tuple(TransformChoice) == TRANSFORMS and tuple(ShardFormatChoice) == SHARD_FORMATS
assert tuple(LossChoice) == LOSSES and set(PresetChoice) == set(PRESETS)

# The common options also read MUSICFLOW_* environment variables (ENVIRONMENT_VARIABLES lists
# them; docs/usage.md too): a flag given wins over its variable.
StoreOption = Annotated[
    str,
    typer.Option(
        "--store", envvar="MUSICFLOW_STORE", help="Store URL: a local path, file://, s3://, memory://..."
    ),
]
DatasetOption = Annotated[
    str | None, typer.Option("--dataset", help="Dataset id [default: the store's only dataset].")
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect and Dask logs.")]
StorageOptionsOption = Annotated[
    str | None,
    typer.Option(
        "--storage-options",
        envvar="MUSICFLOW_STORAGE_OPTIONS",
        metavar="JSON",
        help="fsspec options of the store, as JSON or @FILE (credentials, endpoint), e.g. "
        '\'{"key": "...", "secret": "...", "endpoint_url": "http://127.0.0.1:9000"}\'. '
        "They stay in this process (and its Dask workers): never in flow-run parameters.",
    ),
]
SourceOptionsOption = Annotated[
    str | None,
    typer.Option(
        "--source-options",
        envvar="MUSICFLOW_SOURCE_OPTIONS",
        metavar="JSON",
        help="fsspec options of the source, as JSON or @FILE (it may be on another endpoint).",
    ),
]


# The feature options that ingest, pipeline and serve share.
FormatOption = Annotated[ShardFormatChoice, typer.Option(help="Shard format.")]
TransformOption = Annotated[
    TransformChoice, typer.Option(help="Features: stft (log-mel frames) or the seed's rfft/fft blocks.")
]
BlockSizeOption = Annotated[int, typer.Option(min=2, help="rfft/fft: samples per block.")]
SampleRateOption = Annotated[
    int | None, typer.Option(min=1000, max=384000, help="Decode rate in Hz [stft 22050, rfft/fft 44100].")
]
NFFTOption = Annotated[int | None, typer.Option(help="stft: samples per frame [1024].")]
HopLengthOption = Annotated[int | None, typer.Option(help="stft: samples between frames [256].")]
NMelsOption = Annotated[int | None, typer.Option(help="stft: mel bands, 0 = linear bins [128].")]


# The run options that ingest, pipeline, serve and demo share.
WorkersOption = Annotated[
    int | None, typer.Option(min=1, envvar="MUSICFLOW_WORKERS", help="LocalCluster worker processes.")
]
DaskAddressOption = Annotated[
    str | None,
    typer.Option(envvar="MUSICFLOW_DASK_ADDRESS", help="Existing Dask scheduler, e.g. tcp://host:8786."),
]
DaskSchedulerFileOption = Annotated[
    str | None,
    typer.Option(
        envvar="MUSICFLOW_DASK_SCHEDULER_FILE",
        metavar="FILE",
        help="Existing Dask scheduler, by the JSON file `dask scheduler --scheduler-file` writes.",
    ),
]
DaskSecurityOption = Annotated[
    str | None,
    typer.Option(
        envvar="MUSICFLOW_DASK_SECURITY",
        metavar="JSON",
        help="TLS of an existing Dask cluster, as JSON or @FILE: paths of "
        '{"tls_ca_file", "tls_client_cert", "tls_client_key"} (distributed.Security); '
        "default: dask's distributed.comm.tls config.",
    ),
]
BatchTimeoutOption = Annotated[
    float | None,
    typer.Option(
        min=0.001,
        help="Seconds a batch may take before it counts as stuck, is retried and its worker restarted "
        "[default: 600 + twice its files' decode limits].",
    ),
]
DashboardOption = Annotated[
    bool,
    typer.Option(
        envvar="MUSICFLOW_DASHBOARD",
        help="The LocalCluster's Dask dashboard, on a free port (its link is printed).",
    ),
]
ModelPresetOption = Annotated[
    PresetChoice | None, typer.Option(help="Model preset [spectral for stft, small for rfft/fft].")
]
EpochsOption = Annotated[int | None, typer.Option(min=1, help="Training epochs.")]


def _checked_max_minutes(value: float | None) -> float | None:
    """0, negative, nan or inf: a usage error (exit 2) naming the value as typed, for the reason
    the flows' check gives."""
    try:
        check_max_minutes(value)
    except ConfigError as error:
        raise typer.BadParameter(str(error).partition(": ")[2]) from error
    return value


MaxMinutesOption = Annotated[
    float | None,
    typer.Option(
        metavar="M",
        callback=_checked_max_minutes,
        help="Wall-clock budget of the training in minutes (loading the data counts): it stops at the end "
        "of the epoch that crosses it and keeps the best epoch (stop reason: budget).",
    ),
]
SamplingOption = Annotated[
    SamplingChoice | None,
    typer.Option(
        help="How a spectral model's steps follow each other (a units model ignores it): independent "
        "(a mixture component drawn and independent noise at every step, the default before), "
        "sticky (the previous step's component kept while it stays likely), smooth (noise correlated "
        "across steps), sticky-smooth or smooth-frames (noise correlated across frames) [smooth-frames]."
    ),
]
PhaseOption = Annotated[
    PhaseChoice | None,
    typer.Option(
        help="How a spectral (stft) model's phases are reconstructed: pghi (phase-gradient heap "
        "integration, no iteration), pghi-gl (a few Griffin-Lim iterations from it) or griffin-lim "
        f"(32 iterations from random phases, the method before) [{DEFAULT_PHASE}]."
    ),
]
HiddenOption = Annotated[int | None, typer.Option(min=1, help="Units of the dense and LSTM layers.")]
# A step is frames-per-step rows: 4 log-mel frames for spectral (64 steps = 3 s at 22.05 kHz, hop
# 256), one 0.25-s block for small/gruv (40 blocks = 10 s).
SeqLenOption = Annotated[
    int | None,
    typer.Option(min=1, help="Steps per training window [64 = 3 s for spectral; 40 = 10 s for small/gruv]."),
]


# Every MUSICFLOW_* variable the options above read, for the docs and the tests.
ENVIRONMENT_VARIABLES = (
    "MUSICFLOW_STORE",
    "MUSICFLOW_STORAGE_OPTIONS",
    "MUSICFLOW_SOURCE_OPTIONS",
    "MUSICFLOW_WORKERS",
    "MUSICFLOW_DASK_ADDRESS",
    "MUSICFLOW_DASK_SCHEDULER_FILE",
    "MUSICFLOW_DASK_SECURITY",
    "MUSICFLOW_DASHBOARD",
)
