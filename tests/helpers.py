"""Helpers shared by the flow and CLI tests: bad input files and store consistency checks."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from flows import prefect_tasks
from tasks.audio.encode import encode_audio
from tasks.config import IngestConfig
from tasks.dataset.catalog import read_catalog
from tasks.dataset.repository import commit_batch, dataset_dir, read_stats
from tasks.dataset.shards import read_blocks
from tasks.dataset.stats import FeatureStats, merge_all
from tasks.ingest.plan import make_batches
from tasks.ingest.worker import ingest_batch
from tasks.store.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def copy_songs(songs: list[Path], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(song, directory / song.name)) for song in songs]


def write_bad_inputs(directory: Path, long_song: Path) -> dict[str, str]:
    """Write each kind of bad input; returns ``{file name: expected error fragment}``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "empty.mp3").write_bytes(b"")
    (directory / "notes.mp3").write_text("this is not audio\n" * 20)
    data = long_song.read_bytes()
    (directory / "truncated.mp3").write_bytes(data[: int(len(data) * 0.4)])
    (directory / "silence.mp3").write_bytes(encode_audio(np.zeros(44100 * 2, np.float32), sample_rate=44100))
    tone = 0.5 * np.sin(np.arange(4410) / 5.0).astype(np.float32)
    (directory / "short.wav").write_bytes(encode_audio(tone, sample_rate=44100, format="wav"))
    return {
        "empty.mp3": "empty",
        "notes.mp3": "",
        "truncated.mp3": "truncated",
        "silence.mp3": "silent",
        "short.wav": "too short",
    }


def assert_store_consistent(store_url: str, dataset_id: str) -> None:
    """Every song once; every ok row readable from a shard; stats equal a recomputation."""
    store = open_store(store_url)
    directory = dataset_dir(dataset_id)
    rows = read_catalog(store, directory)
    ids = [row.song_id for row in rows]
    assert len(ids) == len(set(ids)), "a song is in the catalog twice"
    recomputed = []
    for row in rows:
        if row.ok:
            assert row.shard and store.exists(directory, row.shard), f"missing shard {row.shard}"
            blocks = read_blocks(store, directory, row.shard, offset=row.offset, n_blocks=row.n_blocks)
            assert blocks.shape[0] == row.n_blocks
            assert np.isfinite(blocks).all()
            recomputed.append(FeatureStats.from_features(blocks))
        else:
            assert row.shard is None and row.error
    stats = read_stats(store, dataset_id)
    expected = merge_all(recomputed, stats.n_features)
    assert stats.count == expected.count == sum(row.n_blocks for row in rows if row.ok)
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.std, expected.std, rtol=1e-5, atol=1e-5)


def ingest_direct(source: str | Path, store_url: str, config: IngestConfig) -> str:
    """Ingest without Prefect or Dask (the flow's steps, in this process); returns the dataset id."""
    dataset_id, plan = prefect_tasks.plan_ingest_task.fn(str(source), store_url, config)
    store = open_store(store_url)
    for batch in make_batches(plan.todo, batch_bytes=int(config.batch_mb * 2**20)):
        result = ingest_batch(batch, store_url=store_url, dataset_id=dataset_id, config=config)
        commit_batch(store, dataset_id, result)
    return dataset_id


def write_periodic_songs(
    directory: Path, *, n_songs: int, seconds: float, block_size: int, sample_rate: int = 44100
) -> list[Path]:
    """WAV songs that repeat a 4-block pattern of tones (one tone per block, a different set per
    song): easy to predict, so a small model's loss must fall well below the mean-block baseline."""
    directory.mkdir(parents=True, exist_ok=True)
    n = int(seconds * sample_rate)
    t = np.arange(block_size) / sample_rate
    paths = []
    for song in range(n_songs):
        freqs = [220.0 * 2 ** ((song + 3 * step) / 12) for step in range(4)]
        pattern = np.concatenate([0.5 * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)
        audio = np.tile(pattern, n // pattern.size + 1)[:n]
        path = directory / f"periodic-{song:02d}.wav"
        path.write_bytes(encode_audio(audio, sample_rate=sample_rate, format="wav"))
        paths.append(path)
    return paths


def write_periodic_music(
    directory: Path, *, n_songs: int, seconds: float, sample_rate: int = 22050
) -> list[Path]:
    """WAV songs that repeat a one-second bar: four decaying notes with harmonics (a different
    melody per song) over a kick on every beat. Music a small spectral model can learn in seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    beat = sample_rate // 4
    t = np.arange(beat) / sample_rate
    paths = []
    for song in range(n_songs):
        bar = np.zeros(4 * beat, np.float32)
        for step in range(4):
            freq = 220.0 * 2 ** (((song * 5 + step * (3 + song)) % 12) / 12)
            note = sum(np.sin(2 * np.pi * freq * k * t) / k for k in (1, 2, 3)) * np.exp(-6 * t)
            kick = np.sin(2 * np.pi * (50 + 100 * np.exp(-30 * t)) * t) * np.exp(-20 * t)
            bar[step * beat : (step + 1) * beat] = 0.25 * note + 0.4 * kick
        n = int(seconds * sample_rate)
        audio = np.tile(bar, n // bar.size + 1)[:n]
        path = directory / f"music-{song:02d}.wav"
        path.write_bytes(encode_audio(audio, sample_rate=sample_rate, format="wav"))
        paths.append(path)
    return paths


# The `musicflow` command as the tests run it in a subprocess.
MUSICFLOW = [sys.executable, "-m", "musicflow.cli"]


def musicflow(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``musicflow ARGS`` as a subprocess, with this process's environment (the test server's
    PREFECT_API_URL when the fixture is on) updated by ``env``."""
    return subprocess.run(
        [*MUSICFLOW, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def start_musicflow(*args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[Any]:
    """``musicflow ARGS`` started in the background, with this process's environment updated by
    ``env``; ``popen`` are :class:`subprocess.Popen` keywords (``stdout``, ``text``...)."""
    return subprocess.Popen([*MUSICFLOW, *args], cwd=ROOT, env={**os.environ, **(env or {})}, **popen)


# Headless Chromium (Debian's, driven by Playwright) as the UI tests run it: no sandbox (root in a
# container), no GPU, nothing fetched from the network.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def chromium_browser(driver: Any) -> Any:
    """Headless Chromium launched through a Playwright driver, as the UI tests run it."""
    return driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def ui_playwright() -> Any | None:
    """Playwright's ``sync_playwright`` when Playwright and Chromium are both installed; None
    otherwise (a live test then skips its UI checks, not its own)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    return sync_playwright if CHROMIUM is not None else None


def keep_screenshots(folder: Path, *names: str) -> None:
    """Copy the screenshots ``names`` from ``folder`` to $MUSICFLOW_UI_SCREENSHOTS, when it is set."""
    keep = os.environ.get("MUSICFLOW_UI_SCREENSHOTS")
    for name in names if keep else ():
        shutil.copy(folder / name, Path(str(keep)) / name)


def flow_run_artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The keyed artifacts of a flow run, by key, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def fetch() -> dict[str, Any]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
            return {artifact.key: artifact for artifact in found if artifact.key}

    return asyncio.run(fetch())


def artifact_table(artifact: Any) -> list[dict[str, Any]]:
    """The rows of a table artifact (the API gives its data as a JSON string or as a list)."""
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


_THREADS_SCRIPT = """
import json, os, sys
def threads():
    return set(os.listdir("/proc/self/task"))
exec(sys.argv[1])
before = threads()
exec(sys.argv[2])
print(json.dumps(sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in threads() - before)))
"""


def native_threads_started_by(setup: str, action: str) -> list[str]:
    """Names of the OS threads that running ``action`` (Python source, after ``setup``) starts
    in a fresh interpreter and leaves alive. Arrow's pool threads that are alive at exit make
    the process abort now and then ("terminate called without an active exception")."""
    result = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT, setup, action],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    names: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return names


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly (test material is made with ffmpeg itself)."""
    from tasks.audio.ffmpeg import ffmpeg_binary

    subprocess.run([ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def write_vbr_without_header(path: Path, *, intro_seconds: float = 8.0, seconds: float = 12.0) -> Path:
    """A VBR mp3 with no Xing/Info header whose first seconds are digital silence.

    ffmpeg can only estimate its length from the first frames' (lowest) bitrate:
    the estimate is far longer than the song, which decodes completely.
    """
    rate = 44100
    t = np.arange(int(seconds * rate)) / rate
    music = 0.4 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
    music += np.random.default_rng(7).normal(0, 0.05, t.size)
    signal = np.concatenate([np.zeros(int(intro_seconds * rate)), music]).astype("<f4")
    raw = path.with_suffix(".f32")
    raw.write_bytes(signal.tobytes())
    ffmpeg("-f", "f32le", "-ar", str(rate), "-ac", "1", "-i", str(raw),
           "-c:a", "libmp3lame", "-q:a", "2", "-write_xing", "0", str(path))  # fmt: skip
    raw.unlink()
    return path


def corrupt_frames(mp3: bytes, *, seed: int = 5) -> bytes:
    """``mp3`` with three spots of 600 random bytes in the middle: a few frames each."""
    data = bytearray(mp3)
    rng = np.random.default_rng(seed)
    for share in (0.3, 0.5, 0.7):
        start = int(len(data) * share)
        data[start : start + 600] = rng.integers(0, 256, 600, dtype=np.uint8).tobytes()
    return bytes(data)


def mostly_garbage(mp3: bytes, *, seed: int = 6) -> bytes:
    """The first tenth of ``mp3`` followed by nine times as many random bytes."""
    head = mp3[: len(mp3) // 10]
    return head + np.random.default_rng(seed).integers(0, 256, 9 * len(head), dtype=np.uint8).tobytes()


def write_odd_files(directory: Path, songs: list[Path], long_mp3: bytes) -> dict[str, tuple[str, str]]:
    """Every kind of bad or odd file, in ``directory``; returns ``{name: (outcome, fragment)}``.

    ``songs`` are distinct valid songs (at least 5). Outcomes: ``ok``, ``warned`` (ok, with
    decode warnings), ``failed`` (the error holds ``fragment``), ``duplicate`` (skipped).
    Names are ``str`` as ``os.listdir`` gives them (a non-UTF-8 one has surrogate escapes).
    """
    import socket as socket_module

    import soundfile

    directory.mkdir(parents=True, exist_ok=True)
    expected = write_bad_inputs(directory, songs[-1])
    outcomes = {name: ("failed", fragment) for name, fragment in expected.items()}
    shutil.copy(songs[0], directory / "plain.mp3")
    outcomes["plain.mp3"] = ("ok", "")
    shutil.copy(songs[0], directory / "zz-copy-of-plain.mp3")
    outcomes["zz-copy-of-plain.mp3"] = ("duplicate", "")
    shutil.copy(songs[1], directory / "chained::name.mp3")  # fsspec would read "::" as a URL chain
    outcomes["chained::name.mp3"] = ("ok", "")
    odd_name = os.fsdecode(b"caf\xe9-latin1.mp3")  # not UTF-8: pyarrow refuses it as a string
    shutil.copy(songs[2], os.path.join(os.fsencode(directory), os.fsencode(odd_name)))
    outcomes[odd_name] = ("ok", "")
    os.mkfifo(directory / "fifo.mp3")  # hashing it would block forever
    outcomes["fifo.mp3"] = ("failed", "FIFO")
    os.symlink(directory / "gone" / "target.mp3", directory / "dangling.mp3")
    outcomes["dangling.mp3"] = ("failed", "dangling")
    try:
        listener = socket_module.socket(socket_module.AF_UNIX)
        listener.bind(str(directory / "socket.mp3"))
        listener.close()
        outcomes["socket.mp3"] = ("failed", "socket")
    except OSError:  # a path too long for a socket: leave that kind out
        pass
    locked = directory / "no-permission.mp3"
    shutil.copy(songs[3], locked)
    locked.chmod(0)
    # root reads any file: then it is simply a good song
    outcomes[locked.name] = ("ok", "") if os.geteuid() == 0 else ("failed", "permission denied")
    write_vbr_without_header(directory / "vbr-no-header.mp3")
    outcomes["vbr-no-header.mp3"] = ("ok", "")
    (directory / "corrupted-frames.mp3").write_bytes(corrupt_frames(long_mp3))
    outcomes["corrupted-frames.mp3"] = ("warned", "concealed")
    (directory / "garbage.mp3").write_bytes(mostly_garbage(long_mp3))
    outcomes["garbage.mp3"] = ("failed", "undecodable")
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)
    soundfile.write(directory / "matlab.wav", np.stack([tone, tone], axis=1), 22050, format="MAT5")
    outcomes["matlab.wav"] = ("ok", "")  # ffmpeg cannot open it, libsndfile can
    shutil.copy(songs[4], directory / "deleted-mid-run.mp3")
    outcomes["deleted-mid-run.mp3"] = ("failed", "disappeared")
    return outcomes


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """``musicflow ARGS`` in this process (argument checks happen before any flow starts)."""
    from musicflow.cli import main

    capsys.readouterr()
    environ = dict(os.environ)  # the CLI quiets Prefect's console logging through the environment
    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(environ)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
