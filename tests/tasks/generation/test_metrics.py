"""Quality metrics of generated audio: level, spectrum, collapse (silence, noise, loop), memorisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.audio.synth import synthesize_song
from tasks.config import FeatureConfig
from tasks.features.transforms import get_transform
from tasks.generation.metrics import (
    LOOP_CORRELATION,
    MEMORISED_SIMILARITY,
    NOISE_FLATNESS,
    SILENCE_DBFS,
    STATIC_VARIATION_DB,
    CopyIndex,
    audio_metrics,
    audio_peak_persistence,
    copy_index,
    longest_copy,
    loop_score,
    nearest_training_similarity,
    peak_persistence,
    power_spectra,
    reference_distribution,
    spectral_centroid,
    spectral_flatness,
)

SR = 44100
BLOCK = 1024


def sine(freq: float, n: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


def song(seed: int = 3, seconds: float = 3.0) -> np.ndarray:
    return synthesize_song(seed=seed, seconds=seconds).mean(axis=1)


def metrics_of(audio: np.ndarray, **kwargs) -> dict:
    return audio_metrics(audio, sample_rate=SR, block_size=BLOCK, **kwargs)


# --- acceptance: collapse is flagged, music is not ---------------------------------------------------


def test_a_block_of_silence_is_collapsed_into_silence() -> None:
    metrics = metrics_of(np.zeros(BLOCK, np.float32))
    assert metrics["collapsed"] == "silence"
    assert metrics["rms_dbfs"] is None  # -inf is not valid JSON
    assert metrics["peak"] == 0.0


def test_a_very_quiet_signal_is_silence() -> None:
    quiet = sine(440.0, SR, amplitude=10 ** ((SILENCE_DBFS - 10) / 20))
    metrics = metrics_of(quiet)
    assert metrics["rms_dbfs"] < SILENCE_DBFS
    assert metrics["collapsed"] == "silence"


def test_a_block_of_white_noise_is_collapsed_into_noise() -> None:
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, BLOCK).astype(np.float32)
    metrics = metrics_of(noise)
    assert metrics["collapsed"] == "noise"
    assert metrics["spectral_flatness"] > NOISE_FLATNESS


def test_seconds_of_white_noise_are_noise_not_a_loop() -> None:
    noise = np.clip(0.3 * np.random.default_rng(1).standard_normal(2 * SR), -1, 1).astype(np.float32)
    metrics = metrics_of(noise)
    assert metrics["collapsed"] == "noise"
    assert metrics["loop_correlation"] < 0.1
    assert metrics["spectral_centroid_hz"] == pytest.approx(SR / 4, rel=0.05)  # flat spectrum: mid band


def test_a_repeating_loop_is_flagged_by_the_loop_score() -> None:
    pattern = song()[20 * BLOCK : 24 * BLOCK]  # four blocks of music, repeated
    metrics = metrics_of(np.tile(pattern, 30))
    assert metrics["loop_correlation"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["loop_lag_blocks"] == 4
    assert metrics["spectral_flatness"] < NOISE_FLATNESS  # not flagged as noise first
    assert metrics["collapsed"] == "loop"


def test_a_held_chord_is_collapsed_into_static() -> None:
    # What a fed-back model decays to: the same spectrum every frame, music-like but frozen.
    chord = sum(sine(f, 3 * SR, amplitude=0.2) for f in (220.0, 277.2, 329.6, 440.0))
    chord = chord + 0.01 * np.random.default_rng(0).standard_normal(chord.size).astype(np.float32)
    metrics = metrics_of(chord)
    assert metrics["spectral_flatness"] < NOISE_FLATNESS and metrics["loop_correlation"] < LOOP_CORRELATION
    assert metrics["variation_db"] < STATIC_VARIATION_DB
    assert metrics["collapsed"] == "static"


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_a_musical_signal_is_not_flagged(seed: int) -> None:
    metrics = metrics_of(song(seed))
    assert metrics["collapsed"] is None, metrics
    assert metrics["rms_dbfs"] > SILENCE_DBFS
    assert metrics["spectral_flatness"] < NOISE_FLATNESS
    assert metrics["loop_correlation"] < LOOP_CORRELATION
    assert metrics["variation_db"] > 2 * STATIC_VARIATION_DB
    assert metrics["seconds"] == pytest.approx(3.0)


# --- the metric values --------------------------------------------------------------------------------


def test_loop_score_finds_the_period_of_identical_blocks() -> None:
    rng = np.random.default_rng(2)
    pattern = rng.standard_normal((3, 64))
    score, lag = loop_score(np.tile(pattern, (8, 1)))
    assert (score, lag) == (pytest.approx(1.0), 3)
    score, _ = loop_score(rng.standard_normal((24, 64)))
    assert score < 0.3


@pytest.mark.parametrize("bin_index", [10, 50, 200])
def test_spectral_centroid_of_a_sine_is_its_frequency(bin_index: int) -> None:
    freq = bin_index * SR / BLOCK  # on a bin: no leakage
    power = power_spectra(sine(freq, 4 * BLOCK).reshape(4, BLOCK))
    centroid = spectral_centroid(power, sample_rate=SR, block_size=BLOCK)
    np.testing.assert_allclose(centroid, freq, rtol=1e-6)
    assert metrics_of(sine(freq, 4 * BLOCK))["spectral_centroid_hz"] == pytest.approx(freq, abs=0.01)


def test_spectral_centroid_of_an_off_bin_sine_is_near_its_frequency() -> None:
    metrics = metrics_of(sine(1000.0, SR))
    assert metrics["spectral_centroid_hz"] == pytest.approx(1000.0, rel=0.1)


def test_spectral_centroid_of_silence_is_zero() -> None:
    power = power_spectra(np.zeros((2, BLOCK)))
    np.testing.assert_array_equal(spectral_centroid(power, sample_rate=SR, block_size=BLOCK), [0.0, 0.0])


def test_flatness_is_one_for_a_flat_spectrum_and_near_zero_for_a_sine() -> None:
    impulse = np.zeros((1, BLOCK))
    impulse[0, 0] = 1.0  # exactly flat power spectrum
    assert spectral_flatness(power_spectra(impulse))[0] == pytest.approx(1.0, abs=1e-9)
    tone = sine(50 * SR / BLOCK, BLOCK).reshape(1, BLOCK)
    assert spectral_flatness(power_spectra(tone))[0] < 1e-6
    assert metrics_of(sine(1000.0, SR))["spectral_flatness"] < 0.05


def test_flatness_of_white_noise_is_that_of_a_periodogram() -> None:
    noise = np.random.default_rng(3).standard_normal((64, BLOCK))
    flatness = spectral_flatness(power_spectra(noise))
    # One periodogram of Gaussian noise: exponential bins, geometric/arithmetic mean = exp(-gamma).
    assert flatness.mean() == pytest.approx(math.exp(-np.euler_gamma), abs=0.03)
    assert flatness.min() > NOISE_FLATNESS


def test_rms_peak_and_clipped_fraction_values() -> None:
    audio = sine(441.0, SR, amplitude=0.5)
    metrics = metrics_of(audio, unclipped_peak=1.7, clipped_fraction=0.125)
    assert metrics["rms_dbfs"] == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)  # -9.03
    assert metrics["peak"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["unclipped_peak"] == 1.7
    assert metrics["clipped_fraction"] == 0.125
    full_scale = np.ones(BLOCK * 2, np.float32) * np.where(np.arange(BLOCK * 2) % 2, 1, -1)
    assert metrics_of(full_scale.astype(np.float32))["rms_dbfs"] == pytest.approx(0.0, abs=1e-6)


def test_audio_shorter_than_a_block_still_gets_metrics() -> None:
    metrics = metrics_of(sine(1000.0, 300))
    assert metrics["seconds"] == pytest.approx(300 / SR)
    assert metrics["rms_dbfs"] == pytest.approx(-9.03, abs=0.3)


def test_z_scores_against_the_reference_distribution() -> None:
    training = song(0).reshape(-1)[: 100 * BLOCK].reshape(100, BLOCK)
    reference = reference_distribution(training, sample_rate=SR)
    assert reference["n_blocks"] == 100
    assert reference["centroid_std"] > 0
    metrics = metrics_of(
        np.clip(0.3 * np.random.default_rng(4).standard_normal(SR), -1, 1), reference=reference
    )
    expected = (metrics["spectral_centroid_hz"] - reference["centroid_mean"]) / reference["centroid_std"]
    assert metrics["spectral_centroid_hz_z"] == pytest.approx(expected, abs=1e-2)
    assert metrics["spectral_centroid_hz_z"] > 3  # noise is far brighter than the music
    assert metrics["spectral_flatness_z"] > 3
    music = metrics_of(song(0), reference=reference)
    assert abs(music["spectral_centroid_hz_z"]) < 1
    assert abs(music["spectral_flatness_z"]) < 2


# --- memorisation -------------------------------------------------------------------------------------


def test_nearest_training_similarity_is_one_for_a_copy_of_a_training_window() -> None:
    rng = np.random.default_rng(5)
    training = rng.standard_normal((200, 96)).astype(np.float32)
    copied = nearest_training_similarity(training[40:48].copy(), training)
    assert copied["mean"] == pytest.approx(1.0, abs=1e-5)
    assert copied["max"] == pytest.approx(1.0, abs=1e-5)
    assert copied["memorised"] is True


def test_nearest_training_similarity_is_low_for_unrelated_data() -> None:
    rng = np.random.default_rng(6)
    training = rng.standard_normal((200, 96)).astype(np.float32)
    unrelated = nearest_training_similarity(rng.standard_normal((8, 96)), training)
    assert unrelated["mean"] < 0.5
    assert unrelated["mean"] < MEMORISED_SIMILARITY
    assert unrelated["memorised"] is False


def test_nearest_training_similarity_ignores_scale_and_half_copies_are_in_between() -> None:
    rng = np.random.default_rng(7)
    training = rng.standard_normal((100, 64))
    scaled = nearest_training_similarity(3.0 * training[:4], training)
    assert scaled["mean"] == pytest.approx(1.0, abs=1e-6)
    mixed = nearest_training_similarity(
        np.concatenate([training[:4], rng.standard_normal((4, 64))]), training
    )
    assert 0.5 < mixed["mean"] < 0.8
    assert mixed["max"] == pytest.approx(1.0, abs=1e-6)
    assert mixed["memorised"] is False


# --- memorisation: the longest span copied from one training song -----------------------------------

# A stft-like layout (the default's log-mel frames, 11.6 ms) and a block layout (rfft blocks of 0.1 s).
COPY_LAYOUTS = {
    "stft": FeatureConfig.for_transform("stft"),
    "rfft": FeatureConfig(transform="rfft", sample_rate=22050, block_size=2205),
}


@pytest.fixture(scope="module", params=sorted(COPY_LAYOUTS))
def copies(request: pytest.FixtureRequest) -> tuple[FeatureConfig, CopyIndex, dict[str, np.ndarray]]:
    """Four demo songs indexed as training songs, and two songs never trained on, as feature rows."""
    features = COPY_LAYOUTS[request.param]
    transform = get_transform(features)

    def rows(seed: int, seconds: float) -> np.ndarray:
        audio = synthesize_song(seed=seed, seconds=seconds, sample_rate=features.sample_rate).mean(axis=1)
        return transform.forward(audio)

    songs = {f"train-{seed}": rows(seed, 8.0) for seed in range(4)} | {
        f"unseen-{seed}": rows(seed, 8.0) for seed in (100, 101)
    }
    index = copy_index([(name, songs[name]) for name in songs if name.startswith("train")], features)
    return features, index, songs


def seconds_to_rows(features: FeatureConfig, seconds: float) -> int:
    return round(seconds / features.block_seconds)


def test_an_excerpt_of_a_training_song_copies_its_whole_length(copies) -> None:
    features, index, songs = copies
    start, length = seconds_to_rows(features, 2.0), seconds_to_rows(features, 5.0)
    copied = longest_copy(songs["train-2"][start : start + length], index)
    assert copied["seconds"] == pytest.approx(5.0, abs=0.1 + features.block_seconds)
    assert copied["song_id"] == "train-2"
    assert copied["clip_start_seconds"] == pytest.approx(0.0, abs=0.1)
    assert copied["song_start_seconds"] == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize("song", ["unseen-100", "unseen-101"])
def test_a_song_never_trained_on_copies_nothing_that_lasts(copies, song: str) -> None:
    """A validation song's continuation (after its first 2 s) and another song: the demo songs share
    one synthesiser, so a few units of the same chord match by chance, far under a second."""
    features, index, songs = copies
    copied = longest_copy(songs[song][seconds_to_rows(features, 2.0) :], index)
    assert copied["seconds"] < 0.6
    assert copied["song_id"] is None


def test_a_loop_of_a_short_training_passage_copies_the_passage_not_the_clip(copies) -> None:
    features, index, songs = copies
    start, length = seconds_to_rows(features, 3.0), seconds_to_rows(features, 1.2)
    loop = np.tile(songs["train-1"][start : start + length], (5, 1))
    copied = longest_copy(loop, index)
    assert 1.0 <= copied["seconds"] <= 1.2 + 0.1
    assert copied["song_id"] == "train-1"


def test_noise_and_silence_copy_nothing(copies) -> None:
    features, index, _ = copies
    transform = get_transform(features)
    noise = np.random.default_rng(0).normal(0.0, 0.3, 5 * features.sample_rate).astype(np.float32)
    assert longest_copy(transform.forward(noise), index)["seconds"] == 0.0
    rate = features.sample_rate
    music = synthesize_song(seed=3, seconds=4.0, sample_rate=rate).mean(axis=1)
    silence_index = copy_index(
        [("quiet-end", transform.forward(np.r_[music, np.zeros(2 * rate, np.float32)]))], features
    )
    silence = transform.forward(np.zeros(2 * rate, np.float32))
    assert longest_copy(silence, silence_index)["seconds"] == 0.0


@pytest.mark.parametrize("layout", sorted(COPY_LAYOUTS))
def test_a_quiet_clip_does_not_copy_the_hiss_at_the_end_of_a_song(layout: str) -> None:
    """A clip that fades to a quiet hiss matched, unit after unit, the hiss a training song ends with
    (on wesnoth-1.16-music three such clips "copied" 5-7 s of two songs' last seconds). The hiss is
    1.5 s of 33.5 s of training audio, 30 dB down: above the silence floor (40 dB under the median),
    under the quietest twentieth of the training levels."""
    features = COPY_LAYOUTS[layout]
    transform, rate = get_transform(features), features.sample_rate
    rng = np.random.default_rng(0)

    def hiss(seconds: float) -> np.ndarray:
        return (rng.normal(0.0, 10 ** (-30 / 20), int(seconds * rate))).astype(np.float32)

    songs = []
    for seed in range(4):
        music = synthesize_song(seed=seed, seconds=8.0, sample_rate=rate).mean(axis=1)
        tail = hiss(1.5) if seed == 0 else np.zeros(0, np.float32)
        songs.append((f"train-{seed}", transform.forward(np.r_[music, tail])))
    index = copy_index(songs, features)
    assert longest_copy(transform.forward(hiss(4.0)), index)["seconds"] == 0.0
    excerpt = songs[0][1][: seconds_to_rows(features, 3.0)]
    assert longest_copy(excerpt, index)["seconds"] == pytest.approx(3.0, abs=0.1 + features.block_seconds)


def test_a_copy_under_sampling_noise_is_still_one_copy(copies) -> None:
    """Nearly all of a training song's rows perturbed as a model that memorised them might sample them: stft
    log-power rows with noise of half their spread in every band; blocks with every bin's phase
    drawn at random and its magnitude off by ~3 dB."""
    features, index, songs = copies
    excerpt = songs["train-0"][: seconds_to_rows(features, 4.0)].astype(np.float64)
    rng = np.random.default_rng(1)
    if features.transform == "stft":
        noisy = excerpt + rng.normal(0.0, 0.5, excerpt.shape) * excerpt.std(axis=0)
    else:
        half = excerpt.shape[1] // 2
        spectrum = excerpt[:, :half] + 1j * excerpt[:, half:]
        spectrum = spectrum * np.exp(
            rng.normal(0.0, 0.35, spectrum.shape) + 2j * np.pi * rng.random(spectrum.shape)
        )
        noisy = np.concatenate([spectrum.real, spectrum.imag], axis=1)
    copied = longest_copy(noisy.astype(np.float32), index)
    assert copied["seconds"] >= 3.0 and copied["song_id"] == "train-0"


def test_the_index_says_what_it_searched() -> None:
    features = COPY_LAYOUTS["rfft"]
    rows = get_transform(features).forward(song(1, 3.0))
    index = copy_index([("a", rows), ("b", rows)], features, training_songs=5, training_seconds=60.0)
    searched = index.searched()
    assert (searched["songs"], searched["training_songs"], searched["training_seconds"]) == (2, 5, 60.0)
    assert searched["seconds"] == pytest.approx(2 * rows.shape[0] * features.block_seconds, abs=0.1)
    assert searched["lower_bound"] is True
    assert copy_index([("a", rows)], features).searched()["lower_bound"] is False


def test_peak_persistence_orders_held_notes_short_notes_and_noise() -> None:
    """How long partials last (audio_peak_persistence): a held tone the whole clip, 100-ms notes about
    their length, white noise almost nothing (measured: 2.9 s, 0.13 s, 0.02 s)."""
    rate = 22050
    rng = np.random.default_rng(0)
    t = np.arange(3 * rate) / rate
    held = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    notes = np.concatenate(
        [0.3 * np.sin(2 * np.pi * f * np.arange(rate // 10) / rate) for f in rng.uniform(200, 2000, 30)]
    ).astype(np.float32)
    noise = (0.1 * rng.standard_normal(3 * rate)).astype(np.float32)
    seconds = [audio_peak_persistence(audio, sample_rate=rate) for audio in (held, notes, noise)]
    assert seconds[0] > 2.5
    assert 0.05 < seconds[1] < 0.2
    assert seconds[2] < 0.05
    # Runs on a hand-made spectrogram: a peak held 5 frames that moves one bin, and one of 1 frame.
    power = np.full((6, 40), -60.0)
    for frame, column in enumerate([10, 10, 11, 11, 12]):
        power[frame, column] = 0.0
    power[5, 30] = 0.0
    # Per peak, its run's length: five peaks of a 5-frame run and one of 1 frame.
    assert peak_persistence(power, frame_seconds=1.0) == (5 * 5 + 1) / 6
