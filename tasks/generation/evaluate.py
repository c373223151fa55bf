"""Scoring generated runs against a model's songs, from the store.

The maths is :mod:`tasks.generation.quality`'s; this module finds what it compares: the
model's validation songs (the reference) and training songs (the other-songs anchor) as
audio excerpts (:func:`model_song_sets`), the real continuation of each validation seed
(:func:`continuations`), and, for ``musicflow evaluate``, a run's clips
(:func:`evaluate`, which writes ``quality.json``).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.io.wavfile

from tasks.audio.decode import decode_audio
from tasks.config import DEFAULT_PHASE, FeatureConfig, TrainConfig
from tasks.dataset.repository import read_features, read_rows, read_song
from tasks.errors import ConfigError
from tasks.features.transforms import get_transform
from tasks.generation.quality import AXES, AXIS_NEEDS, analyse, axis_units, check_axes, quality_report
from tasks.generation.runs import QUALITY_FILE, has_run, list_runs, read_run, read_runs, run_dir
from tasks.model.repository import list_models, read_card, resolve_model
from tasks.store.store import Store, is_local_fs, url_to_fs

REFERENCE_SONGS = 8
REFERENCE_SECONDS = 30.0
MIN_EXCERPT_SECONDS = 2.0
# The round trip through the model's features (the ceiling) inverts at most this much audio (stft:
# Griffin-Lim, about 5 s of work on 2 cores), in pieces of at least CEILING_PIECE_SECONDS (each
# gives the tonality axis a few windows) from continuations spread over the run.
CEILING_SECONDS = 24.0
CEILING_PIECE_SECONDS = 6.0


@dataclass
class SongSet:
    """Audio excerpts of some songs of a dataset, and where they came from: ``source`` (the song
    files, decoded) or ``features`` (the stored rows, inverted: lossless for rfft/fft,
    phase-reconstructed for stft), or ``mixed``."""

    audio: list[np.ndarray]
    song_ids: list[str]
    origin: str


def song_excerpts(
    store: Store,
    dataset_id: str,
    song_ids: Sequence[str],
    *,
    max_songs: int = REFERENCE_SONGS,
    max_seconds: float = REFERENCE_SECONDS,
    start_seconds: float | None = None,
) -> SongSet:
    """``max_seconds`` of up to ``max_songs`` of the songs (spread evenly over the list), at the
    dataset's sample rate: from ``start_seconds``, or the middle of the song when None or when
    less than ``MIN_EXCERPT_SECONDS`` is left after it.

    Each song is decoded from its source file when that is still readable (real audio, whatever
    the features); else its stored rows are inverted.
    """
    features = read_features(store, dataset_id)
    rows = {row.song_id: row for row in read_rows(store, dataset_id, ok_only=True)}
    wanted = [song for song in song_ids if song in rows]
    if len(wanted) > max_songs:
        wanted = [wanted[i] for i in np.linspace(0, len(wanted) - 1, max_songs).round().astype(int)]
    limit = int(max_seconds * features.sample_rate)
    transform = get_transform(features)
    audio, origins = [], set()
    for song in wanted:
        row = rows[song]
        samples = _decode_source(row.source, features.sample_rate)
        origins.add("source" if samples is not None else "features")
        n_samples = samples.size if samples is not None else row.n_blocks * transform.frame_step
        start = max(0, (n_samples - limit) // 2)
        if start_seconds is not None:
            wanted_start = int(start_seconds * features.sample_rate)
            if n_samples - wanted_start >= MIN_EXCERPT_SECONDS * features.sample_rate:
                start = wanted_start
        if samples is not None:
            audio.append(samples[start : start + limit])
            continue
        step = transform.frame_step
        first, last = start // step, min(row.n_blocks, -(-(start + limit) // step))
        song_rows = read_song(store, dataset_id, row, n_blocks=last)[first:]
        audio.append(np.clip(transform.inverse(song_rows), -1.0, 1.0)[:limit])
    origin = origins.pop() if len(origins) == 1 else ("mixed" if origins else "none")
    return SongSet(audio, wanted, origin)


def _decode_source(uri: str, sample_rate: int) -> np.ndarray | None:
    """The song file decoded, or None when it cannot be read or decoded any more."""
    try:
        fs, path = url_to_fs(uri)
        source: str | bytes = path if is_local_fs(fs) else fs.cat_file(path)
        return decode_audio(source, sample_rate=sample_rate).samples
    except Exception:  # moved, deleted, unreachable, undecodable now: the stored rows stand in
        return None


def model_song_sets(
    store: Store, card: dict[str, Any], *, after_seconds: float | None = None
) -> tuple[SongSet, SongSet]:
    """The validation songs (the reference; from ``after_seconds`` into each song when given, so
    that it leaves out the seeds and their continuations) and the training songs (the other-songs
    anchor) of a model.

    Raises :class:`ConfigError` when the model has no validation song left in its dataset.
    """
    dataset_id = card["dataset_id"]
    reference = song_excerpts(store, dataset_id, card.get("val_songs", []), start_seconds=after_seconds)
    if not reference.audio:
        raise ConfigError(
            f"model {card.get('model_id')!r} has no validation songs in dataset {dataset_id!r} "
            "to score against: retrain it on a dataset of at least 2 songs"
        )
    real = song_excerpts(store, dataset_id, card.get("train_songs", []))
    if not real.audio:
        raise ConfigError(f"model {card.get('model_id')!r} has no training songs in dataset {dataset_id!r}")
    return reference, real


def seed_seconds(card: dict[str, Any]) -> float:
    """Seconds of a validation song that seed a clip of the model (``seq_len`` steps)."""
    features = FeatureConfig.from_dict(card["features"])
    config = TrainConfig.from_dict(card["config"])
    return config.seq_len * config.frames_per_step * features.block_seconds


def continuations(
    store: Store, card: dict[str, Any], seeds: Sequence[str], clip_seconds: Sequence[float]
) -> list[np.ndarray | None]:
    """For each clip seeded with a validation song (``"validation:<song_id>"``), the real audio that
    follows the seed in that song, as long as the clip; None for other seeds or a song too short."""
    start = seed_seconds(card)
    rate = int(card["features"]["sample_rate"])
    found: list[np.ndarray | None] = []
    for seed, seconds in zip(seeds, clip_seconds, strict=True):
        kind, _, song = seed.partition(":")
        if kind != "validation":
            found.append(None)
            continue
        excerpt = song_excerpts(store, card["dataset_id"], [song], max_seconds=seconds, start_seconds=start)
        enough = bool(excerpt.audio) and excerpt.audio[0].size >= min(seconds, MIN_EXCERPT_SECONDS) * rate
        found.append(excerpt.audio[0] if enough else None)
    return found


def score_run(
    clips: Sequence[np.ndarray],
    reference: SongSet,
    real: SongSet,
    *,
    sample_rate: int,
    seed: int = 0,
    continued: Sequence[np.ndarray | None] | None = None,
    features: FeatureConfig | None = None,
    axes: Sequence[str] = AXES,
    phase: str = DEFAULT_PHASE,
) -> dict[str, Any]:
    """:func:`quality_report` of clips against a model's song sets, saying where the songs came from;
    with the model's ``features``, the real continuations' round trip through them (the phase
    reconstructed by ``phase``) is each axis's ceiling (:func:`round_trip`)."""
    ceiling = round_trip(features, continued or [], phase=phase) if features is not None else None
    report = quality_report(
        clips,
        reference=reference.audio,
        real=real.audio,
        sample_rate=sample_rate,
        seed=seed,
        continuations=continued,
        axes=axes,
        ceiling=ceiling,
    )
    report["reference_songs"] = len(reference.audio)
    report["real_songs"] = len(real.audio)
    report["songs_from"] = reference.origin if reference.origin == real.origin else "mixed"
    return report


def round_trip(
    features: FeatureConfig, continued: Sequence[np.ndarray | None], *, phase: str = DEFAULT_PHASE
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """The product's sound path on real audio: the start of real continuations (CEILING_SECONDS in
    all, from up to 4 clips spread over the run) through the dataset transform (``forward`` then
    ``inverse``; stft reconstructs the phase by ``phase``), with the real audio it came from; None
    without continuations."""
    sources = [item for item in continued if item is not None]
    if not sources:
        return None
    pieces = int(min(len(sources), max(1, CEILING_SECONDS // CEILING_PIECE_SECONDS)))
    length = int(CEILING_SECONDS * features.sample_rate / pieces)
    picked = np.linspace(0, len(sources) - 1, pieces).round().astype(int)
    sources = [sources[index][:length] for index in picked]
    transform = get_transform(features)
    trips = [
        np.clip(transform.inverse(transform.forward(item), phase=phase), -1.0, 1.0)[: item.size].astype(
            np.float32
        )
        for item in sources
    ]
    return trips, sources


def check_axis_audio(clips: Sequence[np.ndarray], *, sample_rate: int, axes: Sequence[str]) -> None:
    """:class:`ConfigError` naming the first axis the clips give too little audio for, and what it needs."""
    analyses = [analyse(clip, sample_rate=sample_rate) for clip in clips]
    for axis in axes:
        need, unit = AXIS_NEEDS[axis]
        have = axis_units(axis, analyses)
        if have < need:
            raise ConfigError(
                f"too little audio for axis {axis!r}: it needs at least {need} {unit}, "
                f"the run's clips give {have}"
            )


def evaluate(
    store: Store,
    *,
    model_id: str | None = None,
    run_id: str | None = None,
    axes: Sequence[str] | str | None = None,
) -> dict[str, Any]:
    """Score a generated run again (default: the newest run of the model, default the newest model)
    on ``axes`` (default: all) and write ``quality.json`` into the run's folder; returns it.

    Raises :class:`ConfigError` (one line, naming what is missing) when the store has no such
    model or run, the model has no validation songs, an axis is unknown or the run's clips give
    too little audio for one.
    """
    axes = check_axes(axes)
    if run_id is not None:
        if not has_run(store, run_id):
            raise ConfigError(
                f"no generated run {run_id!r} in store {store.url!r} "
                f"(has: {', '.join(list_runs(store)) or 'none'})"
            )
        run = read_run(store, run_id)
        if model_id is not None and run["model_id"] != model_id:
            raise ConfigError(f"run {run_id!r} was generated by model {run['model_id']!r}, not {model_id!r}")
        model_id = run["model_id"]
        if model_id not in list_models(store):
            raise ConfigError(
                f"run {run_id!r} was generated by model {model_id!r}, which is not in the store"
            )
    else:
        model_id = resolve_model(store, model_id)
        reports = [item for item in read_runs(store) if item["model_id"] == model_id]
        if not reports:
            raise ConfigError(
                f"model {model_id!r} has no generated run in store {store.url!r}: "
                "run `musicflow generate` first"
            )
        run = max(reports, key=lambda item: item.get("created_at", ""))
    card = read_card(store, model_id)
    clips, sample_rate = read_clips(store, run)
    seeds = [clip.get("seed", "") for clip in run["clips"]]
    check_axis_audio(clips, sample_rate=sample_rate, axes=axes)
    lengths = [clip.size / sample_rate for clip in clips]
    reference, real = model_song_sets(store, card, after_seconds=seed_seconds(card) + max(lengths))
    continued = continuations(store, card, seeds, lengths)
    report = score_run(
        clips,
        reference,
        real,
        sample_rate=sample_rate,
        seed=int(run.get("random_seed", 0)),
        continued=continued,
        features=FeatureConfig.from_dict(card["features"]),
        axes=axes,
        # the ceiling by the run's own phase method (runs from before the option: Griffin-Lim)
        phase=run.get("phase", "griffin-lim"),
    )
    report.update(
        {
            "run_id": run["run_id"],
            "model_id": model_id,
            "clips": [clip["name"] for clip in run["clips"]],
            "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    )
    store.write_json(report, run_dir(run["run_id"]), QUALITY_FILE)
    return report


def read_clips(store: Store, run: dict[str, Any]) -> tuple[list[np.ndarray], int]:
    """A run's clips as float32 in [-1, 1] (from their WAV files), and their sample rate."""
    clips, sample_rate = [], 0
    for clip in run["clips"]:
        sample_rate, data = scipy.io.wavfile.read(
            io.BytesIO(store.read_bytes(run_dir(run["run_id"]), f"{clip['name']}.wav"))
        )
        clips.append(data.astype(np.float32) / 32768.0 if data.dtype == np.int16 else data.astype(np.float32))
    return clips, sample_rate
