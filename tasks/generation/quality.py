"""The quality score: how close generated clips come to real songs the model did not train on.

Every clip, every reference and every anchor is turned into the same features,
computed from the waveform alone and independent of the model's own
representation: 64-band log-mel frames (dB, full scale = 0 dB, floor -100 dB)
of 2048-sample Hann frames every 512 samples at 22.05 kHz. A set of audio is
summarised by the mean and covariance of its frames, and two sets are compared
by the Fréchet distance of those Gaussians (as FAD/FID, on log-mel frames
instead of embeddings)::

    D(a, b) = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))

The reference is the model's validation songs. Two anchors are measured in the
same run, on the same reference, with the same amount of audio as the clips
(same count, same lengths):

- ``d_real``, the floor: real music standing in for the clips. A clip seeded with
  the start of a validation song (the default) is measured against that song's
  own continuation, the audio right after the seed, which is what a perfect model
  would have made; the reference then starts after the seed and the clip, so the
  two never share a frame. Other clips (seeded by a file or noise) get excerpts of
  other real songs (the training songs), averaged over a few draws. The latter
  (``d_other_songs``, always reported) is a loose floor on a varied collection: on
  drascula-music other songs are further from the validation songs than shaped
  noise is, while the clips, which continue the validation songs, are closer than
  both; the continuation is the comparison that stays ordered.
- ``d_noise``: noise shaped to the training songs' average spectrum and level:
  what a model that only learned the spectrum would give (averaged over draws).

``quality = (d_noise - d_gen) / (d_noise - d_real)``: about 1 is as close as
real music, 0 or below is no better than shaped noise.

What it tells: whether the clips have the spectra, the spread of spectra over
time (loud and quiet frames, notes and hits) and the band-to-band correlations
(timbre, harmony) of the songs. What it does not tell: frame order (rhythm,
melody, form are invisible to frame statistics: a clip of shuffled real frames
scores like real music), phase artefacts that leave the magnitudes alone, or
whether a listener likes it. Onset rate, loudness and the collapse and
memorisation flags cover part of the rest; it is a proxy, not a listening test.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.fft
import scipy.linalg
import scipy.signal

from tasks.errors import ConfigError
from tasks.features.transforms import mel_filterbank, scaled_hann

if TYPE_CHECKING:
    from tasks.store.store import Store

QUALITY_SAMPLE_RATE = 22050
QUALITY_N_FFT = 2048
QUALITY_HOP = 512
QUALITY_N_MELS = 64
DB_FLOOR = -100.0
ANCHOR_DRAWS = 4
# Frames a set needs for a covariance worth comparing (64 bands: ~1.5 s of audio).
MIN_FRAMES = 64


@functools.lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    return mel_filterbank(QUALITY_SAMPLE_RATE, QUALITY_N_FFT, QUALITY_N_MELS)


def resample(audio: np.ndarray, *, sample_rate: int, target: int = QUALITY_SAMPLE_RATE) -> np.ndarray:
    """``audio`` at ``target`` Hz (polyphase filter; a copy when the rate already matches)."""
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate == target:
        return audio.copy()
    divisor = math.gcd(int(sample_rate), int(target))
    return scipy.signal.resample_poly(audio, target // divisor, sample_rate // divisor).astype(np.float32)


def log_mel_frames(audio: np.ndarray, *, sample_rate: int) -> np.ndarray:
    """The score's features of a mono clip.

    Returns
    -------
    np.ndarray, shape [n_frames, 64], float64
        dB of the mel band power (the window normalised to unit sum), floored at -100 dB.
    """
    signal = resample(audio, sample_rate=sample_rate)
    if signal.size < QUALITY_N_FFT:
        signal = np.pad(signal, (0, QUALITY_N_FFT - signal.size))
    frames = np.lib.stride_tricks.sliding_window_view(signal, QUALITY_N_FFT)[::QUALITY_HOP]
    spectrum = scipy.fft.rfft(frames * scaled_hann(QUALITY_N_FFT), axis=1)
    power = (np.square(spectrum.real) + np.square(spectrum.imag)).astype(np.float64) @ _mel_basis().T
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-30)), DB_FLOOR)


def temporal_variation(frames: np.ndarray) -> float:
    """Mean over bands of the standard deviation over time of log-mel frames [n_frames, n_bands],
    in dB: ~14 dB for the demo songs, under 2 dB for a held chord or stationary noise."""
    return float(np.asarray(frames).std(axis=0).mean()) if len(frames) > 1 else 0.0


def frame_statistics(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [n_bands] and covariance [n_bands, n_bands] of frames [n_frames, n_bands]."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.shape[0] < 2:
        return frames.mean(axis=0), np.zeros((frames.shape[1], frames.shape[1]))
    return frames.mean(axis=0), np.cov(frames, rowvar=False)


def frechet_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance between the Gaussians ``(mean, covariance)`` ``a`` and ``b``."""
    (mu_a, cov_a), (mu_b, cov_b) = a, b
    with warnings.catch_warnings():  # a silent set has a singular covariance: that is expected
        warnings.simplefilter("ignore")
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # regularise both (as FID does)
            eye = np.eye(cov_a.shape[0]) * 1e-6
            root = scipy.linalg.sqrtm((cov_a + eye) @ (cov_b + eye))
    root = np.real(root)
    distance = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    return max(distance, 0.0)


def set_statistics(clips: Sequence[np.ndarray], *, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame statistics of a set of clips, their frames pooled."""
    frames = np.concatenate([log_mel_frames(clip, sample_rate=sample_rate) for clip in clips])
    return frame_statistics(frames)


def average_spectrum(songs: Sequence[np.ndarray], *, n_fft: int = 4096) -> np.ndarray:
    """Average power spectrum (Welch) of the songs, shape [n_fft // 2 + 1]."""
    spectra = [
        scipy.signal.welch(song, nperseg=min(n_fft, song.size))[1] for song in songs if song.size >= 256
    ]
    resized = [np.interp(np.linspace(0, 1, n_fft // 2 + 1), np.linspace(0, 1, s.size), s) for s in spectra]
    return np.mean(resized, axis=0) if resized else np.ones(n_fft // 2 + 1)


def shaped_noise(n_samples: int, *, spectrum: np.ndarray, rms: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of ``n_samples`` with the power spectrum ``spectrum`` (any length, 0 to
    Nyquist) and the RMS level ``rms``."""
    white = rng.standard_normal(n_samples)
    shaped_spectrum = scipy.fft.rfft(white)
    gains = np.sqrt(
        np.interp(np.linspace(0, 1, shaped_spectrum.size), np.linspace(0, 1, spectrum.size), spectrum)
    )
    noise = scipy.fft.irfft(shaped_spectrum * gains, n=n_samples)
    level = float(np.sqrt(np.mean(noise**2))) or 1.0
    return (noise * (rms / level)).astype(np.float32)


def rms_of(songs: Sequence[np.ndarray]) -> float:
    total = sum(float(np.sum(np.square(song, dtype=np.float64))) for song in songs)
    count = sum(song.size for song in songs)
    return math.sqrt(total / count) if count else 0.0


def loudness_lufs(audio: np.ndarray, *, sample_rate: int) -> float | None:
    """Integrated loudness (ITU-R BS.1770, pyloudnorm) in LUFS; None when shorter than 0.4 s or
    silent."""
    import pyloudnorm

    if audio.size < int(0.4 * sample_rate) + 1:
        return None
    value = float(pyloudnorm.Meter(sample_rate).integrated_loudness(np.asarray(audio, dtype=np.float64)))
    return round(value, 3) if math.isfinite(value) else None


def onset_rate(audio: np.ndarray, *, sample_rate: int) -> float:
    """Note onsets per second (librosa's spectral-flux onset detector at 22.05 kHz)."""
    import librosa.onset

    signal = resample(audio, sample_rate=sample_rate)
    if signal.size < QUALITY_N_FFT or not np.any(signal):
        return 0.0
    onsets = librosa.onset.onset_detect(y=signal, sr=QUALITY_SAMPLE_RATE, units="time")
    return round(len(onsets) / (signal.size / QUALITY_SAMPLE_RATE), 4)


def excerpts(
    songs: Sequence[np.ndarray], lengths: Sequence[int], rng: np.random.Generator
) -> list[np.ndarray]:
    """One random excerpt of each length, each from a random song (a whole song when shorter)."""
    picked = []
    for length in lengths:
        song = songs[int(rng.integers(len(songs)))]
        start = int(rng.integers(0, max(1, song.size - length + 1)))
        picked.append(song[start : start + length])
    return picked


def quality_report(
    clips: Sequence[np.ndarray],
    *,
    reference: Sequence[np.ndarray],
    real: Sequence[np.ndarray],
    sample_rate: int,
    seed: int = 0,
    draws: int = ANCHOR_DRAWS,
    continuations: Sequence[np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Score generated clips against the reference songs, with both anchors.

    Parameters
    ----------
    clips : generated mono clips, float32 at ``sample_rate``
    reference : the validation songs (the model never trained on them)
    real : other real songs (the training songs): the real anchor's excerpts and the noise
        anchor's spectrum and level
    sample_rate : int
    seed : int
        The anchors' excerpts and noise are drawn from it, so a report is reproducible.
    continuations : optional, one per clip
        The real audio that follows each clip's seed in its song (None where there is none):
        when every clip has one, they are the real anchor; else excerpts of ``real`` are.

    Returns
    -------
    dict
        ``quality``, ``d_gen``, ``d_real``, ``d_noise`` (all clips pooled), ``per_clip`` (each
        clip scored alone, against anchors of its own length), ``loudness`` (clips' and training
        songs' LUFS and their difference) and ``onset_rate`` (clips' and training songs').
    """
    if not clips or not reference or not real:
        raise ValueError("quality_report needs clips, reference songs and real songs")
    rng = np.random.default_rng(seed)
    reference_stats = set_statistics(reference, sample_rate=sample_rate)
    spectrum, level = average_spectrum(real), rms_of(real)

    continued: list[np.ndarray | None] = (
        list(continuations) if continuations is not None else [None] * len(clips)
    )

    def anchors(lengths: list[int], follows: list[np.ndarray | None]) -> tuple[float, float, float]:
        """(d_real, d_other_songs, d_noise) of a set of clips of these lengths: the real set is each
        clip's continuation where it has one, an excerpt of another song where not."""
        d_real, d_other, d_noise = [], [], []
        for _ in range(draws):
            others = excerpts(real, lengths, rng)
            d_other.append(frechet_distance(set_statistics(others, sample_rate=sample_rate), reference_stats))
            mixed = [item if item is not None else other for item, other in zip(follows, others, strict=True)]
            d_real.append(frechet_distance(set_statistics(mixed, sample_rate=sample_rate), reference_stats))
            noise = [shaped_noise(length, spectrum=spectrum, rms=level, rng=rng) for length in lengths]
            d_noise.append(frechet_distance(set_statistics(noise, sample_rate=sample_rate), reference_stats))
        return float(np.mean(d_real)), float(np.mean(d_other)), float(np.mean(d_noise))

    def score(d_gen: float, d_real: float, d_noise: float) -> float | None:
        span = d_noise - d_real
        return round((d_noise - d_gen) / span, 4) if span > 1e-9 else None

    lengths = [clip.size for clip in clips]
    d_gen = frechet_distance(set_statistics(clips, sample_rate=sample_rate), reference_stats)
    d_real, d_other, d_noise = anchors(lengths, continued)
    n_continued = sum(item is not None for item in continued)
    per_clip = []
    for clip, follows in zip(clips, continued, strict=True):
        clip_gen = frechet_distance(set_statistics([clip], sample_rate=sample_rate), reference_stats)
        clip_real, _, clip_noise = (
            (d_real, d_other, d_noise) if len(clips) == 1 else anchors([clip.size], [follows])
        )
        per_clip.append(
            {
                "quality": score(clip_gen, clip_real, clip_noise),
                "d_gen": round(clip_gen, 3),
                "d_real": round(clip_real, 3),
                "d_noise": round(clip_noise, 3),
                "lufs": loudness_lufs(clip, sample_rate=sample_rate),
                "onset_rate": onset_rate(clip, sample_rate=sample_rate),
            }
        )
    real_excerpts = excerpts(real, lengths * draws, rng)
    train_lufs = [
        value for song in real_excerpts if (value := loudness_lufs(song, sample_rate=sample_rate)) is not None
    ]
    clip_lufs = [item["lufs"] for item in per_clip if item["lufs"] is not None]
    loudness_train = float(np.median(train_lufs)) if train_lufs else None
    loudness_clips = float(np.median(clip_lufs)) if clip_lufs else None
    return {
        "quality": score(d_gen, d_real, d_noise),
        "d_gen": round(d_gen, 3),
        "d_real": round(d_real, 3),
        "d_noise": round(d_noise, 3),
        "real_anchor": (
            "continuations" if n_continued == len(clips) else "mixed" if n_continued else "other songs"
        ),
        "d_other_songs": round(d_other, 3),
        "features": (
            f"log-mel {QUALITY_N_MELS} bands, n_fft {QUALITY_N_FFT}, hop {QUALITY_HOP} "
            f"at {QUALITY_SAMPLE_RATE} Hz"
        ),
        "per_clip": per_clip,
        "loudness": {
            "clips_lufs": None if loudness_clips is None else round(loudness_clips, 3),
            "train_lufs": None if loudness_train is None else round(loudness_train, 3),
            "difference_db": (
                None
                if loudness_clips is None or loudness_train is None
                else round(loudness_clips - loudness_train, 3)
            ),
        },
        "onset_rate": {
            "clips": round(float(np.mean([item["onset_rate"] for item in per_clip])), 4),
            "train": round(
                float(np.mean([onset_rate(song, sample_rate=sample_rate) for song in real_excerpts])), 4
            ),
        },
        "reference_seconds": round(sum(song.size for song in reference) / sample_rate, 2),
        "real_seconds": round(sum(song.size for song in real) / sample_rate, 2),
        "draws": draws,
    }


# --- the songs a run is scored against, from the store ----------------------------------------------

REFERENCE_SONGS = 8
REFERENCE_SECONDS = 30.0
MIN_EXCERPT_SECONDS = 2.0
QUALITY_FILE = "quality.json"


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
    from tasks.dataset.repository import read_features, read_rows, read_song
    from tasks.features.transforms import get_transform

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
    from tasks.audio.decode import decode_audio
    from tasks.store.store import is_local_fs, url_to_fs

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
    from tasks.config import FeatureConfig, TrainConfig

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
) -> dict[str, Any]:
    """:func:`quality_report` of clips against a model's song sets, saying where the songs came from."""
    report = quality_report(
        clips,
        reference=reference.audio,
        real=real.audio,
        sample_rate=sample_rate,
        seed=seed,
        continuations=continued,
    )
    report["reference_songs"] = len(reference.audio)
    report["real_songs"] = len(real.audio)
    report["songs_from"] = reference.origin if reference.origin == real.origin else "mixed"
    return report


def evaluate(store: Store, *, model_id: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Score a generated run again (default: the newest run of the model, default the newest model)
    and write ``quality.json`` into the run's folder; returns it.

    Raises :class:`ConfigError` (one line, naming what is missing) when the store has no such
    model or run, or the model has no validation songs.
    """
    import datetime as dt
    import io

    import scipy.io.wavfile

    from tasks.generation.generate import METRICS_FILE, list_models, resolve_model
    from tasks.model.train import read_card

    if run_id is not None:
        if not store.exists("generated", run_id, METRICS_FILE):
            runs = [
                name for name in store.list_dirs("generated") if store.exists("generated", name, METRICS_FILE)
            ]
            raise ConfigError(
                f"no generated run {run_id!r} in store {store.url!r} (has: {', '.join(runs) or 'none'})"
            )
        run = store.read_json("generated", run_id, METRICS_FILE)
        if model_id is not None and run["model_id"] != model_id:
            raise ConfigError(f"run {run_id!r} was generated by model {run['model_id']!r}, not {model_id!r}")
        model_id = run["model_id"]
        if model_id not in list_models(store):
            raise ConfigError(
                f"run {run_id!r} was generated by model {model_id!r}, which is not in the store"
            )
    else:
        model_id = resolve_model(store, model_id)
        reports = [
            store.read_json("generated", name, METRICS_FILE)
            for name in store.list_dirs("generated")
            if store.exists("generated", name, METRICS_FILE)
        ]
        reports = [item for item in reports if item["model_id"] == model_id]
        if not reports:
            raise ConfigError(
                f"model {model_id!r} has no generated run in store {store.url!r}: "
                "run `musicflow generate` first"
            )
        run = max(reports, key=lambda item: item.get("created_at", ""))
    card = read_card(store, model_id)
    clips, sample_rate = [], 0
    for clip in run["clips"]:
        sample_rate, data = scipy.io.wavfile.read(
            io.BytesIO(store.read_bytes("generated", run["run_id"], f"{clip['name']}.wav"))
        )
        clips.append(data.astype(np.float32) / 32768.0 if data.dtype == np.int16 else data.astype(np.float32))
    seeds = [clip.get("seed", "") for clip in run["clips"]]
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
    )
    report.update(
        {
            "run_id": run["run_id"],
            "model_id": model_id,
            "clips": [clip["name"] for clip in run["clips"]],
            "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    )
    store.write_json(report, "generated", run["run_id"], QUALITY_FILE)
    return report
