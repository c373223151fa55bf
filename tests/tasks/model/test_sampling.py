"""How a mixture model's steps are sampled (``sample_step`` and its ``SamplingState``), on a
hand-made mixture whose components are told apart by their means: component k has mean 10 k on
every output and scale 0.1, so a sample's component is its value rounded to tens."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.config import DEFAULT_SAMPLING, SAMPLINGS, TrainConfig
from tasks.errors import ConfigError
from tasks.model.network import STICKY_LOG_MARGIN, SamplingState, sample_step

K, D = 4, 3
SCALE = 0.1
CONFIG = TrainConfig.from_preset("spectral", mixtures=K)


def mixture(logits: list[float], scale: float = SCALE, width: int = D) -> np.ndarray:
    """The decoder's output for one step: K logits, then per component its means and log scales."""
    parts = [np.asarray(logits, np.float32)]
    for k in range(K):
        parts += [np.full(width, 10.0 * k, np.float32), np.full(width, math.log(scale), np.float32)]
    return np.concatenate(parts)


def component_of(sample: np.ndarray) -> int:
    components = np.rint(sample / 10.0).astype(int)
    assert len(set(components.tolist())) == 1, sample
    return int(components[0])


def components(sampling: str | None, params: np.ndarray, steps: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    state = SamplingState(sampling) if sampling else None
    return [
        component_of(sample_step(params, CONFIG, temperature=0.7, rng=rng, state=state)) for _ in range(steps)
    ]


def test_independent_draws_as_before_a_component_then_independent_noise() -> None:
    params = mixture([0.0, 1.0, -1.0, 0.5])
    weights = np.exp([0.0, 1.0, -1.0, 0.5])
    reference = np.random.default_rng(3)  # today's draws, by hand: a component by weight, then noise
    expected = []
    for _ in range(20):
        k = int(reference.choice(K, p=weights / weights.sum()))
        expected.append(10.0 * k + 0.7 * SCALE * reference.standard_normal(D))
    for state in (None, SamplingState("independent")):
        rng = np.random.default_rng(3)
        drawn = [sample_step(params, CONFIG, temperature=0.7, rng=rng, state=state) for _ in range(20)]
        np.testing.assert_allclose(drawn, expected, rtol=1e-5, atol=1e-5)


def test_sticky_keeps_the_component_across_steps_when_weights_are_equal() -> None:
    equal = mixture([0.0] * K)
    sticky = components("sticky", equal, 50)
    assert len(set(sticky)) == 1
    assert len(set(components("independent", equal, 50))) > 1  # redrawn every step
    assert len(set(components("sticky-smooth", equal, 50))) == 1
    # Over seeds the kept component is still drawn by weight: not always the same one.
    assert len({components("sticky", equal, 1, seed=seed)[0] for seed in range(20)}) > 1


def test_sticky_leaves_a_component_only_when_its_weight_drops_beyond_the_margin() -> None:
    rng = np.random.default_rng(0)
    state = SamplingState("sticky")
    first = sample_step(mixture([0.0, 0.0, 30.0, 0.0]), CONFIG, temperature=0.7, rng=rng, state=state)
    assert component_of(first) == state.component == 2
    within = mixture([0.0, 0.0, -STICKY_LOG_MARGIN + 0.1, 0.0])  # less likely, within the margin: kept
    assert all(
        component_of(sample_step(within, CONFIG, temperature=0.7, rng=rng, state=state)) == 2
        for _ in range(30)
    )
    beyond = mixture([30.0, 0.0, -STICKY_LOG_MARGIN - 0.1, 0.0])  # beyond it: redrawn (component 0 wins)
    assert component_of(sample_step(beyond, CONFIG, temperature=0.7, rng=rng, state=state)) == 0
    assert state.component == 0


def test_smooth_noise_is_correlated_across_steps_with_the_same_spread() -> None:
    params = mixture([30.0, 0.0, 0.0, 0.0], scale=1.0)  # component 0: mean 0, scale 1

    def noise(sampling: str) -> np.ndarray:
        rng, state = np.random.default_rng(1), SamplingState(sampling)
        return np.array(
            [sample_step(params, CONFIG, temperature=1.0, rng=rng, state=state) for _ in range(4000)]
        )

    for sampling, correlation in (("independent", 0.0), ("smooth", 0.9), ("sticky-smooth", 0.9)):
        drawn = noise(sampling)
        lagged = np.mean([np.corrcoef(drawn[:-1, d], drawn[1:, d])[0, 1] for d in range(D)])
        assert abs(lagged - correlation) < 0.05, (sampling, lagged)
        assert abs(drawn.std() - 1.0) < 0.1, (sampling, drawn.std())
        assert abs(np.corrcoef(drawn[:, 0], drawn[:, 1])[0, 1]) < 0.1  # still independent across outputs


def test_smooth_frames_noise_follows_from_frame_to_frame_inside_and_across_steps() -> None:
    frames, bands = CONFIG.frames_per_step, 2
    params = mixture([30.0, 0.0, 0.0, 0.0], scale=1.0, width=frames * bands)

    def per_frame(sampling: str) -> np.ndarray:
        """The noise as one row per frame [steps * frames, bands]."""
        rng, state = np.random.default_rng(2), SamplingState(sampling)
        steps = [sample_step(params, CONFIG, temperature=1.0, rng=rng, state=state) for _ in range(2000)]
        return np.concatenate([step.reshape(frames, bands) for step in steps])

    expected = 0.9 ** (1 / frames)
    for sampling, inside, across in (("smooth-frames", expected, 0.9), ("smooth", 0.0, 0.9)):
        rows = per_frame(sampling)
        pairs = np.arange(rows.shape[0] - 1)
        within = pairs[pairs % frames != frames - 1]  # frame f -> f + 1 of the same step
        lag = np.mean([np.corrcoef(rows[within, b], rows[within + 1, b])[0, 1] for b in range(bands)])
        assert abs(lag - inside) < 0.05, (sampling, lag)
        step_lag = np.corrcoef(rows[:-frames, 0], rows[frames:, 0])[0, 1]  # the same frame, next step
        assert abs(step_lag - across) < 0.05, (sampling, step_lag)
        assert abs(rows.std() - 1.0) < 0.1, (sampling, rows.std())


def test_temperature_zero_is_the_component_mean_under_every_sampling() -> None:
    for sampling in SAMPLINGS:
        rng = np.random.default_rng(0)
        sample = sample_step(
            mixture([30.0, 0.0, 0.0, 0.0]), CONFIG, temperature=0.0, rng=rng, state=SamplingState(sampling)
        )
        np.testing.assert_array_equal(sample, np.zeros(D, np.float32))


def test_the_default_is_smooth_frames() -> None:
    assert SamplingState().sampling == DEFAULT_SAMPLING == "smooth-frames"


def test_an_unknown_sampling_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        SamplingState("chaos")
    assert "'chaos'" in str(raised.value) and "\n" not in str(raised.value)
