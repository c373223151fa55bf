"""The LSTM that predicts the next step of feature rows (Keras 3 on TensorFlow).

Two kinds of output, chosen by ``TrainConfig.loss``:

- ``mse`` / ``mae`` (the seed's, GRUV): the next step itself, a point estimate. On
  FFT blocks the MSE-optimal point is near the mean (the phase of a block is
  unpredictable), so fed back it decays to a fixed point.
- ``gaussian``: a mixture of ``mixtures`` diagonal Gaussians over the next step
  (a mixture density network; one component is a plain Gaussian), trained by
  negative log-likelihood and *sampled* at generation, so the output keeps the
  spread of the songs instead of their average.

- ``units``: the next step is one of ``units`` discrete units, the k-means centroids of the
  training steps (:func:`fit_units`): the model reads the previous steps' units (an ``Embedding``
  whose fixed weights are the centroids, so the codebook is saved, checkpointed and loaded with the
  weights), predicts the next one by a softmax (cross-entropy) and generation samples it
  (:func:`sample_unit`) and emits its centroid. Holding a note is predicting the same unit again.

A step is ``frames_per_step`` consecutive rows flattened (Tacotron's reduction
factor): the LSTM runs once per step, so a window of ``seq_len`` steps covers
``frames_per_step`` times more audio for the same cost, and the model cannot
just copy the previous 12 ms frame.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.config import DEFAULT_SAMPLING, TrainConfig, check_sampling
from tasks.model.tfload import load_tensorflow

LOG_SCALE_MIN = -7.0  # sigma >= 1e-3 of the normalised features: the likelihood stays bounded
LOG_SCALE_MAX = 4.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# "sticky" sampling keeps the previous step's component while its weight is at least the best
# component's over this factor (log 4: a component 4x less likely than the best is left).
STICKY_LOG_MARGIN = math.log(4.0)
# "smooth" sampling: the correlation of an output's noise from one step (4 frames, 46 ms) to the next;
# 0.9 keeps it for ~10 steps (0.5 s) and leaves each step's noise N(0, 1).
NOISE_CORRELATION = 0.9


def step_features(n_features: int, config: TrainConfig) -> int:
    """Values per model step: ``frames_per_step`` rows of ``n_features``."""
    return n_features * config.frames_per_step


def output_size(n_features: int, config: TrainConfig) -> int:
    """Values the model outputs per step: the step, or the mixture's parameters."""
    size = step_features(n_features, config)
    if config.loss == "units":
        return config.units
    if config.loss != "gaussian":
        return size
    return config.mixtures * 2 * size + (config.mixtures if config.mixtures > 1 else 0)


def group_steps(rows: np.ndarray, frames_per_step: int) -> np.ndarray:
    """Rows [n, F] as steps [n // k, k * F] (a tail shorter than a step is dropped)."""
    usable = rows.shape[0] - rows.shape[0] % frames_per_step
    return rows[:usable].reshape(usable // frames_per_step, frames_per_step * rows.shape[1])


def ungroup_steps(steps: np.ndarray, n_features: int) -> np.ndarray:
    """Steps [n, k * F] back to rows [n * k, F]."""
    return steps.reshape(-1, n_features)


def build_model(n_features: int, config: TrainConfig, codebook: np.ndarray | None = None) -> Any:
    """[GaussianNoise] -> Dense(hidden) [-> Dropout] -> LSTM(hidden) x layers -> Dense(output).

    A ``units`` model reads unit ids ``[batch, time]`` through a fixed ``Embedding`` (layer
    ``units``) holding ``codebook`` [units, step_features], the centroids, before the noise.

    Input shape ``[batch, time, frames_per_step * n_features]``, output ``[batch, time,
    output_size]``; the time axis is free, so the same weights serve training windows
    and step-wise generation. The noise and dropout act in training only: the model
    learns to continue from inputs that are not exactly the songs' (as its own
    generated steps will not be). Compiled with RMSprop, gradient clipping and the
    loss of ``config.loss``. The Dense layers act on the last axis, at every time
    step: the same maths as ``TimeDistributed(Dense)``, 2.6-3x faster per step here
    (benchmarks/bench_train.py).
    """
    load_tensorflow()
    import keras

    keras.utils.set_random_seed(config.seed)
    width = step_features(n_features, config)
    if config.loss == "units":
        if codebook is None or codebook.shape != (config.units, width):
            shape = None if codebook is None else codebook.shape
            raise ValueError(f"a units model needs a codebook of shape {(config.units, width)}, got {shape}")
        inputs = keras.Input(shape=(None,), dtype="int32", name="units_in")
        embedding = keras.layers.Embedding(config.units, width, trainable=False, name="units")
        hidden = embedding(inputs)
        embedding.set_weights([codebook.astype(np.float32)])
    else:
        inputs = keras.Input(shape=(None, width), name="blocks")
        hidden = inputs
    if config.input_noise:
        hidden = keras.layers.GaussianNoise(config.input_noise, name="input_noise")(hidden)
    hidden = keras.layers.Dense(config.hidden, name="encode")(hidden)
    if config.dropout:
        hidden = keras.layers.Dropout(config.dropout, name="encode_dropout")(hidden)
    for index in range(config.layers):
        hidden = keras.layers.LSTM(config.hidden, return_sequences=True, name=f"lstm_{index}")(hidden)
    outputs = keras.layers.Dense(output_size(n_features, config), name="decode")(hidden)
    model = keras.Model(inputs, outputs, name="musicflow_lstm")
    compile_model(model, config)
    return model


def compile_model(model: Any, config: TrainConfig) -> None:
    load_tensorflow()
    import keras

    loss: Any = config.loss
    if config.loss == "gaussian":
        loss = mixture_nll_class()(mixtures=config.mixtures)
    elif config.loss == "units":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=config.learning_rate, clipnorm=config.clipnorm),
        loss=loss,
    )


def _split(params: Any, mixtures: int, ops: Any) -> tuple[Any, Any, Any]:
    """(logits [..., K], means [..., K, D], log scales [..., K, D]) of the decoder's output."""
    size = params.shape[-1]
    width = (size - (mixtures if mixtures > 1 else 0)) // (2 * mixtures)
    if mixtures > 1:
        logits, rest = params[..., :mixtures], params[..., mixtures:]
    else:
        logits, rest = None, params
    shape = (*tuple(ops.shape(rest)[:-1]), mixtures, 2, width)
    pairs = ops.reshape(rest, shape)
    log_scales = ops.clip(pairs[..., 1, :], LOG_SCALE_MIN, LOG_SCALE_MAX)
    return logits, pairs[..., 0, :], log_scales


def _mixture_nll(targets: Any, params: Any, mixtures: int) -> Any:
    """Negative log-likelihood per value of a step (so it compares with the MSE scale)."""
    from keras import ops

    logits, means, log_scales = _split(params, mixtures, ops)
    targets = ops.expand_dims(targets, -2)
    z = (targets - means) * ops.exp(-log_scales)
    log_density = ops.sum(-0.5 * ops.square(z) - log_scales - _HALF_LOG_2PI, axis=-1)  # [..., K]
    if logits is not None:
        log_density = ops.logsumexp(log_density + ops.log_softmax(logits, axis=-1), axis=-1)
    else:
        log_density = log_density[..., 0]
    return -log_density / float(targets.shape[-1])


@functools.cache
def mixture_nll_class() -> Any:
    """The Keras loss class of the mixture models, registered (so saved models load) on first
    use: importing this module must not import TensorFlow (ingest workers import it)."""
    load_tensorflow()
    import keras

    @keras.saving.register_keras_serializable(package="musicflow", name="MixtureNLL")
    class MixtureNLL(keras.losses.Loss):
        """Mixture-density negative log-likelihood (per value) of the next step."""

        def __init__(self, mixtures: int = 1, name: str = "mixture_nll", **kwargs: Any) -> None:
            super().__init__(name=name, **kwargs)
            self.mixtures = mixtures

        def call(self, y_true: Any, y_pred: Any) -> Any:
            return _mixture_nll(y_true, y_pred, self.mixtures)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "mixtures": self.mixtures}

    return MixtureNLL


@dataclass
class SamplingState:
    """What :func:`sample_step` carries from one step of a clip to the next under ``sampling``
    (one of ``tasks.config.SAMPLINGS``): the last component and the last noise."""

    sampling: str = DEFAULT_SAMPLING
    component: int | None = None
    noise: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_sampling(self.sampling)

    @property
    def sticky(self) -> bool:
        return self.sampling in ("sticky", "sticky-smooth")

    @property
    def smooth(self) -> bool:
        return self.sampling in ("smooth", "sticky-smooth")

    @property
    def smooth_frames(self) -> bool:
        return self.sampling == "smooth-frames"


def sample_step(
    params: np.ndarray,
    config: TrainConfig,
    *,
    temperature: float,
    rng: np.random.Generator,
    state: SamplingState | None = None,
) -> np.ndarray:
    """The next step [D] from the decoder's output for one step.

    Point models return it as it is. Mixture models pick a component by its weight and
    draw from it with its scale times ``temperature`` (0: the component's mean). ``state``
    (carried across a clip's steps) chooses how: None or ``independent`` draws a component and
    independent noise per output at each step; ``sticky`` keeps the previous component while its
    weight is within :data:`STICKY_LOG_MARGIN` of the best; ``smooth`` makes each output's noise
    an AR(1) process over the steps (:data:`NOISE_CORRELATION`), each step still N(0, 1);
    ``smooth-frames`` makes it one over the frames (``frames_per_step`` per step, the same
    correlation per step), so that the frames inside a step follow each other too.
    """
    if config.loss != "gaussian":
        return params.astype(np.float32)
    mixtures = config.mixtures
    width = (params.shape[-1] - (mixtures if mixtures > 1 else 0)) // (2 * mixtures)
    component = 0
    rest = params
    if mixtures > 1:
        logits, rest = params[:mixtures].astype(np.float64), params[mixtures:]
        previous = state.component if state is not None and state.sticky else None
        if previous is not None and logits[previous] >= logits.max() - STICKY_LOG_MARGIN:
            component = previous
        else:
            weights = np.exp(logits - logits.max())
            component = int(rng.choice(mixtures, p=weights / weights.sum()))
    if state is not None:
        state.component = component
    pairs = rest.reshape(mixtures, 2, width)[component]
    mean, log_scale = pairs[0], np.clip(pairs[1], LOG_SCALE_MIN, LOG_SCALE_MAX)
    if not temperature:
        return mean.astype(np.float32)
    noise = rng.standard_normal(width)
    if state is not None and state.smooth_frames:
        noise = _frame_noise(noise, state.noise, config.frames_per_step)
        state.noise = noise
    if state is not None and state.smooth:
        if state.noise is not None:
            noise = NOISE_CORRELATION * state.noise + math.sqrt(1.0 - NOISE_CORRELATION**2) * noise
        state.noise = noise
    return (mean + temperature * np.exp(log_scale) * noise).astype(np.float32)


def _frame_noise(fresh: np.ndarray, previous: np.ndarray | None, frames: int) -> np.ndarray:
    """A step's noise [frames * F] as an AR(1) over its frames, from ``previous`` step's last frame;
    correlation ``NOISE_CORRELATION ** (1 / frames)`` per frame, each value N(0, 1)."""
    correlation = NOISE_CORRELATION ** (1.0 / frames)
    rows = fresh.reshape(frames, -1).copy()
    last = None if previous is None else previous.reshape(frames, -1)[-1]
    for index in range(frames):
        if last is not None:
            rows[index] = correlation * last + math.sqrt(1.0 - correlation**2) * rows[index]
        last = rows[index]
    return rows.reshape(-1)


# Steps k-means sees when it fits a codebook (drawn evenly from the training songs): 32 per unit of
# the default 512 at most, so fitting stays a small part of a training budget.
MAX_UNIT_FIT_STEPS = 16384


def unit_fit_steps(n_steps: int, *, seed: int = 0) -> np.ndarray:
    """Which of ``n_steps`` training steps :func:`fit_units` fits on, in order: all of them, or
    :data:`MAX_UNIT_FIT_STEPS` drawn at random (so a caller can read only those)."""
    if n_steps <= MAX_UNIT_FIT_STEPS:
        return np.arange(n_steps)
    return np.sort(np.random.default_rng(seed).choice(n_steps, MAX_UNIT_FIT_STEPS, replace=False))


def fit_units(steps: np.ndarray, units: int, *, seed: int = 0) -> np.ndarray:
    """The codebook [units, D] of normalised training steps [n, D]: k-means centroids (k-means++,
    one run, seeded), fitted on up to :data:`MAX_UNIT_FIT_STEPS` steps drawn at random.

    :class:`ValueError` when there are fewer steps than units.
    """
    from sklearn.cluster import KMeans

    if steps.shape[0] < units:
        raise ValueError(f"{steps.shape[0]} training steps, fewer than {units} units")
    if steps.shape[0] > MAX_UNIT_FIT_STEPS:
        steps = steps[unit_fit_steps(steps.shape[0], seed=seed)]
    kmeans = KMeans(n_clusters=units, n_init=1, max_iter=30, random_state=seed)
    kmeans.fit(steps.astype(np.float32))
    return np.asarray(kmeans.cluster_centers_, dtype=np.float32)


def assign_units(steps: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """The nearest unit (Euclidean) of each step [..., D]: ids [...] (int32)."""
    flat = steps.reshape(-1, codebook.shape[1]).astype(np.float32)
    distances = np.square(codebook).sum(axis=1)[None, :] - 2.0 * flat @ codebook.T
    return np.argmin(distances, axis=1).astype(np.int32).reshape(steps.shape[:-1])


def sample_unit(logits: np.ndarray, *, temperature: float, rng: np.random.Generator) -> int:
    """A unit id drawn from the softmax of ``logits / temperature`` (0: the most likely unit)."""
    if not temperature:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    weights = np.exp(scaled - scaled.max())
    return int(rng.choice(weights.size, p=weights / weights.sum()))


def units_baseline_loss(targets: np.ndarray) -> tuple[float, int]:
    """Summed cross-entropy and count of predicting the units' own frequencies in ``targets``
    (ids, any shape): the best a model that ignores the context can do."""
    counts = np.bincount(targets.reshape(-1))
    counts = counts[counts > 0].astype(np.float64)
    return float(-(counts * np.log(counts / counts.sum())).sum()), int(counts.sum())


def baseline_loss(targets: np.ndarray, config: TrainConfig) -> tuple[float, int]:
    """Summed loss and value count of predicting the dataset's mean (normalised: 0) for
    ``targets`` [..., D]; for ``gaussian``, the likelihood of the dataset's own per-feature
    Gaussian (normalised: N(0, 1))."""
    if config.loss == "gaussian":
        return float((0.5 * np.square(targets, dtype=np.float64) + _HALF_LOG_2PI).sum()), targets.size
    if config.loss == "mse":
        return float(np.square(targets, dtype=np.float64).sum()), targets.size
    return float(np.abs(targets).sum()), targets.size
