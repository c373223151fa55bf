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

from musicflow.config import FeatureConfig, TrainConfig
from musicflow.errors import ConfigError, MusicflowError, StoreError
from musicflow.tfload import load_tensorflow
from tasks.catalog import read_catalog
from tasks.dataset import dataset_dir, list_datasets, read_features
from tasks.features import frame_blocks
from tasks.metrics import audio_metrics, nearest_training_similarity, reference_distribution
from tasks.shards import read_blocks
from tasks.store import Store, check_writable
from tasks.train import CARD_FILE, MODEL_FILE, NORMALIZATION_FILE, load_keras, model_dir
from tasks.transforms import get_transform
from tasks.windows import Normalizer

MAX_SECONDS = 3600.0
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
    model = load_keras(weights)
    if model.output_shape[-1] != features.n_features:
        raise ModelMismatchError(
            f"model {model_id!r} outputs {model.output_shape[-1]} features, "
            f"dataset {dataset_id!r} has {features.n_features}"
        )
    with np.load(io.BytesIO(store.read_bytes(directory, NORMALIZATION_FILE))) as arrays:
        normalizer = Normalizer(arrays["mean"].astype(np.float32), arrays["std"].astype(np.float32))
    config = TrainConfig.from_dict(card["config"])
    return LoadedModel(model_id, card, model, normalizer, features, config)


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


def generate_blocks(
    trained: Any,
    seed: np.ndarray,
    n_blocks: int,
    *,
    temperature: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Continue ``seed`` by ``n_blocks`` blocks with carried LSTM state.

    Parameters
    ----------
    trained : keras.Model
        The trained model (its weights are reused, not copied into a new fit).
    seed : np.ndarray, shape [seq_len, n_features]
        Normalised seed blocks; the model reads them once to set its state.
    n_blocks : int
    temperature : float
        Std of Gaussian noise added to each fed-back block (normalised units),
        to keep the model from collapsing into a fixed point.

    Returns
    -------
    np.ndarray, shape [n_blocks, n_features], float32 (normalised)
    """
    tf = load_tensorflow()

    step_model, shapes = build_step_model(trained)
    call = tf.function(lambda inputs: step_model(inputs, training=False), reduce_retracing=True)
    rng = rng or np.random.default_rng(0)
    states = [tf.zeros(shape) for shape in shapes]
    outputs, *states = call([tf.constant(seed[None], tf.float32), *states])
    current = outputs[0, -1].numpy()
    generated = np.empty((n_blocks, seed.shape[1]), np.float32)
    for index in range(n_blocks):
        generated[index] = current
        if index + 1 == n_blocks:
            break
        fed = (
            current + rng.normal(0.0, temperature, current.shape).astype(np.float32)
            if temperature
            else current
        )
        outputs, *states = call([tf.constant(fed[None, None], tf.float32), *states])
        current = outputs[0, -1].numpy()
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
    """Normalised seed blocks [seq_len, n_features] and a description of where they came from.

    ``validation`` (default): the first ``seq_len`` blocks of a validation song,
    which the model never trained on; ``audio``: a user file decoded with the
    dataset's feature config; ``noise``: Gaussian noise.
    """
    seq_len = loaded.config.seq_len
    if kind == "audio":
        if not seed_audio:
            raise ConfigError("seed kind 'audio' needs --seed-audio FILE")
        from musicflow.errors import DecodeError
        from tasks.ingest import decode_features  # the only place generation decodes audio

        try:
            features, _, _ = decode_features(seed_audio, features=loaded.features)
        except DecodeError as error:
            raise ConfigError(f"cannot use seed audio {seed_audio!r}: {error}") from error
        if features.shape[0] < seq_len:
            raise ConfigError(
                f"seed audio {seed_audio!r} has {features.shape[0]} blocks, the model needs {seq_len} "
                f"({seq_len * loaded.features.block_seconds:.2f} s)"
            )
        return loaded.normalizer.apply(features[:seq_len]), f"audio:{seed_audio}"
    if kind == "noise":
        rng = rng or np.random.default_rng(0)
        return rng.standard_normal((seq_len, loaded.features.n_features)).astype(np.float32), "noise"
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
    return loaded.normalizer.apply(blocks), f"validation:{row.song_id}"


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
    temperature: float = 0.0,
    run_id: str | None = None,
    random_seed: int = 0,
) -> dict[str, Any]:
    """Generate ``count`` clips of ``seconds`` and write them to ``generated/<run_id>/``.

    Writes ``clip-NN.wav`` (16-bit), ``clip-NN.mp3``, ``clip-NN.png`` (spectrogram)
    and, last, ``metrics.json``: a run folder without it is incomplete.
    Returns the content of ``metrics.json``.
    """
    from tasks.audio import encode_audio

    if not 0 < seconds <= MAX_SECONDS:
        raise ConfigError(f"invalid seconds {seconds!r}: must be in (0, {MAX_SECONDS:g}]")
    if count < 1 or count > 100:
        raise ConfigError(f"invalid count {count!r}: must be in [1, 100]")
    if temperature < 0:
        raise ConfigError(f"invalid temperature {temperature!r}: must be >= 0")
    if seed_audio and seed == "validation":
        seed = "audio"
    check_writable(store)
    model_id = resolve_model(store, model_id)
    loaded = load_trained_model(store, model_id)
    features = loaded.features
    n_blocks = max(1, round(seconds / features.block_seconds))
    run_id = run_id or new_run_id(model_id)
    directory = f"generated/{run_id}"
    try:  # before the work: a blocked output folder is a one-line StoreError, not a late traceback
        store.fs.makedirs(store.path(directory), exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot write to {store.full_url(directory)!r}: {error}") from error
    sample = training_sample(store, loaded)
    reference = (
        reference_distribution(
            frame_blocks(get_transform(features).inverse(sample), block_size=features.block_size),
            sample_rate=features.sample_rate,
        )
        if sample.shape[0]
        else None
    )
    rng = np.random.default_rng(random_seed)
    clips = []
    for index in range(count):
        seed_features, seed_source = seed_blocks(
            store, loaded, kind=seed, seed_audio=seed_audio, index=index, rng=rng
        )
        generated = generate_blocks(loaded.model, seed_features, n_blocks, temperature=temperature, rng=rng)
        audio, peak, clipped = to_audio(generated, loaded)
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
            block_size=features.block_size,
            reference=reference,
            unclipped_peak=peak,
            clipped_fraction=clipped,
        )
        if sample.shape[0]:
            metrics["nearest_training"] = nearest_training_similarity(
                generated, loaded.normalizer.apply(sample)
            )
        clips.append(
            {
                "name": name,
                "files": [f"{name}.wav", f"{name}.mp3", f"{name}.png"],
                "seed": seed_source,
                "metrics": metrics,
            }
        )
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
