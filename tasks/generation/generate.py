"""Generation: a stateful step model from the trained weights, block by block.

Cost is linear in the length: the LSTM state is carried from step to step,
where the seed re-ran the model on the whole growing sequence at every step.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from tasks.audio import encode  # encode.encode_audio: tests replace the encoder in its module
from tasks.config import (
    DEFAULT_PHASE,
    DEFAULT_SAMPLING,
    MAX_CLIP_SECONDS,
    TrainConfig,
    check_generate_request,
)
from tasks.dataset.repository import read_rows, read_song
from tasks.errors import ConfigError, DecodeError, MusicflowError, StoreError
from tasks.features.blocks import frame_blocks
from tasks.features.stream import decode_features  # the only place generation decodes audio
from tasks.features.transforms import get_transform
from tasks.generation.evaluate import SongSet, continuations, model_song_sets, score_run, seed_seconds
from tasks.generation.metrics import (
    CopyIndex,
    analysis_block_size,
    audio_metrics,
    copy_index,
    longest_copy,
    nearest_training_similarity,
    reference_distribution,
)
from tasks.generation.runs import METRICS_FILE, new_run_id, run_dir
from tasks.model.network import (
    SamplingState,
    assign_units,
    group_steps,
    sample_step,
    sample_unit,
    ungroup_steps,
)
from tasks.model.repository import LoadedModel, load_trained_model, resolve_model
from tasks.store.store import Store, check_writable

MAX_SECONDS = MAX_CLIP_SECONDS
# Seconds of training audio the longest-copy check searches, whole songs drawn at random beyond it
# (the result is then a lower bound, and says so); 30 min took 2.1 s to index (docs/quality.md).
COPY_SEARCH_SECONDS = 1800.0
SEED_KINDS = ("validation", "audio", "noise")


# Sampling temperature of distribution models when none is given (1 = the learnt spread): 0.7 keeps
# the loudness of the songs (1.0 is ~9 dB louder: every quiet band sampled up) at the best quality
# (docs/benchmarks.md, "Quality: the default against the GRUV path").
DEFAULT_SAMPLING_TEMPERATURE = 0.7


def default_temperature(config: TrainConfig) -> float:
    """The temperature generation uses unless told: sampling for distribution models, none for
    point models (for them it is the std of noise added to the fed-back step)."""
    return DEFAULT_SAMPLING_TEMPERATURE if config.is_distribution else 0.0


class NumpyStepModel:
    """The trained Dense -> LSTM x layers -> Dense, one step at a time in numpy, state carried.

    Same weights and maths as the Keras model (Keras' LSTM: gates i, f, c, o; sigmoid and
    tanh), without a TensorFlow call per step: a step of the spectral model takes ~0.1 ms here,
    where a ``tf.function`` call costs ~5 ms, and a clip has 21 steps per second of audio.
    Noise and dropout layers are identity at inference and are skipped.
    """

    def __init__(self, trained: Any) -> None:
        def weights(name: str) -> list[np.ndarray]:
            return [np.asarray(value, dtype=np.float32) for value in trained.get_layer(name).get_weights()]

        self.encode = weights("encode")
        self.decode = weights("decode")
        self.lstms = []
        index = 0
        while True:
            try:
                self.lstms.append(weights(f"lstm_{index}"))
            except ValueError:
                break
            index += 1
        self.states = [
            (np.zeros(kernel.shape[1] // 4, np.float32), np.zeros(kernel.shape[1] // 4, np.float32))
            for kernel, _, _ in self.lstms
        ]

    def run(self, steps: np.ndarray) -> np.ndarray:
        """Feed steps [n, step_features] in order; returns the output after the last one."""
        hidden = steps.astype(np.float32) @ self.encode[0] + self.encode[1]
        for layer, (kernel, recurrent, bias) in enumerate(self.lstms):
            h, c = self.states[layer]
            projected = hidden @ kernel + bias
            outputs = np.empty((steps.shape[0], h.size), np.float32)
            for t in range(steps.shape[0]):
                gates = projected[t] + h @ recurrent
                i, f, g, o = np.split(gates, 4)
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
                outputs[t] = h
            self.states[layer] = (h, c)
            hidden = outputs
        return (hidden[-1] @ self.decode[0] + self.decode[1]).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (np.tanh(0.5 * x) + 1.0)).astype(np.float32)


def generate_blocks(
    trained: Any,
    seed: np.ndarray,
    n_blocks: int,
    *,
    temperature: float = 0.0,
    rng: np.random.Generator | None = None,
    config: TrainConfig | None = None,
    sampling: str = DEFAULT_SAMPLING,
) -> np.ndarray:
    """Continue ``seed`` by ``n_blocks`` steps with carried LSTM state.

    Parameters
    ----------
    trained : keras.Model
        The trained model (its weights are reused, not copied into a new fit).
    seed : np.ndarray, shape [seq_len, step_features]
        Normalised seed steps; the model reads them once to set its state.
    n_blocks : int
        Steps to generate.
    temperature : float
        Point models: std of Gaussian noise added to each fed-back step
        (normalised units). Distribution models (``config.loss == "gaussian"``):
        the scale of each sample's spread (0 = the mean of the chosen component). ``units``
        models: the softmax's temperature (0 = the most likely unit).
    config : TrainConfig, optional
        The model's config; without it the model is taken as a point model.
    sampling : str
        Mixture models: how the component and the noise follow from step to step
        (``tasks.config.SAMPLINGS``, :func:`tasks.model.network.sample_step`); ``units`` models
        draw each unit from the softmax and ignore it.

    Returns
    -------
    np.ndarray, shape [n_blocks, step_features], float32 (normalised)
    """
    stepper = NumpyStepModel(trained)
    rng = rng or np.random.default_rng(0)
    state = SamplingState(sampling)
    distribution = config is not None and config.is_distribution
    if config is not None and config.loss == "units":
        codebook = np.asarray(trained.get_layer("units").get_weights()[0], dtype=np.float32)

        def next_unit(logits: np.ndarray) -> np.ndarray:
            return codebook[sample_unit(logits, temperature=temperature, rng=rng)]

        with threadpool_limits(1):
            # The seed as the model saw its training songs: each step its nearest unit's centroid.
            return _generate_steps(
                stepper, codebook[assign_units(seed, codebook)], n_blocks, next_unit, 0.0, rng
            )

    def next_step(params: np.ndarray) -> np.ndarray:
        if distribution:
            assert config is not None
            return sample_step(params, config, temperature=temperature, rng=rng, state=state)
        return params

    with threadpool_limits(1):  # a multi-threaded GEMV per step is ~8x slower on 2 busy cores
        return _generate_steps(stepper, seed, n_blocks, next_step, 0.0 if distribution else temperature, rng)


def _generate_steps(
    stepper: NumpyStepModel,
    seed: np.ndarray,
    n_blocks: int,
    next_step: Any,
    feedback_noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    current = next_step(stepper.run(seed))
    generated = np.empty((n_blocks, seed.shape[1]), np.float32)
    for index in range(n_blocks):
        generated[index] = current
        if index + 1 == n_blocks:
            break
        fed = (
            current + rng.normal(0.0, feedback_noise, current.shape).astype(np.float32)
            if feedback_noise
            else current
        )
        current = next_step(stepper.run(fed[None]))
    return generated


def generate_blocks_rerun(trained: Any, seed: np.ndarray, n_blocks: int) -> np.ndarray:
    """The seed's method, as a reference: re-run the model on the whole growing sequence each step.

    Quadratic in ``n_blocks``; kept for tests and the benchmark.
    """
    sequence = seed.copy()
    generated = np.empty((n_blocks, seed.shape[1]), np.float32)
    for index in range(n_blocks):
        generated[index] = trained(sequence[None], training=False).numpy()[0, -1]
        sequence = np.concatenate([sequence, generated[index : index + 1]])
    return generated


def seed_blocks(
    store: Store,
    loaded: LoadedModel,
    *,
    kind: str = "validation",
    seed_audio: str | None = None,
    index: int = 0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, str]:
    """Normalised seed steps [seq_len, step_features] and a description of where they came from.

    ``validation`` (default): the first ``seq_len`` steps of a validation song,
    which the model never trained on; ``audio``: a user file decoded with the
    dataset's feature config; ``noise``: Gaussian noise.
    """
    per_step = loaded.config.frames_per_step
    seq_len = loaded.config.seq_len * per_step  # in rows
    if kind == "audio":
        if not seed_audio:
            raise ConfigError("seed kind 'audio' needs --seed-audio FILE")
        try:
            features, _, _ = decode_features(seed_audio, features=loaded.features)
        except DecodeError as error:
            raise ConfigError(f"cannot use seed audio {seed_audio!r}: {error}") from error
        if features.shape[0] < seq_len:
            raise ConfigError(
                f"seed audio {seed_audio!r} has {features.shape[0]} blocks, the model needs {seq_len} "
                f"({seq_len * loaded.features.block_seconds:.2f} s)"
            )
        return group_steps(loaded.normalizer.apply(features[:seq_len]), per_step), f"audio:{seed_audio}"
    if kind == "noise":
        rng = rng or np.random.default_rng(0)
        noise = rng.standard_normal((seq_len, loaded.features.n_features)).astype(np.float32)
        return group_steps(noise, per_step), "noise"
    if kind != "validation":
        raise ConfigError(f"invalid seed {kind!r}: expected one of {', '.join(SEED_KINDS)}")
    dataset_id = loaded.card["dataset_id"]
    rows = {row.song_id: row for row in read_rows(store, dataset_id, ok_only=True)}
    candidates = [
        rows[song]
        for song in loaded.card.get("val_songs", [])
        if song in rows and rows[song].n_blocks >= seq_len
    ]
    if not candidates:
        raise ConfigError(
            f"no validation song of model {loaded.model_id!r} has {seq_len} blocks: use --seed-audio"
        )
    row = candidates[index % len(candidates)]
    blocks = read_song(store, dataset_id, row, n_blocks=seq_len)
    return group_steps(loaded.normalizer.apply(blocks), per_step), f"validation:{row.song_id}"


def to_audio(
    normalised: np.ndarray, loaded: LoadedModel, *, phase: str = DEFAULT_PHASE
) -> tuple[np.ndarray, float, float]:
    """Undo the normalisation, invert the transform (``phase``: how an stft's phases are
    reconstructed, one of ``tasks.config.PHASES``), clip to [-1, 1].

    Returns ``(audio [n_blocks * block_size] float32, unclipped peak, clipped fraction)``.
    """
    # One BLAS thread, as for the steps: two made a 15-s clip's inverse cost 0.38 CPU s instead of
    # 0.27 on idle cores, for 0.26 s of wall time instead of 0.27 (drascula-music's model).
    with threadpool_limits(1):
        audio = get_transform(loaded.features).inverse(loaded.normalizer.invert(normalised), phase=phase)
    if not np.isfinite(audio).all():
        raise MusicflowError(f"model {loaded.model_id!r} generated non-finite values")
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    clipped = float(np.mean(np.abs(audio) > 1.0)) if audio.size else 0.0
    return np.clip(audio, -1.0, 1.0), peak, clipped


def training_sample(
    store: Store, loaded: LoadedModel, *, max_songs: int = 20, max_blocks: int = 4000
) -> np.ndarray:
    """Feature blocks of up to ``max_songs`` training songs (raw, not normalised)."""
    dataset_id = loaded.card["dataset_id"]
    train_ids = set(loaded.card.get("train_songs", []))
    rows = [row for row in read_rows(store, dataset_id, ok_only=True) if row.song_id in train_ids][:max_songs]
    pieces, total = [], 0
    for row in rows:
        take = min(row.n_blocks, max_blocks - total)
        if take <= 0:
            break
        pieces.append(read_song(store, dataset_id, row, n_blocks=take))
        total += take
    return np.concatenate(pieces) if pieces else np.zeros((0, loaded.features.n_features), np.float32)


def training_copy_index(
    store: Store, loaded: LoadedModel, *, max_seconds: float = COPY_SEARCH_SECONDS
) -> CopyIndex:
    """The training songs indexed for the longest-copy check (:func:`longest_copy`): all of them
    when they hold up to ``max_seconds`` of audio, else whole songs drawn at random (seeded) up to
    it, and the index says how many of how many."""
    dataset_id = loaded.card["dataset_id"]
    train_ids = set(loaded.card.get("train_songs", []))
    rows = [row for row in read_rows(store, dataset_id, ok_only=True) if row.song_id in train_ids]
    block_seconds = loaded.features.block_seconds
    positions: list[int] = []
    total = 0.0
    for position in np.random.default_rng(0).permutation(len(rows)).tolist():
        seconds = rows[position].n_blocks * block_seconds
        if total + seconds <= max_seconds or not positions:
            positions.append(position)
            total += seconds
    picked = [rows[position] for position in sorted(positions)]
    with threadpool_limits(1):  # on 2 busy cores, 2 BLAS threads took 2.6x as long (docs/quality.md)
        return copy_index(
            ((row.song_id, read_song(store, dataset_id, row)) for row in picked),
            loaded.features,
            training_songs=len(rows),
            training_seconds=sum(row.n_blocks for row in rows) * block_seconds,
        )


def generate_run(
    store: Store,
    *,
    model_id: str | None = None,
    seconds: float = 10.0,
    count: int = 1,
    seed: str = "validation",
    seed_audio: str | None = None,
    temperature: float | None = None,
    run_id: str | None = None,
    random_seed: int = 0,
    sampling: str | None = None,
    phase: str | None = None,
) -> dict[str, Any]:
    """Generate ``count`` clips of ``seconds`` and write them to ``generated/<run_id>/``.

    Writes ``clip-NN.wav`` (16-bit), ``clip-NN.mp3``, ``clip-NN.png`` (spectrogram)
    and, last, ``metrics.json``: a run folder without it is incomplete. The report
    holds each clip's metrics and the run's quality score against the model's
    validation songs (:mod:`tasks.generation.quality`). ``temperature`` None is the model's
    default (:func:`default_temperature`); ``sampling`` None is ``DEFAULT_SAMPLING`` (how a
    distribution model's steps follow each other, :func:`tasks.model.network.sample_step`);
    ``phase`` None is ``DEFAULT_PHASE`` (how an stft model's phases are reconstructed, for the
    clips and for the round trip that is each axis's ceiling). Returns the content of
    ``metrics.json``.
    """
    check_generate_request(seconds, count, temperature, sampling=sampling, phase=phase)
    sampling = sampling or DEFAULT_SAMPLING
    phase = phase or DEFAULT_PHASE
    if seed_audio and seed == "validation":
        seed = "audio"
    check_writable(store)
    loaded = load_trained_model(store, resolve_model(store, model_id))
    if temperature is None:
        temperature = default_temperature(loaded.config)
    run_id = run_id or new_run_id(loaded.model_id)
    directory = make_run_dir(store, run_id)
    yardstick = clip_yardstick(store, loaded, seconds)
    n_blocks = max(1, round(seconds / loaded.features.block_seconds))
    rng = np.random.default_rng(random_seed)
    clips: list[dict[str, Any]] = []
    clip_audio: list[np.ndarray] = []
    for index in range(count):
        seed_features, seed_source = seed_blocks(
            store, loaded, kind=seed, seed_audio=seed_audio, index=index, rng=rng
        )
        generated, audio, peak, clipped = generate_clip(
            loaded, seed_features, n_blocks, temperature, rng, sampling=sampling, phase=phase
        )
        name = f"clip-{index + 1:02d}"
        files = write_clip(store, run_id, name, audio, sample_rate=loaded.features.sample_rate)
        metrics = clip_metrics(loaded, yardstick, generated, audio, peak=peak, clipped=clipped)
        clips.append({"name": name, "files": files, "seed": seed_source, "metrics": metrics})
        clip_audio.append(audio)
    quality = score_clips(store, loaded, yardstick, clips, clip_audio, random_seed=random_seed, phase=phase)
    report = {
        "run_id": run_id,
        "model_id": loaded.model_id,
        "dataset_id": loaded.card["dataset_id"],
        "seconds": n_blocks * loaded.features.block_seconds,
        "count": count,
        "temperature": temperature,
        "sampling": sampling,
        "phase": phase,
        "seed": seed,
        "random_seed": random_seed,
        "reference": yardstick.reference,
        "quality": quality,
        "memorisation": memorisation(yardstick, clips),
        "clips": clips,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "location": store.full_url(directory),
    }
    store.write_json(report, directory, METRICS_FILE)  # last: the run is complete
    return report


def make_run_dir(store: Store, run_id: str) -> str:
    """Create ``generated/<run_id>/`` and return it; before the work, so that a blocked output
    folder is a one-line :class:`StoreError`, not a late traceback."""
    directory = run_dir(run_id)
    try:
        store.fs.makedirs(store.path(directory), exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot write to {store.full_url(directory)!r}: {error}") from error
    return directory


@dataclass
class Yardstick:
    """What a run's clips are measured against: the model's song sets (the quality score's
    reference and other-songs anchor), the reference's block-metric distribution, raw
    training blocks (the nearest-training check) and the training songs indexed for the
    longest-copy check."""

    song_sets: tuple[SongSet, SongSet]
    block_size: int
    reference: dict[str, float]
    training: np.ndarray
    copies: CopyIndex


def clip_yardstick(store: Store, loaded: LoadedModel, seconds: float) -> Yardstick:
    sample = training_sample(store, loaded)
    # The reference leaves out the seeds and what follows them: the continuations are the anchor.
    song_sets = model_song_sets(store, loaded.card, after_seconds=seed_seconds(loaded.card) + seconds)
    block_size = analysis_block_size(loaded.features)
    reference = reference_distribution(
        np.concatenate([frame_blocks(song, block_size=block_size) for song in song_sets[1].audio]),
        sample_rate=loaded.features.sample_rate,
    )
    return Yardstick(song_sets, block_size, reference, sample, training_copy_index(store, loaded))


def generate_clip(
    loaded: LoadedModel,
    seed_features: np.ndarray,
    n_blocks: int,
    temperature: float,
    rng: np.random.Generator,
    *,
    sampling: str = DEFAULT_SAMPLING,
    phase: str = DEFAULT_PHASE,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One clip of ``n_blocks`` continuing the seed: its normalised blocks [n_blocks, n_features]
    and :func:`to_audio`'s ``(audio, unclipped peak, clipped fraction)`` (``phase``: its method)."""
    n_steps = -(-n_blocks // loaded.config.frames_per_step)
    steps = generate_blocks(
        loaded.model,
        seed_features,
        n_steps,
        temperature=temperature,
        rng=rng,
        config=loaded.config,
        sampling=sampling,
    )
    generated = ungroup_steps(steps, loaded.features.n_features)[:n_blocks]
    return (generated, *to_audio(generated, loaded, phase=phase))


def write_clip(store: Store, run_id: str, name: str, audio: np.ndarray, *, sample_rate: int) -> list[str]:
    """Write ``<name>.wav``, ``.mp3`` and ``.png`` (spectrogram) into the run folder; their names."""
    directory = run_dir(run_id)
    for audio_format in ("wav", "mp3"):
        encoded = encode.encode_audio(audio, sample_rate=sample_rate, format=audio_format)
        store.write_bytes(encoded, directory, f"{name}.{audio_format}")
    title = f"{run_id} {name}"
    store.write_bytes(spectrogram_png(audio, sample_rate=sample_rate, title=title), directory, f"{name}.png")
    return [f"{name}.wav", f"{name}.mp3", f"{name}.png"]


def clip_metrics(
    loaded: LoadedModel,
    yardstick: Yardstick,
    generated: np.ndarray,
    audio: np.ndarray,
    *,
    peak: float,
    clipped: float,
) -> dict[str, Any]:
    """A clip's audio metrics against the reference, its nearest training rows, and the longest
    span it copies from one training song (``longest_copy_seconds``; ``longest_copy`` names the
    song and where, from :data:`~tasks.generation.metrics.COPY_NAMED_SECONDS`)."""
    metrics = audio_metrics(
        audio,
        sample_rate=loaded.features.sample_rate,
        block_size=yardstick.block_size,
        reference=yardstick.reference,
        unclipped_peak=peak,
        clipped_fraction=clipped,
    )
    if yardstick.training.shape[0]:
        # Every row of a short clip; evenly spaced rows of a long one (the check is quadratic).
        picked = np.linspace(0, generated.shape[0] - 1, min(generated.shape[0], 4000)).astype(int)
        metrics["nearest_training"] = nearest_training_similarity(
            generated[picked], loaded.normalizer.apply(yardstick.training)
        )
    with threadpool_limits(1):
        copied = longest_copy(loaded.normalizer.invert(generated), yardstick.copies)
    metrics["longest_copy_seconds"] = copied.pop("seconds")
    metrics["longest_copy"] = copied if copied["song_id"] else None
    return metrics


def memorisation(yardstick: Yardstick, clips: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's longest copied span (its clip), and what the check searched (songs, seconds, a
    ``lower_bound`` when it did not search every training song)."""
    longest = max(clips, key=lambda clip: clip["metrics"]["longest_copy_seconds"], default=None)
    return {
        "longest_copy_seconds": longest["metrics"]["longest_copy_seconds"] if longest else 0.0,
        "clip": longest["name"] if longest else None,
        "searched": yardstick.copies.searched(),
    }


def score_clips(
    store: Store,
    loaded: LoadedModel,
    yardstick: Yardstick,
    clips: list[dict[str, Any]],
    clip_audio: list[np.ndarray],
    *,
    random_seed: int,
    phase: str = DEFAULT_PHASE,
) -> dict[str, Any]:
    """The run's quality score (:func:`tasks.generation.evaluate.score_run`) on every axis, with the
    round trip of the model's features (its phase by ``phase``) as the ceiling (an axis the clips
    are too short for is reported as not scored, with the reason; generation never fails for it);
    each clip's own score goes into its entry of ``clips``."""
    sample_rate = loaded.features.sample_rate
    continued = continuations(
        store,
        loaded.card,
        [clip["seed"] for clip in clips],
        [audio.size / sample_rate for audio in clip_audio],
    )
    quality = score_run(
        clip_audio,
        *yardstick.song_sets,
        sample_rate=sample_rate,
        seed=random_seed,
        continued=continued,
        features=loaded.features,
        phase=phase,
    )
    for clip, scored in zip(clips, quality["per_clip"], strict=True):
        clip["quality"] = scored
    return {key: value for key, value in quality.items() if key != "per_clip"}


def spectrogram_png(audio: np.ndarray, *, sample_rate: int, title: str) -> bytes:
    """Log-power spectrogram of a clip as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.signal import spectrogram

    frequencies, times, power = spectrogram(audio, fs=sample_rate, nperseg=1024, noverlap=512)
    figure, axes = plt.subplots(figsize=(8, 3.5), dpi=100)
    axes.pcolormesh(times, frequencies, 10 * np.log10(power + 1e-12), shading="auto", cmap="magma")
    axes.set(xlabel="time (s)", ylabel="frequency (Hz)", title=title, ylim=(0, min(8000, sample_rate / 2)))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
