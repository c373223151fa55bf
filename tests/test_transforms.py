"""Every transform: shapes, streaming equals whole-signal forward, and the block transforms' round trip."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from musicflow.config import FeatureConfig
from musicflow.errors import ConfigError
from tasks.features import blocks_to_features, frame_blocks
from tasks.transforms import TRANSFORM_CLASSES, BlockTransform, get_transform

SMALL = {"block_size": 512}


def small_config(name: str) -> FeatureConfig:
    return FeatureConfig(transform=name, **SMALL)


@pytest.mark.parametrize("name", sorted(TRANSFORM_CLASSES))
@settings(max_examples=25, deadline=None)
@given(
    n_samples=st.integers(min_value=0, max_value=6000),
    cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=6),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_streaming_equals_forward(name: str, n_samples: int, cuts: list[int], seed: int) -> None:
    transform = get_transform(small_config(name))
    signal = np.random.default_rng(seed).uniform(-1, 1, n_samples).astype(np.float32)
    whole = transform.forward(signal)
    assert whole.shape == (transform.n_frames(n_samples), transform.n_features)
    assert whole.dtype == np.float32
    featurizer = transform.featurizer()
    edges = [0, *sorted(min(cut, n_samples) for cut in cuts), n_samples]
    pieces = [featurizer.push(signal[start:end]) for start, end in itertools.pairwise(edges)]
    pieces.append(featurizer.finish())
    streamed = np.concatenate(pieces) if pieces else np.zeros((0, transform.n_features), np.float32)
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["rfft", "fft"])
def test_block_transforms_match_the_seed_layout_and_round_trip(name: str) -> None:
    config = small_config(name)
    transform = get_transform(config)
    assert isinstance(transform, BlockTransform)
    assert transform.frame_step == config.block_size
    signal = np.random.default_rng(1).uniform(-1, 1, 3 * 512 + 100).astype(np.float32)
    rows = transform.forward(signal)
    expected = blocks_to_features(frame_blocks(signal, block_size=512), transform=name)
    np.testing.assert_array_equal(rows, expected)
    audio = transform.inverse(rows)
    assert audio.shape == (4 * 512,)
    np.testing.assert_allclose(audio[: signal.size], signal, atol=1e-5)
    np.testing.assert_allclose(audio[signal.size :], 0.0, atol=1e-5)  # the zero-padded tail


def test_unknown_transform_is_a_config_error_naming_it() -> None:
    config = FeatureConfig(**SMALL)
    object.__setattr__(config, "transform", "wavelet")  # past FeatureConfig's own check
    with pytest.raises(ConfigError, match="'wavelet'"):
        get_transform(config)
