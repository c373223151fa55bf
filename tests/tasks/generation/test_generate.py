"""Generation at library level: clips of the requested length, seeds, the stateful step model,
bad input named in one message, and no half-written run left as if complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_BLOCK
from helpers import write_periodic_songs

from tasks.audio.encode import encode_audio
from tasks.dataset.repository import dataset_dir
from tasks.errors import ConfigError, StoreError
from tasks.features.stream import decode_features
from tasks.generation.generate import (
    MAX_SECONDS,
    generate_blocks,
    generate_blocks_rerun,
    generate_run,
    seed_blocks,
    training_copy_index,
)
from tasks.generation.runs import METRICS_FILE
from tasks.model.repository import CARD_FILE, MODEL_FILE, ModelMismatchError, load_trained_model, model_dir
from tasks.status import store_status
from tasks.store.store import open_store

SR = 44100
BLOCK_SECONDS = TINY_BLOCK / SR
METRIC_KEYS = {
    "seconds",
    "rms_dbfs",
    "peak",
    "unclipped_peak",
    "clipped_fraction",
    "spectral_centroid_hz",
    "spectral_flatness",
    "loop_correlation",
    "loop_lag_blocks",
    "variation_db",
    "collapsed",
    "spectral_centroid_hz_z",
    "spectral_flatness_z",
    "nearest_training",
    "longest_copy_seconds",
    "longest_copy",
}


def copy_store(source: str, destination: Path) -> str:
    shutil.copytree(source, destination)
    return str(destination)


@pytest.fixture
def model_store(tiny_model: tuple[str, str], tmp_path: Path) -> tuple[str, str]:
    """A private copy of the tiny model's store: ``(store_url, model_id)``."""
    return copy_store(tiny_model[0], tmp_path / "store"), tiny_model[1]


@pytest.fixture(scope="module")
def two_clips(tiny_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of two 1 s clips on a copy of the tiny model's store (shared by the acceptance tests)."""
    store = copy_store(tiny_model[0], tmp_path_factory.mktemp("gen") / "store")
    report = generate_run(open_store(store), seconds=1.0, count=2, run_id="two-clips")
    return {
        "store": store,
        "model_id": tiny_model[1],
        "report": report,
        "dir": Path(store, "generated", "two-clips"),
    }


def read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    """Samples as float in [-1, 1), rate, channels, sample width in bytes."""
    with wave.open(str(path), "rb") as reader:
        frames = reader.readframes(reader.getnframes())
        rate, channels, width = reader.getframerate(), reader.getnchannels(), reader.getsampwidth()
    return np.frombuffer(frames, "<i2").astype(np.float64) / 32768.0, rate, channels, width


# --- acceptance ---------------------------------------------------------------------------------------


def test_wav_has_the_requested_length_and_is_valid_audio(two_clips: dict[str, Any]) -> None:
    from pydub import AudioSegment

    for name in ("clip-01", "clip-02"):
        path = two_clips["dir"] / f"{name}.wav"
        samples, rate, channels, width = read_wav(path)
        assert (rate, channels, width) == (SR, 1, 2)
        assert abs(samples.shape[0] - 1.0 * SR) <= TINY_BLOCK
        assert samples.shape[0] % TINY_BLOCK == 0
        assert np.isfinite(samples).all()
        assert samples.min() >= -1.0 and samples.max() <= 1.0
        assert np.abs(samples).max() > 0.01, "the clip is silent"
        segment = AudioSegment.from_file(path)
        assert (segment.frame_rate, segment.channels, segment.sample_width) == (SR, 1, 2)
        assert segment.frame_count() == samples.shape[0]
        assert abs(len(segment) / 1000 - 1.0) <= BLOCK_SECONDS


def test_mp3_and_png_exist_and_decode(two_clips: dict[str, Any]) -> None:
    from pydub import AudioSegment

    for name in ("clip-01", "clip-02"):
        mp3, png = two_clips["dir"] / f"{name}.mp3", two_clips["dir"] / f"{name}.png"
        assert mp3.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 1000
        segment = AudioSegment.from_file(mp3)
        assert abs(len(segment) / 1000 - 1.0) < 0.2  # mp3 padding is a few ms


def test_metrics_json_holds_the_report_and_the_metrics(two_clips: dict[str, Any]) -> None:
    report = two_clips["report"]
    on_disk = json.loads((two_clips["dir"] / METRICS_FILE).read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert (report["run_id"], report["model_id"], report["count"]) == ("two-clips", two_clips["model_id"], 2)
    n_blocks = round(1.0 / BLOCK_SECONDS)
    assert report["seconds"] == pytest.approx(n_blocks * BLOCK_SECONDS)
    assert [clip["name"] for clip in report["clips"]] == ["clip-01", "clip-02"]
    for clip in report["clips"]:
        assert clip["files"] == [f"{clip['name']}.wav", f"{clip['name']}.mp3", f"{clip['name']}.png"]
        assert set(clip["metrics"]) == METRIC_KEYS
        assert set(clip["quality"]) >= {"quality", "d_gen", "d_real", "d_noise", "lufs", "onset_rate"}
        samples, *_ = read_wav(two_clips["dir"] / f"{clip['name']}.wav")
        metrics = clip["metrics"]
        assert metrics["seconds"] == pytest.approx(samples.shape[0] / SR)
        rms = float(np.sqrt(np.mean(samples**2)))
        assert metrics["rms_dbfs"] == pytest.approx(20 * np.log10(rms), abs=0.05)
        assert metrics["peak"] == pytest.approx(np.abs(samples).max(), abs=1e-3)
        assert metrics["collapsed"] in (None, "silence", "noise", "loop", "static")
        assert 0.0 <= metrics["nearest_training"]["mean"] <= metrics["nearest_training"]["max"] <= 1.0 + 1e-6
        assert 0.0 <= metrics["longest_copy_seconds"] <= metrics["seconds"] + 1e-6
    assert sorted(os.listdir(two_clips["dir"])) == sorted(
        [METRICS_FILE] + [file for clip in report["clips"] for file in clip["files"]]
    )
    assert report["location"].endswith("generated/two-clips")


def test_metrics_json_carries_the_longest_copied_span(two_clips: dict[str, Any]) -> None:
    report = two_clips["report"]
    card = json.loads(Path(two_clips["store"], "models", two_clips["model_id"], CARD_FILE).read_text())
    memorisation = report["memorisation"]
    copied = [clip["metrics"]["longest_copy_seconds"] for clip in report["clips"]]
    assert memorisation["longest_copy_seconds"] == max(copied)
    assert memorisation["clip"] in {clip["name"] for clip in report["clips"]}
    searched = memorisation["searched"]
    assert searched["songs"] == searched["training_songs"] == len(card["train_songs"])
    assert searched["lower_bound"] is False
    assert searched["seconds"] == pytest.approx(searched["training_seconds"]) and searched["seconds"] > 0


def test_a_copy_of_a_training_song_is_found_in_the_store(model_store: tuple[str, str], loaded: Any) -> None:
    """The index holds the model's training songs as stored: one of them, as a clip, is copied whole;
    with a budget under the training set, whole songs are searched and the result is a lower bound."""
    from tasks.dataset.repository import read_rows, read_song
    from tasks.generation.metrics import longest_copy

    store = open_store(model_store[0])
    dataset_id = loaded.card["dataset_id"]
    rows = [
        row for row in read_rows(store, dataset_id, ok_only=True) if row.song_id in loaded.card["train_songs"]
    ]
    index = training_copy_index(store, loaded)
    assert sorted(index.song_ids) == sorted(row.song_id for row in rows)
    song = read_song(store, dataset_id, rows[0])
    copied = longest_copy(song, index)
    assert copied["seconds"] == pytest.approx(song.shape[0] * BLOCK_SECONDS, abs=0.1)
    sampled = training_copy_index(store, loaded, max_seconds=rows[0].n_blocks * BLOCK_SECONDS)
    assert len(sampled.song_ids) == 1 and sampled.searched()["lower_bound"] is True


def test_status_lists_the_generated_run(two_clips: dict[str, Any]) -> None:
    (listed,) = store_status(open_store(two_clips["store"]))["generated"]
    assert listed["run_id"] == "two-clips"
    assert listed["model_id"] == two_clips["model_id"]
    assert listed["count"] == 2
    assert len(listed["files"]) == 6


def test_default_seed_is_a_validation_song_not_a_training_song(two_clips: dict[str, Any]) -> None:
    card = json.loads(Path(two_clips["store"], "models", two_clips["model_id"], CARD_FILE).read_text())
    assert two_clips["report"]["seed"] == "validation"
    for clip in two_clips["report"]["clips"]:
        kind, _, song = clip["seed"].partition(":")
        assert kind == "validation"
        assert song in card["val_songs"]
        assert song not in card["train_songs"]


def test_a_clip_shorter_than_a_block_is_one_block(model_store: tuple[str, str]) -> None:
    report = generate_run(open_store(model_store[0]), seconds=0.001, run_id="tiny")
    samples, *_ = read_wav(Path(model_store[0], "generated", "tiny", "clip-01.wav"))
    assert samples.shape[0] == TINY_BLOCK
    assert report["seconds"] == pytest.approx(BLOCK_SECONDS)


# --- the stateful step model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tiny_model: tuple[str, str]) -> Any:
    return load_trained_model(open_store(tiny_model[0]), tiny_model[1])


def test_stateful_generation_matches_rerunning_the_whole_sequence(
    tiny_model: tuple[str, str], loaded: Any
) -> None:
    seed, _ = seed_blocks(open_store(tiny_model[0]), loaded)
    stateful = generate_blocks(loaded.model, seed, 6)
    rerun = generate_blocks_rerun(loaded.model, seed, 6)
    assert stateful.shape == rerun.shape == (6, loaded.features.n_features)
    np.testing.assert_allclose(stateful, rerun, rtol=1e-4, atol=1e-4)
    assert not np.allclose(stateful[0], stateful[1]), "the output does not depend on the fed-back block"


def test_numpy_steps_match_keras_for_the_spectral_model(stft_model: tuple[str, str]) -> None:
    from tasks.generation.generate import NumpyStepModel
    from tasks.model.network import sample_step

    store = open_store(stft_model[0])
    loaded = load_trained_model(store, stft_model[1])
    seed, _ = seed_blocks(store, loaded)
    assert seed.shape == (loaded.config.seq_len, 4 * loaded.features.n_features)
    expected = loaded.model(seed[None], training=False).numpy()[0]
    stepper = NumpyStepModel(loaded.model)
    np.testing.assert_allclose(stepper.run(seed[:-1]), expected[-2], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stepper.run(seed[-1:]), expected[-1], rtol=1e-4, atol=1e-4)  # state carried
    # Sampling: reproducible by its generator; temperature 0 is a component's mean.
    draw = [
        sample_step(expected[-1], loaded.config, temperature=0.7, rng=np.random.default_rng(5)) for _ in "ab"
    ]
    np.testing.assert_array_equal(*draw)
    mean = sample_step(expected[-1], loaded.config, temperature=0.0, rng=np.random.default_rng(5))
    assert not np.allclose(mean, draw[0])
    generated = generate_blocks(loaded.model, seed, 7, temperature=0.7, config=loaded.config)
    assert generated.shape == (7, seed.shape[1]) and np.isfinite(generated).all()

    # Sampling variants run the same path: smooth-frames is the default, independent (the one before) differs.
    def blocks(**options: Any) -> np.ndarray:
        rng = np.random.default_rng(3)
        return generate_blocks(
            loaded.model, seed, 7, temperature=0.7, rng=rng, config=loaded.config, **options
        )

    np.testing.assert_array_equal(blocks(sampling="smooth-frames"), blocks())
    assert np.abs(blocks(sampling="independent")[1:] - blocks()[1:]).max() > 1e-3


def test_the_phase_method_reaches_the_inverse_and_is_recorded(
    stft_model: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.config import DEFAULT_PHASE
    from tasks.features.transforms import SpectralTransform

    store = open_store(copy_store(stft_model[0], tmp_path / "store"))
    used: list[str | None] = []
    inverse = SpectralTransform.inverse

    def recording(self: SpectralTransform, rows: np.ndarray, **options: Any) -> np.ndarray:
        used.append(options.get("phase"))
        return inverse(self, rows, **options)

    monkeypatch.setattr(SpectralTransform, "inverse", recording)
    report = generate_run(store, seconds=0.5, run_id="by-pghi", phase="pghi")
    # The clip and the ceiling's round trip of the real continuation, both by PGHI.
    assert used.count("pghi") == len(used) >= 2, used
    assert report["phase"] == "pghi"
    assert json.loads(Path(store.url, "generated", "by-pghi", METRICS_FILE).read_text())["phase"] == "pghi"
    used.clear()
    assert generate_run(store, seconds=0.5, run_id="by-default")["phase"] == DEFAULT_PHASE
    assert used.count(DEFAULT_PHASE) == len(used) >= 2, used


def test_temperature_changes_the_output_and_is_reproducible(tiny_model: tuple[str, str], loaded: Any) -> None:
    seed, _ = seed_blocks(open_store(tiny_model[0]), loaded)
    plain = generate_blocks(loaded.model, seed, 5)
    hot = generate_blocks(loaded.model, seed, 5, temperature=0.5, rng=np.random.default_rng(1))
    again = generate_blocks(loaded.model, seed, 5, temperature=0.5, rng=np.random.default_rng(1))
    other = generate_blocks(loaded.model, seed, 5, temperature=0.5, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(hot, again)
    np.testing.assert_allclose(hot[0], plain[0], rtol=1e-5, atol=1e-5)  # noise enters with the feedback
    assert np.abs(hot[1:] - plain[1:]).max() > 1e-3
    assert np.abs(hot[1:] - other[1:]).max() > 1e-3


def test_temperature_in_a_run_is_reproducible_with_the_same_random_seed(model_store: tuple[str, str]) -> None:
    store = open_store(model_store[0])

    def clip(run_id: str, **options: Any) -> bytes:
        generate_run(store, seconds=0.3, run_id=run_id, **options)
        return Path(model_store[0], "generated", run_id, "clip-01.wav").read_bytes()

    hot = clip("hot", temperature=0.8, random_seed=7)
    assert clip("hot-again", temperature=0.8, random_seed=7) == hot
    assert clip("hot-other", temperature=0.8, random_seed=8) != hot
    assert clip("cold", temperature=0.0, random_seed=7) != hot
    report = json.loads(Path(model_store[0], "generated", "hot", METRICS_FILE).read_text())
    assert (report["temperature"], report["random_seed"], report["sampling"]) == (0.8, 7, "smooth-frames")


# --- seeds ----------------------------------------------------------------------------------------------


def test_seed_from_an_audio_file(model_store: tuple[str, str], loaded: Any, tmp_path: Path) -> None:
    (song,) = write_periodic_songs(tmp_path / "seed", n_songs=1, seconds=0.5, block_size=TINY_BLOCK)
    seq_len = loaded.config.seq_len
    blocks, source = seed_blocks(open_store(model_store[0]), loaded, kind="audio", seed_audio=str(song))
    assert source == f"audio:{song}"
    features, _, _ = decode_features(str(song), features=loaded.features)
    np.testing.assert_allclose(blocks, loaded.normalizer.apply(features[:seq_len]), rtol=1e-6, atol=1e-6)

    report = generate_run(open_store(model_store[0]), seconds=0.2, seed_audio=str(song), run_id="from-file")
    assert report["seed"] == "audio"  # a seed file implies the audio seed
    assert report["clips"][0]["seed"] == f"audio:{song}"
    assert Path(model_store[0], "generated", "from-file", "clip-01.wav").stat().st_size > 0


def test_noise_seed(model_store: tuple[str, str], loaded: Any) -> None:
    store = open_store(model_store[0])
    blocks, source = seed_blocks(store, loaded, kind="noise", rng=np.random.default_rng(3))
    assert source == "noise"
    assert blocks.shape == (loaded.config.seq_len, loaded.features.n_features)
    assert abs(float(blocks.mean())) < 0.05 and float(blocks.std()) == pytest.approx(1.0, abs=0.05)
    again, _ = seed_blocks(store, loaded, kind="noise", rng=np.random.default_rng(3))
    np.testing.assert_array_equal(blocks, again)
    report = generate_run(store, seconds=0.2, seed="noise", run_id="noisy")
    assert [clip["seed"] for clip in report["clips"]] == ["noise"]


def test_validation_seed_is_the_start_of_a_validation_song(tiny_model: tuple[str, str], loaded: Any) -> None:
    from tasks.dataset.catalog import read_catalog
    from tasks.dataset.shards import read_blocks

    store = open_store(tiny_model[0])
    blocks, source = seed_blocks(store, loaded)
    song = source.removeprefix("validation:")
    assert song in loaded.card["val_songs"]
    directory = dataset_dir(loaded.card["dataset_id"])
    (row,) = [row for row in read_catalog(store, directory) if row.song_id == song]
    expected = read_blocks(store, directory, row.shard, offset=row.offset, n_blocks=loaded.config.seq_len)
    np.testing.assert_allclose(blocks, loaded.normalizer.apply(expected), rtol=1e-6, atol=1e-6)


def test_unknown_seed_kind_is_named(tiny_model: tuple[str, str], loaded: Any) -> None:
    with pytest.raises(ConfigError, match="'chaos'"):
        seed_blocks(open_store(tiny_model[0]), loaded, kind="chaos")


# --- bad input ------------------------------------------------------------------------------------------


def test_no_model_in_the_store(tiny_dataset: tuple[str, str], tmp_path: Path) -> None:
    store = copy_store(tiny_dataset[0], tmp_path / "store")
    with pytest.raises(ConfigError, match="no trained model") as raised:
        generate_run(open_store(store), seconds=1.0)
    assert store in str(raised.value)
    assert not Path(store, "generated").exists()


def test_unknown_model_id_is_named(model_store: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match="'no-such-model'") as raised:
        generate_run(open_store(model_store[0]), model_id="no-such-model", seconds=1.0)
    assert model_store[1] in str(raised.value)  # and says what there is


def test_tampered_weights_do_not_match_the_card(model_store: tuple[str, str]) -> None:
    store, model_id = model_store
    weights = Path(store, model_dir(model_id), MODEL_FILE)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelMismatchError) as raised:
        generate_run(open_store(store), seconds=1.0)
    message = str(raised.value)
    assert model_id in message and MODEL_FILE in message
    assert hashlib.sha256(bytes(data)).hexdigest()[:12] in message
    assert not Path(store, "generated").exists()


def test_card_naming_other_weights_is_a_mismatch(model_store: tuple[str, str]) -> None:
    store, model_id = model_store
    card_path = Path(store, model_dir(model_id), CARD_FILE)
    card = json.loads(card_path.read_text())
    card["weights_sha256"] = "ab" * 32
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelMismatchError, match="abababababab") as raised:
        generate_run(open_store(store), model_id=model_id, seconds=1.0)
    assert model_id in str(raised.value)


def test_model_whose_dataset_is_gone_is_a_mismatch(model_store: tuple[str, str]) -> None:
    store, model_id = model_store
    dataset_id = json.loads(Path(store, model_dir(model_id), CARD_FILE).read_text())["dataset_id"]
    shutil.rmtree(Path(store, dataset_dir(dataset_id)))
    with pytest.raises(ModelMismatchError, match=dataset_id):
        generate_run(open_store(store), seconds=1.0)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"seconds": 0}, "seconds 0"),
        ({"seconds": -2.5}, "-2.5"),
        ({"seconds": MAX_SECONDS * 10}, repr(MAX_SECONDS * 10)),
        ({"seconds": float("nan")}, "nan"),
        ({"count": 0}, "count 0"),
        ({"count": 101}, "count 101"),
        ({"temperature": -1.0}, "-1.0"),
        ({"sampling": "chaos"}, "sampling 'chaos'"),
        ({"phase": "chaos"}, "phase 'chaos'"),
    ],
)
def test_bad_options_are_named(model_store: tuple[str, str], options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        generate_run(open_store(model_store[0]), **{"seconds": 1.0, **options})
    assert fragment in str(raised.value)
    assert not Path(model_store[0], "generated").exists()


def test_corrupt_seed_audio_is_named(model_store: tuple[str, str], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" + os.urandom(2000))
    with pytest.raises(ConfigError) as raised:
        generate_run(open_store(model_store[0]), seconds=1.0, seed_audio=str(corrupt))
    assert str(corrupt) in str(raised.value)


def test_seed_audio_shorter_than_the_model_window_is_named(
    model_store: tuple[str, str], loaded: Any, tmp_path: Path
) -> None:
    seq_len = loaded.config.seq_len
    short = tmp_path / "short.wav"
    tone = 0.5 * np.sin(np.arange((seq_len - 3) * TINY_BLOCK) / 5.0).astype(np.float32)
    short.write_bytes(encode_audio(tone, sample_rate=SR, format="wav"))
    with pytest.raises(ConfigError) as raised:
        generate_run(open_store(model_store[0]), seconds=1.0, seed_audio=str(short))
    message = str(raised.value)
    assert str(short) in message
    assert f"has {seq_len - 3} blocks" in message and f"needs {seq_len}" in message


def test_store_that_is_a_file_is_unwritable(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("not a store")
    with pytest.raises(StoreError) as raised:
        generate_run(open_store(str(target)), seconds=1.0)
    assert str(target) in str(raised.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_read_only_store_is_unwritable(model_store: tuple[str, str]) -> None:
    store = Path(model_store[0])
    store.chmod(0o555)
    try:
        with pytest.raises(StoreError) as raised:
            generate_run(open_store(str(store)), seconds=1.0)
        assert str(store) in str(raised.value)
    finally:
        store.chmod(0o755)


def test_failure_mid_run_leaves_no_complete_looking_run(
    model_store: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tasks.generation.generate

    store = model_store[0]
    real = tasks.generation.generate.spectrogram_png
    calls = []

    def failing_on_second_clip(*args: Any, **kwargs: Any) -> bytes:
        calls.append(kwargs.get("title"))
        if len(calls) == 2:
            raise OSError("disk full while writing clip-02.png")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks.generation.generate, "spectrogram_png", failing_on_second_clip)
    with pytest.raises(OSError, match="disk full"):
        generate_run(open_store(store), seconds=0.2, count=2, run_id="broken")

    run = Path(store, "generated", "broken")
    assert (run / "clip-01.wav").exists(), "the failure was not mid-run"
    assert not (run / METRICS_FILE).exists()
    assert store_status(open_store(store))["generated"] == []

    from musicflow.cli import main

    capsys.readouterr()
    main(["status", "--store", store, "--json"])
    assert json.loads(capsys.readouterr().out)["generated"] == []


def test_failure_in_the_encoder_leaves_no_metrics(
    model_store: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.audio.encode

    store = model_store[0]
    real = tasks.audio.encode.encode_audio
    calls = []

    def failing_mp3(audio: np.ndarray, **kwargs: Any) -> bytes:
        calls.append(kwargs.get("format"))
        if kwargs.get("format") == "mp3":
            raise RuntimeError("lame crashed")
        return real(audio, **kwargs)

    monkeypatch.setattr(tasks.audio.encode, "encode_audio", failing_mp3)
    with pytest.raises(RuntimeError, match="lame crashed"):
        generate_run(open_store(store), seconds=0.2, run_id="no-mp3")
    assert calls == ["wav", "mp3"]
    assert not Path(store, "generated", "no-mp3", METRICS_FILE).exists()
    assert store_status(open_store(store))["generated"] == []


def test_output_location_blocked_by_a_file(model_store: tuple[str, str]) -> None:
    store = model_store[0]
    Path(store, "generated").write_text("in the way")
    with pytest.raises(StoreError) as raised:
        generate_run(open_store(store), seconds=0.2, run_id="blocked")
    assert str(Path(store, "generated", "blocked")) in str(raised.value)
    assert Path(store, "generated").read_text() == "in the way"


def test_to_audio_inverts_with_one_blas_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two BLAS threads made a clip's inverse cost 0.38 CPU s instead of 0.27 for the same wall time:
    the inverse runs under one, as the model's steps do."""
    from types import SimpleNamespace

    from threadpoolctl import threadpool_info

    import tasks.generation.generate as generate

    seen: list[int] = []

    class Recording:
        def inverse(self, rows: np.ndarray, *, phase: str) -> np.ndarray:
            seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
            return np.zeros(rows.shape[0] * 4, np.float32)

    monkeypatch.setattr(generate, "get_transform", lambda features: Recording())
    loaded = SimpleNamespace(
        features=None, normalizer=SimpleNamespace(invert=lambda rows: rows), model_id="m"
    )
    audio, peak, clipped = generate.to_audio(np.zeros((8, 3), np.float32), loaded)  # type: ignore[arg-type]
    assert audio.shape == (32,) and peak == 0.0 and clipped == 0.0
    assert seen and set(seen) == {1}
