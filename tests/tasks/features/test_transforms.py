"""Every transform: shapes, streaming equals whole-signal forward, and the block transforms' round trip."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.config import PHASES, FeatureConfig
from tasks.errors import ConfigError
from tasks.features.blocks import blocks_to_features, frame_blocks
from tasks.features.transforms import (
    TRANSFORM_CLASSES,
    BlockTransform,
    get_transform,
    spectral_convergence,
)

SMALL = {"block_size": 512}
# Small enough to be quick, with the shape of the default (75 % overlap, mel bands).
SMALL_CONFIGS = {"stft": {"n_fft": 256, "hop_length": 64, "n_mels": 32}}


def small_config(name: str) -> FeatureConfig:
    return FeatureConfig(transform=name, **SMALL_CONFIGS.get(name, SMALL))


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


# Features -> audio -> features of a synthetic song, by each phase method, measured: Griffin-Lim 0.071
# (128 mels) and 0.065 (linear bins), PGHI + 4 Griffin-Lim iterations 0.071 and 0.031, PGHI alone
# 0.183 and 0.059; the bounds leave room for other seeds.
ROUND_TRIP_BOUNDS = {
    (128, "griffin-lim"): 0.12,
    (0, "griffin-lim"): 0.12,
    (128, "pghi-gl"): 0.12,
    (0, "pghi-gl"): 0.06,
    (128, "pghi"): 0.25,
    (0, "pghi"): 0.09,
}


@pytest.mark.parametrize(("n_mels", "phase"), sorted(ROUND_TRIP_BOUNDS))
def test_stft_round_trips_features_audio_features_within_the_stated_spectral_convergence(
    n_mels: int, phase: str
) -> None:
    from tasks.audio.synth import synthesize_song

    config = FeatureConfig.for_transform("stft", n_mels=n_mels)
    assert (config.sample_rate, config.n_fft, config.hop_length) == (22050, 1024, 256)
    transform = get_transform(config)
    song = synthesize_song(seed=3, seconds=6.0, sample_rate=config.sample_rate).mean(axis=1)
    rows = transform.forward(song)
    assert rows.shape == (transform.n_frames(song.size), n_mels or 513)
    audio = transform.inverse(rows, phase=phase)
    assert audio.shape == (rows.shape[0] * config.hop_length,)
    convergence = spectral_convergence(rows, transform.forward(audio[: song.size]))
    assert convergence < ROUND_TRIP_BOUNDS[(n_mels, phase)]
    # Level is kept: the reconstruction's RMS is within 1 dB of the song's.
    assert abs(20 * np.log10(np.sqrt(np.mean(audio**2)) / np.sqrt(np.mean(song**2)))) < 1.0


@pytest.mark.parametrize("n_mels", [0, 128])
def test_pghi_keeps_a_tones_pitch_is_deterministic_and_is_not_griffin_lim(n_mels: int) -> None:
    config = FeatureConfig.for_transform("stft", n_mels=n_mels)
    transform, linear = get_transform(config), get_transform(FeatureConfig.for_transform("stft", n_mels=0))
    t = np.arange(config.sample_rate) / config.sample_rate
    bin_hz = config.sample_rate / config.n_fft
    tone = (0.4 * np.sin(2 * np.pi * 46 * bin_hz * t) + 0.2 * np.sin(2 * np.pi * 92 * bin_hz * t)).astype(
        np.float32
    )
    rows = transform.forward(tone)
    audio = transform.inverse(rows, phase="pghi")
    # Its partials stay where they were (bins 46 and 92, 990 Hz and 1981 Hz; the upper one within a
    # bin: 128 mel bands are 3 bins wide there), the louder one loudest.
    spectrum = linear.forward(audio[: tone.size])[8:-8].mean(axis=0)
    assert int(np.argmax(spectrum)) == 46
    assert abs(int(np.argmax(spectrum[70:])) + 70 - 92) <= (1 if n_mels else 0)
    # Measured 0.025 (linear bins; Griffin-Lim's 32 iterations 0.057) and 0.143 (128 mels; Griffin-Lim
    # 0.096: the mel inversion spreads each partial over several bins, wider than the window's own
    # peak, which PGHI's phase slopes take as given and Griffin-Lim iterates towards a consistent one).
    bound = 0.2 if n_mels else 0.05
    assert spectral_convergence(rows, transform.forward(audio[: tone.size])) < bound
    # Deterministic given the magnitudes (no random start), and not Griffin-Lim's result.
    np.testing.assert_array_equal(transform.inverse(rows, phase="pghi"), audio)
    for other in ("griffin-lim", "pghi-gl"):
        assert np.abs(transform.inverse(rows, phase=other) - audio).max() > 0.05, other


def test_an_unknown_phase_method_is_a_one_line_config_error_naming_it() -> None:
    for name in ("stft", "rfft"):
        transform = get_transform(small_config(name))
        rows = transform.forward(np.zeros(2048, np.float32))
        with pytest.raises(
            ConfigError, match=r"^invalid phase 'chaos': must be one of pghi, pghi-gl, griffin-lim$"
        ):
            transform.inverse(rows, phase="chaos")


def test_stft_frames_are_librosa_frames_and_a_sine_lands_in_its_bin() -> None:
    import librosa

    config = FeatureConfig.for_transform("stft", n_mels=0)
    transform = get_transform(config)
    t = np.arange(22050) / 22050
    frequency = 46 * 22050 / 1024  # on bin 46: no scalloping
    sine = np.sin(2 * np.pi * frequency * t).astype(np.float32)
    rows = transform.forward(sine)
    reference = np.abs(librosa.stft(sine, n_fft=1024, hop_length=256, pad_mode="constant")).T
    window_sum = 512.0  # periodic Hann of 1024 samples
    np.testing.assert_allclose(np.exp(rows / 2)[: reference.shape[0]], reference / window_sum, atol=1e-4)
    assert int(np.argmax(rows[10])) == 46
    assert abs(np.exp(rows[10].max()) - 0.25) < 0.01  # a full-scale sine is 0.25 in power


@pytest.mark.parametrize(("sample_rate", "n_fft", "n_mels"), [(22050, 1024, 128), (16000, 512, 40)])
def test_stft_mel_rows_are_librosas_mel_spectrogram(sample_rate: int, n_fft: int, n_mels: int) -> None:
    """The banded mel products (groups of bands times only the bins they cover), over several
    blocks of frames, give librosa's mel spectrogram of the same frames."""
    import librosa

    config = FeatureConfig.for_transform("stft", sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels)
    signal = (0.2 * np.random.default_rng(3).standard_normal(10 * sample_rate)).astype(np.float32)
    rows = get_transform(config).forward(signal)
    assert rows.shape[0] > 512  # more than one block of frames
    spectrum = librosa.stft(signal, n_fft=n_fft, hop_length=config.hop_length, pad_mode="constant")
    power = np.abs(spectrum[:, : rows.shape[0]]) ** 2 / (n_fft / 2) ** 2  # the window sums to 1
    reference = librosa.feature.melspectrogram(S=power, sr=sample_rate, n_fft=n_fft, n_mels=n_mels).T
    np.testing.assert_allclose(rows, np.log(np.maximum(reference, 1e-10)), atol=2e-4)


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "n_mels"), [(44100, 1024, 128), (22050, 2048, 64), (16000, 512, 40)]
)
def test_the_mel_filterbank_is_librosas(sample_rate: int, n_fft: int, n_mels: int) -> None:
    import librosa
    import scipy.signal

    from tasks.features.transforms import hann, mel_filterbank

    ours = mel_filterbank(sample_rate, n_fft, n_mels)
    reference = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    assert ours.dtype == np.float32 and ours.shape == reference.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-7 * float(reference.max()))
    np.testing.assert_allclose(hann(n_fft), scipy.signal.get_window("hann", n_fft, fftbins=True), atol=1e-12)


@pytest.mark.parametrize("phase", PHASES)
def test_long_stft_inverse_is_segmented_without_an_edge(monkeypatch: pytest.MonkeyPatch, phase: str) -> None:
    import tasks.features.transforms as transforms

    monkeypatch.setattr(transforms, "GRIFFIN_LIM_SEGMENT_FRAMES", 200)
    config = FeatureConfig.for_transform("stft", n_mels=0)
    transform = get_transform(config)
    t = np.arange(3 * 22050) / 22050
    tone = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    rows = transform.forward(tone)
    audio = transform.inverse(rows, phase=phase)
    assert audio.shape == (rows.shape[0] * 256,)
    # Segments 0-200 and 136-259 (frames): across their crossfade (136-200) the envelope stays
    # within 10 % of the level (two independent reconstructions crossfaded dip to 22 % of it).
    envelope = np.sqrt(np.convolve(audio**2, np.ones(512) / 512, mode="same"))
    level = float(np.median(envelope))
    assert abs(level - 0.3 / np.sqrt(2)) < 0.03
    joint = envelope[136 * 256 : 200 * 256]
    assert joint.min() > 0.9 * level and joint.max() < 1.1 * level


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"n_fft": 1000 + 1}, "n_fft 1001"),
        ({"n_fft": 8}, "n_fft 8"),
        ({"hop_length": 0}, "hop_length 0"),
        ({"hop_length": 700}, "hop_length 700"),
        ({"n_mels": 600}, "n_mels 600"),
        ({"n_mels": -1}, "n_mels -1"),
    ],
)
def test_bad_stft_config_is_a_config_error_naming_the_value(values: dict[str, int], named: str) -> None:
    with pytest.raises(ConfigError, match=named.split()[0] + " " + named.split()[1]):
        FeatureConfig.for_transform("stft", **values)


def test_block_transform_ids_do_not_change_with_the_new_fields() -> None:
    # The ids of existing rfft/fft stores (made before stft existed) stay the same: no re-ingest.
    assert FeatureConfig().dataset_id == "rfft-b11025-sr44100-c766d90a3e"
    assert FeatureConfig(transform="fft", block_size=1024).dataset_id == "fft-b1024-sr44100-9dce08b711"
    assert FeatureConfig(n_mels=64).dataset_id == FeatureConfig().dataset_id
    assert (
        FeatureConfig.for_transform("stft").dataset_id
        != FeatureConfig.for_transform("stft", n_mels=64).dataset_id
    )
    assert FeatureConfig.from_dict(
        FeatureConfig.for_transform("stft").to_dict()
    ) == FeatureConfig.for_transform("stft")
