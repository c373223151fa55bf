"""tasks/store/direct.py: large aligned files written with O_DIRECT, everything else (and every file
system that refuses it) through the page cache, the same bytes either way; and a Zarr shard's chunks
written that way."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.dataset.shards import ShardWriter, read_blocks
from tasks.errors import ConfigError
from tasks.store import direct
from tasks.store.store import open_store

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")


@pytest.fixture(autouse=True)
def _fresh_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct, "_refused_devices", set())
    monkeypatch.delenv(direct.ENV_SWITCH, raising=False)


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The flags of every os.open by tasks.store.direct."""
    flags: list[int] = []
    real_open = os.open

    def spying_open(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        flags.append(flag)
        return real_open(path, flag, *args, **kwargs)

    monkeypatch.setattr(direct.os, "open", spying_open)
    return flags


def _direct_opens(flags: list[int]) -> int:
    return sum(1 for flag in flags if flag & os.O_DIRECT)


def _payload(n_bytes: int) -> bytes:
    return np.random.default_rng(n_bytes).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()


def test_a_large_aligned_file_is_written_past_the_page_cache(tmp_path: Path, opens: list[int]) -> None:
    data = _payload(2 * direct.MIN_BYTES)
    target = tmp_path / "a" / "b" / "chunk"
    umask = os.umask(0o002)  # group-writable files, as open() makes them under this umask
    try:
        written = direct.write_file(target, data)
    except OSError as error:  # pragma: no cover - a file system that fails O_DIRECT writes oddly
        pytest.skip(f"O_DIRECT unusable under {tmp_path}: {error}")
    finally:
        os.umask(umask)
    assert written == len(data)
    assert target.read_bytes() == data
    assert sorted(path.name for path in target.parent.iterdir()) == ["chunk"]  # no temporary left
    assert target.stat().st_mode & 0o777 == 0o664
    if not direct._refused_devices:  # tmp_path's file system took O_DIRECT
        assert _direct_opens(opens) == 1


@pytest.mark.parametrize("n_bytes", [direct.MIN_BYTES - direct.ALIGN, direct.MIN_BYTES + 100, 10])
def test_small_or_unaligned_files_go_through_the_page_cache(
    tmp_path: Path, opens: list[int], n_bytes: int
) -> None:
    data = _payload(n_bytes)
    assert direct.write_file(tmp_path / "file", data) == n_bytes
    assert (tmp_path / "file").read_bytes() == data
    assert _direct_opens(opens) == 0


@pytest.mark.parametrize("value", ["0", "false", "Off", " no "])
def test_the_switch_turns_it_off(
    tmp_path: Path, opens: list[int], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(direct.ENV_SWITCH, value)
    assert not direct.enabled()
    data = _payload(direct.MIN_BYTES)
    direct.write_file(tmp_path / "file", data)
    assert (tmp_path / "file").read_bytes() == data
    assert _direct_opens(opens) == 0


@pytest.mark.parametrize("value", ["", "1", "true", "YES", "on"])
def test_the_switch_on_or_unset_leaves_it_on(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(direct.ENV_SWITCH, value)
    assert direct.enabled()


@pytest.mark.parametrize("value", ["2", "maybe", "disable"])
def test_a_bad_switch_value_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(direct.ENV_SWITCH, value)
    with pytest.raises(ConfigError, match=f"invalid MUSICFLOW_DIRECT_IO {value!r}"):
        direct.enabled()


def test_the_cli_refuses_a_bad_switch_value_in_one_line_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import run_cli

    (tmp_path / "songs").mkdir()
    monkeypatch.setenv(direct.ENV_SWITCH, "maybe")
    code, out, err = run_cli(capsys, "ingest", str(tmp_path / "songs"), "--store", str(tmp_path / "store"))
    assert code == 2, (out, err)
    (line,) = err.strip().splitlines()
    assert "MUSICFLOW_DIRECT_IO 'maybe'" in line, line
    assert not (tmp_path / "store" / "datasets").exists()  # no flow ran


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_a_file_system_that_refuses_it_gets_an_ordinary_write_and_is_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_at: str
) -> None:
    real_open, real_write = os.open, os.write
    direct_fds: set[int] = set()
    attempts: list[str] = []

    def refusing_open(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        if flag & os.O_DIRECT:
            attempts.append("open")
            if refused_at == "open":
                raise OSError(errno.EINVAL, "Invalid argument")
            fd = real_open(path, flag & ~os.O_DIRECT, *args, **kwargs)
            direct_fds.add(fd)
            return fd
        return real_open(path, flag, *args, **kwargs)

    def refusing_write(fd: int, data: Any) -> int:
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct.os, "open", refusing_open)
    monkeypatch.setattr(direct.os, "write", refusing_write)
    first, second = _payload(direct.MIN_BYTES), _payload(2 * direct.MIN_BYTES)
    assert direct.write_file(tmp_path / "one", first) == len(first)
    assert direct.write_file(tmp_path / "two", second) == len(second)
    assert (tmp_path / "one").read_bytes() == first
    assert (tmp_path / "two").read_bytes() == second
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "two"]
    assert attempts == ["open"]  # the second file did not try again on the same device


def test_another_error_is_raised_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def full_disk(path: Any, flag: int, *args: Any, **kwargs: Any) -> int:
        if flag & os.O_DIRECT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flag, *args, **kwargs)

    monkeypatch.setattr(direct.os, "open", full_disk)
    with pytest.raises(OSError) as raised:
        direct.write_file(tmp_path / "chunk", _payload(direct.MIN_BYTES))
    assert raised.value.errno == errno.ENOSPC  # a store fault, not a fallback
    assert list(tmp_path.iterdir()) == []


def test_a_zarr_shard_writes_its_chunks_that_way_and_reads_back_the_same(
    tmp_path: Path, opens: list[int]
) -> None:
    rows = np.random.default_rng(7).standard_normal((10_000, 128)).astype(np.float32)
    store = open_store(str(tmp_path / "store"))
    with ShardWriter(store, "datasets/d", n_features=128, shard_format="zarr") as writer:
        offset = writer.add(rows, song_id="song")
    assert writer.shard is not None
    np.testing.assert_array_equal(
        read_blocks(store, "datasets/d", writer.shard, offset=offset, n_blocks=rows.shape[0]), rows
    )
    # 10,000 rows of 128 float32 in chunks of 4096 rows (2 MiB): three chunk files, each one direct
    # where the file system takes it (the metadata is small: through the page cache).
    assert _direct_opens(opens) >= 1  # tried (a file system that refuses it is asked once)
    if not direct._refused_devices:
        assert _direct_opens(opens) == 3
