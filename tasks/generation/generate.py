"""Generation: a stateful step model from the trained weights, block by block.

Cost is linear in the length: the LSTM state is carried from step to step,
where the seed re-ran the model on the whole growing sequence at every step.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from tasks.config import MAX_CLIP_SECONDS, FeatureConfig, TrainConfig, check_generate_request
from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import dataset_dir, list_datasets, read_features
from tasks.dataset.shards import read_blocks
from tasks.errors import ConfigError, MusicflowError, StoreError
from tasks.features.blocks import frame_blocks
from tasks.features.transforms import get_transform
from tasks.generation.metrics import (
    analysis_block_size,
    audio_metrics,
    nearest_training_similarity,
    reference_distribution,
)
from tasks.model.network import group_steps, output_size, sample_step, ungroup_steps
from tasks.model.tfload import load_tensorflow
from tasks.model.train import CARD_FILE, MODEL_FILE, NORMALIZATION_FILE, load_keras, model_dir
from tasks.model.windows import Normalizer
from tasks.store.store import Store, check_writable

MAX_SECONDS = MAX_CLIP_SECONDS
SEED_KINDS = ("validation", "audio", "noise")
METRICS_FILE = "metrics.json"


class ModelMismatchError(MusicflowError):
    """A model's card does not match its weights or its dataset."""


@dataclass
class LoadedModel:
    model_id: str
    card: dict[str, Any]
    model: Any
    normalizer: Normalizer
    features: FeatureConfig
    config: TrainConfig


def list_models(store: Store) -> list[str]:
    return [name for name in store.list_dirs("models") if store.exists(model_dir(name), CARD_FILE)]


def resolve_model(store: Store, model_id: str | None) -> str:
    """The model named, or the newest finished model in the store."""
    available = list_models(store)
    if model_id is not None:
        if model_id not in available:
            raise ConfigError(
                f"no trained model {model_id!r} in store {store.url!r} "
                f"(has: {', '.join(available) or 'none'})"
            )
        return model_id
    if not available:
        raise ConfigError(f"no trained model in store {store.url!r}: run `musicflow train` first")
    return max(available, key=lambda name: store.read_json(model_dir(name), CARD_FILE).get("created_at", ""))


def load_trained_model(store: Store, model_id: str) -> LoadedModel:
    """Load a model after checking its card against the weights file and the dataset.

    Raises :class:`ModelMismatchError` when ``model.keras`` is not the file the
    card describes (the seed's generator silently loaded the wrong weights),
    or the card's dataset or shapes do not match.
    """
    directory = model_dir(model_id)
    card = store.read_json(directory, CARD_FILE)
    weights = store.read_bytes(directory, MODEL_FILE)
    digest = hashlib.sha256(weights).hexdigest()
    if digest != card.get("weights_sha256"):
        raise ModelMismatchError(
            f"model {model_id!r}: {MODEL_FILE} (sha256 {digest[:12]}) is not the file its card describes "
            f"(sha256 {str(card.get('weights_sha256'))[:12]}): retrain it or restore the file"
        )
    dataset_id = card["dataset_id"]
    if dataset_id not in list_datasets(store):
        raise ModelMismatchError(
            f"model {model_id!r} was trained on dataset {dataset_id!r}, which is not in the store"
        )
    features = read_features(store, dataset_id)
    config = TrainConfig.from_dict(card["config"])
    model = load_keras(weights)
    expected = output_size(features.n_features, config)
    if model.output_shape[-1] != expected:
        raise ModelMismatchError(
            f"model {model_id!r} outputs {model.output_shape[-1]} values per step, "
            f"dataset {dataset_id!r} with its config needs {expected}"
        )
    with np.load(io.BytesIO(store.read_bytes(directory, NORMALIZATION_FILE))) as arrays:
        normalizer = Normalizer(arrays["mean"].astype(np.float32), arrays["std"].astype(np.float32))
    return LoadedModel(model_id, card, model, normalizer, features, config)


# Sampling temperature of distribution models when none is given (1 = the learnt spread): 0.7 keeps
# the loudness of the songs (1.0 is ~9 dB louder: every quiet band sampled up) at the best quality
# (README, "Sound").
DEFAULT_SAMPLING_TEMPERATURE = 0.7


def default_temperature(config: TrainConfig) -> float:
    """The temperature generation uses unless told: sampling for distribution models, none for
    point models (for them it is the std of noise added to the fed-back step)."""
    return DEFAULT_SAMPLING_TEMPERATURE if config.is_distribution else 0.0


def build_step_model(trained: Any) -> tuple[Any, list[tuple[int, int]]]:
    """A model that takes blocks plus LSTM states and returns outputs plus new states.

    Same layers and weights as ``trained`` (Dense -> LSTM x layers -> Dense);
    returns the model and the ``(batch, units)`` shape of each state input.
    """
    load_tensorflow()
    import keras

    n_features = trained.input_shape[-1]
    blocks = keras.Input(shape=(None, n_features), batch_size=1, name="blocks")
    hidden = trained.get_layer("encode")(blocks)
    state_inputs, new_states, shapes = [], [], []
    index = 0
    while True:
        try:
            lstm = trained.get_layer(f"lstm_{index}")
        except ValueError:
            break
        h = keras.Input(shape=(lstm.units,), batch_size=1, name=f"h_{index}")
        c = keras.Input(shape=(lstm.units,), batch_size=1, name=f"c_{index}")
        step = keras.layers.LSTM(
            lstm.units, return_sequences=True, return_state=True, name=f"step_lstm_{index}"
        )
        hidden, h_out, c_out = step(hidden, initial_state=[h, c])
        step.set_weights(lstm.get_weights())
        state_inputs += [h, c]
        new_states += [h_out, c_out]
        shapes += [(1, lstm.units), (1, lstm.units)]
        index += 1
    outputs = trained.get_layer("decode")(hidden)
    return keras.Model([blocks, *state_inputs], [outputs, *new_states]), shapes


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
        the scale of each sample's spread (0 = the mean of the chosen component).
    config : TrainConfig, optional
        The model's config; without it the model is taken as a point model.

    Returns
    -------
    np.ndarray, shape [n_blocks, step_features], float32 (normalised)
    """
    stepper = NumpyStepModel(trained)
    rng = rng or np.random.default_rng(0)
    sampling = config is not None and config.is_distribution

    def next_step(params: np.ndarray) -> np.ndarray:
        if sampling:
            assert config is not None
            return sample_step(params, config, temperature=temperature, rng=rng)
        return params

    with threadpool_limits(1):  # a multi-threaded GEMV per step is ~8x slower on 2 busy cores
        return _generate_steps(stepper, seed, n_blocks, next_step, temperature if not sampling else 0.0, rng)


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
        from tasks.errors import DecodeError
        from tasks.ingest.worker import decode_features  # the only place generation decodes audio

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
    directory = dataset_dir(loaded.card["dataset_id"])
    rows = {row.song_id: row for row in read_catalog(store, directory) if row.ok}
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
    assert row.shard is not None
    blocks = read_blocks(store, directory, row.shard, offset=row.offset, n_blocks=seq_len)
    return group_steps(loaded.normalizer.apply(blocks), per_step), f"validation:{row.song_id}"


def to_audio(normalised: np.ndarray, loaded: LoadedModel) -> tuple[np.ndarray, float, float]:
    """Undo the normalisation, invert the transform, clip to [-1, 1].

    Returns ``(audio [n_blocks * block_size] float32, unclipped peak, clipped fraction)``.
    """
    audio = get_transform(loaded.features).inverse(loaded.normalizer.invert(normalised))
    if not np.isfinite(audio).all():
        raise MusicflowError(f"model {loaded.model_id!r} generated non-finite values")
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    clipped = float(np.mean(np.abs(audio) > 1.0)) if audio.size else 0.0
    return np.clip(audio, -1.0, 1.0), peak, clipped


def training_sample(
    store: Store, loaded: LoadedModel, *, max_songs: int = 20, max_blocks: int = 4000
) -> np.ndarray:
    """Feature blocks of up to ``max_songs`` training songs (raw, not normalised)."""
    directory = dataset_dir(loaded.card["dataset_id"])
    train_ids = set(loaded.card.get("train_songs", []))
    rows = [row for row in read_catalog(store, directory) if row.ok and row.song_id in train_ids][:max_songs]
    pieces, total = [], 0
    for row in rows:
        assert row.shard is not None
        take = min(row.n_blocks, max_blocks - total)
        if take <= 0:
            break
        pieces.append(read_blocks(store, directory, row.shard, offset=row.offset, n_blocks=take))
        total += take
    return np.concatenate(pieces) if pieces else np.zeros((0, loaded.features.n_features), np.float32)


def new_run_id(model_id: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{model_id}-{uuid.uuid4().hex[:6]}"


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
) -> dict[str, Any]:
    """Generate ``count`` clips of ``seconds`` and write them to ``generated/<run_id>/``.

    Writes ``clip-NN.wav`` (16-bit), ``clip-NN.mp3``, ``clip-NN.png`` (spectrogram)
    and, last, ``metrics.json``: a run folder without it is incomplete. The report
    holds each clip's metrics and the run's quality score against the model's
    validation songs (:mod:`tasks.generation.quality`). ``temperature`` None is the model's
    default (:func:`default_temperature`). Returns the content of ``metrics.json``.
    """
    from tasks.audio.decode import encode_audio
    from tasks.generation.quality import continuations, model_song_sets, score_run, seed_seconds

    check_generate_request(seconds, count, temperature)
    if seed_audio and seed == "validation":
        seed = "audio"
    check_writable(store)
    model_id = resolve_model(store, model_id)
    loaded = load_trained_model(store, model_id)
    features = loaded.features
    if temperature is None:
        temperature = default_temperature(loaded.config)
    per_step = loaded.config.frames_per_step
    n_blocks = max(1, round(seconds / features.block_seconds))
    n_steps = -(-n_blocks // per_step)
    run_id = run_id or new_run_id(model_id)
    directory = f"generated/{run_id}"
    try:  # before the work: a blocked output folder is a one-line StoreError, not a late traceback
        store.fs.makedirs(store.path(directory), exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot write to {store.full_url(directory)!r}: {error}") from error
    sample = training_sample(store, loaded)
    # The reference leaves out the seeds and what follows them: the continuations are the anchor.
    song_sets = model_song_sets(store, loaded.card, after_seconds=seed_seconds(loaded.card) + seconds)
    block_size = analysis_block_size(features)
    reference = reference_distribution(
        np.concatenate([frame_blocks(song, block_size=block_size) for song in song_sets[1].audio]),
        sample_rate=features.sample_rate,
    )
    rng = np.random.default_rng(random_seed)
    clips: list[dict[str, Any]] = []
    clip_audio: list[np.ndarray] = []
    for index in range(count):
        seed_features, seed_source = seed_blocks(
            store, loaded, kind=seed, seed_audio=seed_audio, index=index, rng=rng
        )
        steps = generate_blocks(
            loaded.model, seed_features, n_steps, temperature=temperature, rng=rng, config=loaded.config
        )
        generated = ungroup_steps(steps, features.n_features)[:n_blocks]
        audio, peak, clipped = to_audio(generated, loaded)
        clip_audio.append(audio)
        name = f"clip-{index + 1:02d}"
        store.write_bytes(
            encode_audio(audio, sample_rate=features.sample_rate, format="wav"), directory, f"{name}.wav"
        )
        store.write_bytes(
            encode_audio(audio, sample_rate=features.sample_rate, format="mp3"), directory, f"{name}.mp3"
        )
        store.write_bytes(
            spectrogram_png(audio, sample_rate=features.sample_rate, title=f"{run_id} {name}"),
            directory,
            f"{name}.png",
        )
        metrics = audio_metrics(
            audio,
            sample_rate=features.sample_rate,
            block_size=block_size,
            reference=reference,
            unclipped_peak=peak,
            clipped_fraction=clipped,
        )
        if sample.shape[0]:
            # Every row of a short clip; evenly spaced rows of a long one (the check is quadratic).
            picked = np.linspace(0, generated.shape[0] - 1, min(generated.shape[0], 4000)).astype(int)
            metrics["nearest_training"] = nearest_training_similarity(
                generated[picked], loaded.normalizer.apply(sample)
            )
        clips.append(
            {
                "name": name,
                "files": [f"{name}.wav", f"{name}.mp3", f"{name}.png"],
                "seed": seed_source,
                "metrics": metrics,
            }
        )
    continued = continuations(
        store,
        loaded.card,
        [clip["seed"] for clip in clips],
        [audio.size / features.sample_rate for audio in clip_audio],
    )
    quality = score_run(
        clip_audio, *song_sets, sample_rate=features.sample_rate, seed=random_seed, continued=continued
    )
    for clip, scored in zip(clips, quality["per_clip"], strict=True):
        clip["quality"] = scored
    report = {
        "run_id": run_id,
        "model_id": model_id,
        "dataset_id": loaded.card["dataset_id"],
        "seconds": n_blocks * features.block_seconds,
        "count": count,
        "temperature": temperature,
        "seed": seed,
        "random_seed": random_seed,
        "reference": reference,
        "quality": {key: value for key, value in quality.items() if key != "per_clip"},
        "clips": clips,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "location": store.full_url(directory),
    }
    store.write_json(report, directory, METRICS_FILE)  # last: the run is complete
    return report


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
