"""Tests for tasks.features.blocks: framing, the FFT feature layouts and their inverses.

Known answers (a sine lands in its bin, a constant only in DC), numpy.fft as the
reference implementation, seeded random signals for round trips, and hypothesis
for shapes over edge lengths.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.errors import ConfigError, MusicflowError
from tasks.features.blocks import blocks_to_features, features_to_blocks, frame_blocks, n_features_for

SAMPLE_RATE = 44100
GRUV_BLOCK = 11025  # 0.25 s at 44.1 kHz: bins are exactly 4 Hz apart


def random_audio(n_samples: int, *, seed: int = 0) -> np.ndarray:
    """Seeded uniform noise in [-1, 1], float32."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, n_samples).astype(np.float32)


def sine(freq: float, n_samples: int, *, sample_rate: int = SAMPLE_RATE, amplitude: float = 0.5):
    t = np.arange(n_samples) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def assert_float32_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal within what a float32 FFT can promise.

    Rounding errors of an FFT scale with the spectrum's size, not with each bin, so a
    bin near zero can be off by ~1e-5 of the peak; 1e-5 * peak is ~100 float32 epsilons.
    """
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def split_complex(features: np.ndarray) -> np.ndarray:
    """real||imag halves back to a complex spectrum."""
    n_bins = features.shape[1] // 2
    return features[:, :n_bins].astype(np.float64) + 1j * features[:, n_bins:]


# --------------------------------------------------------------------------- n_features_for


@pytest.mark.parametrize(
    ("block_size", "transform", "expected"),
    [
        (GRUV_BLOCK, "rfft", 11026),
        (GRUV_BLOCK, "fft", 22050),
        (1024, "rfft", 1026),
        (1024, "fft", 2048),
        (2, "rfft", 4),
        (3, "rfft", 4),
        (2, "fft", 4),
    ],
)
def test_n_features_for(block_size: int, transform: str, expected: int) -> None:
    assert n_features_for(block_size, transform) == expected


@pytest.mark.parametrize("transform", ["rfft", "fft"])
@pytest.mark.parametrize("block_size", [2, 7, 64, 1000, 1001])
def test_n_features_for_matches_blocks_to_features(block_size: int, transform: str) -> None:
    blocks = np.ones((3, block_size), dtype=np.float32)
    features = blocks_to_features(blocks, transform=transform)
    assert features.shape == (3, n_features_for(block_size, transform))


def test_n_features_for_rejects_unknown_transform() -> None:
    with pytest.raises(ConfigError, match="foo"):
        n_features_for(1024, "foo")


@pytest.mark.parametrize("block_size", [0, 1, -5])
def test_n_features_for_rejects_bad_block_size(block_size: int) -> None:
    with pytest.raises(ConfigError, match=str(block_size)):
        n_features_for(block_size, "rfft")


# --------------------------------------------------------------------------- frame_blocks


def test_frame_blocks_exact_multiple() -> None:
    audio = np.arange(12, dtype=np.float32)
    blocks = frame_blocks(audio, block_size=4)
    assert blocks.shape == (3, 4)
    assert blocks.dtype == np.float32
    np.testing.assert_array_equal(blocks, audio.reshape(3, 4))


def test_frame_blocks_zero_pads_last_block() -> None:
    audio = np.arange(1, 11, dtype=np.float32)  # 10 samples, no zeros in the signal
    blocks = frame_blocks(audio, block_size=4)
    assert blocks.shape == (3, 4)  # ceil(10 / 4)
    np.testing.assert_array_equal(blocks.reshape(-1)[:10], audio)
    np.testing.assert_array_equal(blocks[-1], [9, 10, 0, 0])


def test_frame_blocks_shorter_than_one_block() -> None:
    audio = np.full(3, 0.25, dtype=np.float32)
    blocks = frame_blocks(audio, block_size=GRUV_BLOCK)
    assert blocks.shape == (1, GRUV_BLOCK)
    np.testing.assert_array_equal(blocks[0, :3], audio)
    assert not blocks[0, 3:].any()


@pytest.mark.parametrize("block_size", [2, 7, GRUV_BLOCK])
def test_frame_blocks_empty_input(block_size: int) -> None:
    blocks = frame_blocks(np.zeros(0, dtype=np.float32), block_size=block_size)
    assert blocks.shape == (0, block_size)
    assert blocks.dtype == np.float32


def test_frame_blocks_converts_float64_to_float32() -> None:
    audio = random_audio(100).astype(np.float64)
    blocks = frame_blocks(audio, block_size=32)
    assert blocks.dtype == np.float32
    np.testing.assert_array_equal(blocks.reshape(-1)[:100], audio.astype(np.float32))


def test_frame_blocks_does_not_modify_input() -> None:
    audio = random_audio(50)
    before = audio.copy()
    blocks = frame_blocks(audio, block_size=16)
    blocks[:] = 0
    np.testing.assert_array_equal(audio, before)


@pytest.mark.parametrize("shape", [(10, 2), (2, 10), (1, 1, 4)])
def test_frame_blocks_rejects_non_mono(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError) as raised:
        frame_blocks(np.zeros(shape, dtype=np.float32), block_size=4)
    assert str(shape) in str(raised.value)


@pytest.mark.parametrize("block_size", [0, -4])
def test_frame_blocks_rejects_bad_block_size(block_size: int) -> None:
    # Like n_features_for (FeatureConfig), a non-positive block size is a ConfigError
    # naming the value, not a ZeroDivisionError or numpy's "negative dimensions".
    with pytest.raises(ConfigError, match=str(block_size)):
        frame_blocks(np.ones(10, dtype=np.float32), block_size=block_size)


@settings(max_examples=40, deadline=None)
@given(n_samples=st.integers(0, 3000), block_size=st.integers(2, 300))
def test_frame_blocks_shape_and_content(n_samples: int, block_size: int) -> None:
    audio = random_audio(n_samples, seed=n_samples)
    blocks = frame_blocks(audio, block_size=block_size)
    assert blocks.shape == (-(-n_samples // block_size), block_size)
    assert blocks.dtype == np.float32
    flat = blocks.reshape(-1)
    np.testing.assert_array_equal(flat[:n_samples], audio)
    assert not flat[n_samples:].any()
    assert flat.shape[0] - n_samples < block_size  # at most one partial block


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("freq", [440.0, 1000.0, 4.0, 11000.0])
def test_sine_lands_in_its_rfft_bin(freq: float) -> None:
    k = freq * GRUV_BLOCK / SAMPLE_RATE
    assert k == int(k)  # the test only makes sense for an exact bin
    blocks = frame_blocks(sine(freq, 4 * GRUV_BLOCK), block_size=GRUV_BLOCK)
    spectrum = split_complex(blocks_to_features(blocks, transform="rfft"))
    assert spectrum.shape == (4, GRUV_BLOCK // 2 + 1)
    magnitude = np.abs(spectrum)
    np.testing.assert_array_equal(magnitude.argmax(axis=1), int(k))
    # A sine of amplitude A on an exact bin has |X[k]| = A * N / 2 and nothing else.
    np.testing.assert_allclose(magnitude[:, int(k)], 0.5 * GRUV_BLOCK / 2, rtol=1e-4)
    leakage = np.delete(magnitude, int(k), axis=1)
    assert leakage.max() < 1e-3 * magnitude[:, int(k)].min()


def test_sine_lands_in_its_fft_bin_and_mirror() -> None:
    freq, n = 440.0, GRUV_BLOCK
    k = int(freq * n / SAMPLE_RATE)
    blocks = frame_blocks(sine(freq, 2 * n), block_size=n)
    spectrum = split_complex(blocks_to_features(blocks, transform="fft"))
    assert spectrum.shape == (2, n)
    magnitude = np.abs(spectrum)
    np.testing.assert_array_equal(magnitude[:, : n // 2 + 1].argmax(axis=1), k)
    np.testing.assert_allclose(magnitude[:, n - k], magnitude[:, k], rtol=1e-5)
    top_two = np.sort(np.argsort(magnitude, axis=1)[:, -2:], axis=1)
    np.testing.assert_array_equal(top_two, [[k, n - k]] * 2)


def test_sine_phase_is_in_imag_half() -> None:
    # sin has X[k] = -i * A * N / 2: all the energy is in the imaginary half.
    n, k = 64, 5
    blocks = (np.sin(2 * np.pi * k * np.arange(n) / n)).astype(np.float32)[None, :]
    features = blocks_to_features(blocks, transform="rfft")
    n_bins = n // 2 + 1
    real, imag = features[0, :n_bins], features[0, n_bins:]
    np.testing.assert_allclose(real, 0.0, atol=1e-4)
    assert imag[k] == pytest.approx(-n / 2, rel=1e-5)
    np.testing.assert_allclose(np.delete(imag, k), 0.0, atol=1e-4)


@pytest.mark.parametrize("transform", ["rfft", "fft"])
def test_constant_block_is_only_dc(transform: str) -> None:
    block_size = 100
    blocks = np.full((2, block_size), 0.3, dtype=np.float32)
    features = blocks_to_features(blocks, transform=transform)
    n_bins = features.shape[1] // 2
    np.testing.assert_allclose(features[:, 0], 0.3 * block_size, rtol=1e-6)
    np.testing.assert_allclose(features[:, 1:n_bins], 0.0, atol=1e-4)
    np.testing.assert_allclose(features[:, n_bins:], 0.0, atol=1e-4)


def test_zero_blocks_give_zero_features() -> None:
    features = blocks_to_features(np.zeros((3, 17), dtype=np.float32))
    assert features.shape == (3, 18)
    assert not features.any()


# --------------------------------------------------------------------------- reference layouts


def test_fft_layout_matches_numpy_fft() -> None:
    blocks = random_audio(3 * GRUV_BLOCK, seed=1).reshape(3, GRUV_BLOCK)
    features = blocks_to_features(blocks, transform="fft")
    assert features.shape == (3, 22050)
    assert features.dtype == np.float32
    reference = np.fft.fft(blocks.astype(np.float64), axis=1)
    expected = np.concatenate([reference.real, reference.imag], axis=1).astype(np.float32)
    assert_float32_close(features, expected)


def test_rfft_layout_matches_numpy_rfft() -> None:
    blocks = random_audio(3 * GRUV_BLOCK, seed=2).reshape(3, GRUV_BLOCK)
    features = blocks_to_features(blocks, transform="rfft")
    assert features.shape == (3, 11026)
    assert features.dtype == np.float32
    reference = np.fft.rfft(blocks.astype(np.float64), axis=1)
    expected = np.concatenate([reference.real, reference.imag], axis=1).astype(np.float32)
    assert_float32_close(features, expected)


@pytest.mark.parametrize("block_size", [16, 17])
def test_rfft_is_first_half_of_fft(block_size: int) -> None:
    blocks = random_audio(2 * block_size, seed=3).reshape(2, block_size)
    half = split_complex(blocks_to_features(blocks, transform="rfft"))
    full = split_complex(blocks_to_features(blocks, transform="fft"))
    np.testing.assert_allclose(half, full[:, : block_size // 2 + 1], atol=1e-5)


def test_blocks_to_features_default_is_rfft() -> None:
    blocks = random_audio(2 * 64, seed=4).reshape(2, 64)
    np.testing.assert_array_equal(blocks_to_features(blocks), blocks_to_features(blocks, transform="rfft"))


def test_blocks_to_features_rows_are_independent() -> None:
    blocks = random_audio(4 * 50, seed=5).reshape(4, 50)
    together = blocks_to_features(blocks)
    one_by_one = np.concatenate([blocks_to_features(row[None, :]) for row in blocks])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("transform", ["rfft", "fft"])
def test_blocks_to_features_empty(transform: str) -> None:
    features = blocks_to_features(np.zeros((0, 32), dtype=np.float32), transform=transform)
    assert features.shape == (0, n_features_for(32, transform))
    assert features.dtype == np.float32


# --------------------------------------------------------------------------- inverses


def test_rfft_round_trip_gruv_block() -> None:
    audio = random_audio(4 * GRUV_BLOCK + 123, seed=42)
    blocks = frame_blocks(audio, block_size=GRUV_BLOCK)
    features = blocks_to_features(blocks, transform="rfft")
    restored = features_to_blocks(features, transform="rfft", block_size=GRUV_BLOCK)
    assert restored.shape == blocks.shape
    assert restored.dtype == np.float32
    assert np.abs(restored - blocks).max() < 1e-5
    assert np.abs(restored.reshape(-1)[: audio.shape[0]] - audio).max() < 1e-5


def test_fft_round_trip_gruv_block() -> None:
    blocks = random_audio(2 * GRUV_BLOCK, seed=43).reshape(2, GRUV_BLOCK)
    features = blocks_to_features(blocks, transform="fft")
    restored = features_to_blocks(features, transform="fft", block_size=GRUV_BLOCK)
    assert restored.shape == blocks.shape
    assert restored.dtype == np.float32
    assert np.abs(restored - blocks).max() < 1e-5


def test_features_to_blocks_matches_numpy_irfft() -> None:
    rng = np.random.default_rng(6)
    block_size = 64
    features = rng.standard_normal((3, n_features_for(block_size, "rfft"))).astype(np.float32)
    n_bins = block_size // 2 + 1
    spectrum = features[:, :n_bins].astype(np.float64) + 1j * features[:, n_bins:]
    expected = np.fft.irfft(spectrum, n=block_size, axis=1)
    restored = features_to_blocks(features, transform="rfft", block_size=block_size)
    np.testing.assert_allclose(restored, expected, rtol=1e-5, atol=1e-6)


def test_features_to_blocks_fft_takes_real_part_of_non_hermitian_spectrum() -> None:
    # A generated spectrum need not be Hermitian: the inverse is the real part of ifft.
    rng = np.random.default_rng(7)
    block_size = 50
    features = rng.standard_normal((4, n_features_for(block_size, "fft"))).astype(np.float32)
    spectrum = features[:, :block_size].astype(np.float64) + 1j * features[:, block_size:]
    expected = np.fft.ifft(spectrum, axis=1).real
    assert np.abs(np.fft.ifft(spectrum, axis=1).imag).max() > 1e-3  # really non-Hermitian
    restored = features_to_blocks(features, transform="fft", block_size=block_size)
    assert restored.shape == (4, block_size)
    assert restored.dtype == np.float32
    np.testing.assert_allclose(restored, expected, rtol=1e-5, atol=1e-6)


def test_features_to_blocks_sine_known_answer() -> None:
    # A single imaginary bin -A*N/2 at k is the sine A*sin(2*pi*k*t/N).
    block_size, k, amplitude = 128, 9, 0.7
    features = np.zeros((1, n_features_for(block_size, "rfft")), dtype=np.float32)
    features[0, block_size // 2 + 1 + k] = -amplitude * block_size / 2
    restored = features_to_blocks(features, transform="rfft", block_size=block_size)
    expected = amplitude * np.sin(2 * np.pi * k * np.arange(block_size) / block_size)
    np.testing.assert_allclose(restored[0], expected, atol=1e-6)


@pytest.mark.parametrize("transform", ["rfft", "fft"])
def test_features_to_blocks_empty(transform: str) -> None:
    features = np.zeros((0, n_features_for(32, transform)), dtype=np.float32)
    blocks = features_to_blocks(features, transform=transform, block_size=32)
    assert blocks.shape == (0, 32)


@settings(max_examples=30, deadline=None)
@given(
    n_samples=st.integers(0, 4000),
    block_size=st.integers(2, 512),
    transform=st.sampled_from(["rfft", "fft"]),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(n_samples: int, block_size: int, transform: str, seed: int) -> None:
    audio = random_audio(n_samples, seed=seed)
    blocks = frame_blocks(audio, block_size=block_size)
    features = blocks_to_features(blocks, transform=transform)
    n_blocks = -(-n_samples // block_size)
    assert features.shape == (n_blocks, n_features_for(block_size, transform))
    assert features.dtype == np.float32
    restored = features_to_blocks(features, transform=transform, block_size=block_size)
    assert restored.shape == (n_blocks, block_size)
    assert restored.dtype == np.float32
    if n_blocks:
        assert np.abs(restored - blocks).max() < 1e-5
        np.testing.assert_allclose(restored.reshape(-1)[:n_samples], audio, atol=1e-5)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("transform", ["foo", "RFFT", "", "stft"])
def test_blocks_to_features_rejects_unknown_transform(transform: str) -> None:
    with pytest.raises(ConfigError) as raised:
        blocks_to_features(np.zeros((1, 8), dtype=np.float32), transform=transform)
    assert repr(transform) in str(raised.value)


def test_features_to_blocks_rejects_unknown_transform() -> None:
    with pytest.raises(ConfigError, match="foo"):
        features_to_blocks(np.zeros((1, 10), dtype=np.float32), transform="foo", block_size=8)


@pytest.mark.parametrize("shape", [(8,), (1, 2, 8)])
def test_blocks_to_features_rejects_wrong_rank(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError) as raised:
        blocks_to_features(np.zeros(shape, dtype=np.float32))
    assert str(shape) in str(raised.value)


@pytest.mark.parametrize(
    ("shape", "transform", "block_size"),
    [
        ((3, 100), "rfft", 64),  # expected 66
        ((3, 66), "fft", 64),  # rfft width given to fft
        ((3, 128), "rfft", 64),  # fft width given to rfft
        ((3, 22050), "rfft", GRUV_BLOCK),
        ((66,), "rfft", 64),  # right width, wrong rank
        ((1, 3, 66), "rfft", 64),
    ],
)
def test_features_to_blocks_rejects_wrong_width(
    shape: tuple[int, ...], transform: str, block_size: int
) -> None:
    with pytest.raises(ConfigError) as raised:
        features_to_blocks(np.zeros(shape, dtype=np.float32), transform=transform, block_size=block_size)
    message = str(raised.value)
    assert str(shape) in message
    assert str(n_features_for(block_size, transform)) in message


def test_config_error_is_catchable_as_root_and_value_error() -> None:
    with pytest.raises(MusicflowError):
        frame_blocks(np.zeros((2, 2), dtype=np.float32), block_size=2)
    with pytest.raises(ValueError):
        blocks_to_features(np.zeros((1, 4), dtype=np.float32), transform="foo")
