"""Unit tests of tasks/store/store.py: the fsspec store, atomic writes, probing and the lock file.

test_concurrency.py covers the lock between threads on a local disk and a dead local
holder; here: every backend (local path, file://, memory://, s3 on moto), release on an
exception, age-based staleness and locks that must *not* be broken.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from tasks.errors import ConfigError, StoreError
from tasks.store.store import LockLostError, Store, check_writable, checked_id, machine_id, open_store

KINDS = ["path", "file", "memory", "s3"]


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "path":
        return str(tmp_path / "store")
    if kind == "file":
        return f"file://{tmp_path}/store"
    if kind == "memory":
        return f"memory://musicflow-test-{uuid.uuid4().hex[:8]}/store"
    return request.getfixturevalue("s3_bucket") + "/store"


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = open_store(_url(request.param, tmp_path, request))
    yield opened
    if request.param == "memory":
        opened.rm()


@pytest.fixture(params=["path", "file"])
def local_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return open_store(_url(request.param, tmp_path, request))


def _names(store: Store, *parts: str) -> list[str]:
    return sorted(os.path.basename(path) for path in store.fs.find(store.path(*parts)))


# --------------------------------------------------------------------------- open_store


def test_open_store_roots(tmp_path: Path) -> None:
    plain = open_store(str(tmp_path / "a"))
    assert (plain.root, plain.is_local) == (str(tmp_path / "a"), True)
    file_url = open_store(f"file://{tmp_path}/a/")
    assert (file_url.root, file_url.is_local) == (str(tmp_path / "a"), True)
    memory = open_store("memory://bucket/x")
    assert (memory.root, memory.is_local) == ("/bucket/x", False)
    assert memory.path("d", "f") == "/bucket/x/d/f"
    assert memory.path() == "/bucket/x"


@pytest.mark.parametrize("url", ["", "nosuchprotocol-xyz://bucket/store"])
def test_open_store_rejects_bad_urls_naming_them(url: str) -> None:
    with pytest.raises(StoreError) as error:
        open_store(url)
    assert repr(url) in str(error.value)


# --------------------------------------------------------------------------- basic I/O on every backend


def test_write_and_read_back(store: Store) -> None:
    assert not store.exists("a", "b", "f.bin")
    store.write_bytes(b"\x00first\xff", "a", "b", "f.bin")  # parent folders are created
    assert store.exists("a", "b", "f.bin")
    assert store.read_bytes("a", "b", "f.bin") == b"\x00first\xff"
    store.write_bytes(b"second", "a", "b", "f.bin")
    assert store.read_bytes("a", "b", "f.bin") == b"second"
    assert _names(store, "a") == ["f.bin"]  # no temporary file left behind


def test_json_round_trip(store: Store) -> None:
    value = {"b": [1, 2.5, None], "a": {"nested": "é"}, "flag": True}
    store.write_json(value, "d", "v.json")
    assert store.read_json("d", "v.json") == value
    store.write_json(value, "d", "compact.json", indent=None)
    compact = store.read_bytes("d", "compact.json")
    assert b"\n" not in compact
    assert compact.index(b'"a"') < compact.index(b'"b"')  # sorted keys: stable bytes for a value
    assert json.loads(compact) == value


def test_rm_is_recursive_and_ignores_missing(store: Store) -> None:
    store.write_bytes(b"1", "d", "sub", "x")
    store.write_bytes(b"2", "d", "y")
    store.write_bytes(b"3", "keep")
    store.rm("d")
    assert not store.exists("d", "sub", "x")
    assert not store.exists("d", "y")
    assert store.read_bytes("keep") == b"3"
    store.rm("d")  # already gone: no error
    store.rm("never", "there")


def test_list_dirs(store: Store) -> None:
    assert store.list_dirs("models") == []
    store.write_bytes(b"x", "models", "zeta", "card.json")
    store.write_bytes(b"x", "models", "alpha", "ckpt", "1.keras")
    store.write_bytes(b"x", "models", "loose-file.json")
    assert store.list_dirs("models") == ["alpha", "zeta"]
    assert store.list_dirs("models", "alpha") == ["ckpt"]


def test_full_url_opens_the_same_file(store: Store) -> None:
    store.write_bytes(b"payload", "d", "f.bin")
    url = store.full_url("d", "f.bin")
    if store.is_local:
        assert "://" not in url
        assert Path(url).read_bytes() == b"payload"
    else:
        assert url.startswith(("memory://", "s3://"))
    with fsspec.open(url, "rb") as handle:
        assert handle.read() == b"payload"
    assert store.full_url().rstrip("/") == url[: -len("/d/f.bin")]


# --------------------------------------------------------------------------- atomic writes on a local disk


def test_failed_write_keeps_the_old_content(local_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store = local_store
    store.write_bytes(b"old content", "d", "f.bin")
    real_pipe = store.fs.pipe_file

    def half_then_fail(path: str, data: bytes, **kwargs: object) -> None:
        real_pipe(path, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(store.fs, "pipe_file", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes(b"new content that is longer", "d", "f.bin")
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes(b"brand new", "d", "g.bin")
    monkeypatch.undo()
    assert store.read_bytes("d", "f.bin") == b"old content"
    assert not store.exists("d", "g.bin")
    assert _names(store, "d") == ["f.bin"]  # the partial files are cleaned up


def test_failed_rename_keeps_the_old_content(local_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store = local_store
    store.write_json({"v": 1}, "d", "f.json")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(store.fs, "mv", fail)
    with pytest.raises(OSError, match="rename failed"):
        store.write_json({"v": 2}, "d", "f.json")
    monkeypatch.undo()
    assert store.read_json("d", "f.json") == {"v": 1}
    assert _names(store, "d") == ["f.json"]


def test_write_goes_through_a_temporary_sibling(local_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store = local_store
    written: list[str] = []
    real_pipe = store.fs.pipe_file

    def record(path: str, data: bytes, **kwargs: object) -> None:
        written.append(path)
        assert not os.path.exists(store.path("d", "f.bin")), "final name visible before the rename"
        real_pipe(path, data, **kwargs)

    monkeypatch.setattr(store.fs, "pipe_file", record)
    store.write_bytes(b"abc", "d", "f.bin")
    assert len(written) == 1
    assert written[0] != store.path("d", "f.bin")
    assert os.path.dirname(written[0]) == store.path("d")  # same folder: rename stays atomic
    assert Path(store.path("d", "f.bin")).read_bytes() == b"abc"


# --------------------------------------------------------------------------- check_writable


def test_check_writable_leaves_no_probe(store: Store) -> None:
    check_writable(store)
    if store.is_local:
        assert os.path.isdir(store.root)
    assert store.fs.find(store.root) == []


def test_check_writable_names_an_unwritable_url(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for url in (str(blocker / "store"), f"file://{blocker}/store"):
        with pytest.raises(StoreError) as error:
            check_writable(open_store(url))
        assert repr(url) in str(error.value)
        assert "\n" not in str(error.value)
        assert isinstance(error.value.__cause__, OSError)


# --------------------------------------------------------------------------- lock


def _holder(**overrides: object) -> bytes:
    value = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "machine": machine_id(),
        "since": time.time(),
        "token": "t",
    }
    value.update(overrides)
    return json.dumps(value).encode()


# The store's time stamps: exact on a local disk and in memory, whole seconds on S3.
def _tick(store: Store) -> float:
    return 1.0 if store.url.startswith("s3://") else 0.3


def test_lock_is_exclusive_on_every_backend(store: Store) -> None:
    with store.lock("ds", "catalog.lock"):
        holder = json.loads(store.read_bytes("ds", "catalog.lock"))
        assert holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()
        # This process is alive and the lock is young: a second acquire must wait, then fail.
        started = time.monotonic()
        with pytest.raises(StoreError) as error, store.lock("ds", "catalog.lock", timeout=0.3):
            pytest.fail("acquired a lock that is held")
        assert time.monotonic() - started >= 0.3
        assert store.full_url("ds", "catalog.lock") in str(error.value)
        assert json.loads(store.read_bytes("ds", "catalog.lock"))["token"] == holder["token"]
    assert not store.exists("ds", "catalog.lock")


def test_lock_is_released_on_an_exception(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.lock("x.lock"):
        assert store.exists("x.lock")
        raise RuntimeError("boom")
    assert not store.exists("x.lock")
    started = time.monotonic()
    with store.lock("x.lock", timeout=1):
        pass
    assert time.monotonic() - started < 1


def _glitching(monkeypatch: pytest.MonkeyPatch, name: str, *, fails: int, after: bool = False) -> list[str]:
    """``Store.<name>`` raising EIO on its first ``fails`` calls (``after``: once it has done its work,
    an answer lost on its way back); the calls, as a list."""
    real, calls = getattr(Store, name), []

    def glitch(self: Store, *args: object, **kwargs: object) -> object:
        calls.append(name)
        if len(calls) > fails:
            return real(self, *args, **kwargs)
        if after:
            real(self, *args, **kwargs)
        raise OSError(errno.EIO, "injected", name)

    monkeypatch.setattr(Store, name, glitch)
    return calls


@pytest.mark.parametrize("after", [False, True], ids=["write-failed", "answer-lost"])
def test_a_store_glitch_taking_a_lock_is_tried_again(
    store: Store, monkeypatch: pytest.MonkeyPatch, after: bool
) -> None:
    """Issue 26 (seen in the soak): one EIO creating the ingest marker (``timeout=0``) failed a whole run.
    A create that landed but whose answer was lost is recognised as this holder's own lock."""
    calls = _glitching(monkeypatch, "_create_exclusive", fails=2 if not after else 1, after=after)
    with store.lock("ingests", "run.lock", timeout=0):
        assert store.exists("ingests", "run.lock")
    assert not store.exists("ingests", "run.lock")
    assert len(calls) == (3 if not after else 1)


def test_a_store_glitch_reading_a_file_is_tried_again(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26 (seen in the soak): with 10% faulty reads a catalog of 70 segments was never read whole,
    so no re-run got past its plan. A missing file is not a glitch: raised at once."""
    store.write_bytes(b"segment", "catalog", "1.parquet")
    real, calls = store.fs.cat_file, []

    def glitch(path: str, *args: object, **kwargs: object) -> bytes:
        calls.append(path)
        if len(calls) <= 3:
            raise OSError(errno.EIO, "injected", path)
        return bytes(real(path, *args, **kwargs))

    monkeypatch.setattr(store.fs, "cat_file", glitch)
    assert store.read_bytes("catalog", "1.parquet") == b"segment" and len(calls) == 4
    with pytest.raises(FileNotFoundError):
        store.read_bytes("catalog", "2.parquet")
    assert len(calls) == 5


def test_a_store_glitch_releasing_a_lock_is_tried_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _glitching(monkeypatch, "_release", fails=2)
    with store.lock("x.lock"):
        pass
    assert not store.exists("x.lock") and len(calls) == 3


def test_a_lock_is_not_tried_again_on_an_error_of_its_file(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only glitches are: a refusal (EACCES) is raised at once."""
    calls: list[int] = []

    def refused(self: Store, *args: object) -> None:
        calls.append(1)
        raise PermissionError(errno.EACCES, "refused")

    monkeypatch.setattr(Store, "_create_exclusive", refused)
    with pytest.raises(PermissionError), store.lock("x.lock"):
        pytest.fail("took a refused lock")
    assert calls == [1]


@pytest.mark.parametrize(
    "holder",
    [
        {"host": "another-host", "pid": 1},  # alive for all we know: another machine
        {},  # this very process: alive
        # Same host name, a pid that is not running here, but another pid namespace (a container
        # with the same host name): its pid says nothing, so only the lock's age counts.
        {"pid": 2**22 + 7, "machine": "another-boot/pid:[1]"},
        # A holder whose clock is an hour behind: "since" is not how staleness is judged.
        {"host": "another-host", "pid": 1, "since": time.time() - 3600},
    ],
    ids=["other-host", "live-pid", "other-pid-namespace", "skewed-clock"],
)
def test_a_young_lock_of_a_live_holder_is_not_broken(local_store: Store, holder: dict[str, object]) -> None:
    content = _holder(**holder)
    local_store.write_bytes(content, "x.lock")
    with pytest.raises(StoreError, match="timed out"), local_store.lock("x.lock", timeout=0.2):
        pass
    assert local_store.read_bytes("x.lock") == content


def test_an_unrenewed_lock_is_broken_by_the_stores_clock(store: Store) -> None:
    """Staleness is the lock file's age on the store's clock: a holder whose own clock runs an hour
    ahead (its record looks brand new) is broken once the file went unrenewed for stale_after."""
    store.write_bytes(_holder(host="another-host", pid=1, since=time.time() + 3600), "x.lock")
    written = time.monotonic()
    stale_after = _tick(store)
    with store.lock("x.lock", timeout=10, stale_after=stale_after):
        assert time.monotonic() - written >= stale_after  # not before it went unrenewed that long
        assert json.loads(store.read_bytes("x.lock"))["host"] == socket.gethostname()
    assert not store.exists("x.lock")


def test_a_dead_holder_of_this_machine_is_broken_even_when_young(local_store: Store) -> None:
    # test_concurrency.py covers a real dead process; here the pid-0/absent pid case.
    local_store.write_bytes(_holder(pid=0), "x.lock")
    with local_store.lock("x.lock", timeout=1, stale_after=3600):
        assert json.loads(local_store.read_bytes("x.lock"))["pid"] == os.getpid()


def test_a_fresh_unreadable_lock_is_waited_for(local_store: Store) -> None:
    # Another process just created the file and has not written its owner yet.
    local_store.write_bytes(b"", "x.lock")
    with pytest.raises(StoreError, match="timed out"), local_store.lock("x.lock", timeout=0.2):
        pass
    assert local_store.exists("x.lock")


def test_an_old_unreadable_lock_is_broken(local_store: Store) -> None:
    # A holder killed between creating the lock file and writing its owner: without an
    # age limit on such a file every later commit would time out forever.
    local_store.write_bytes(b"", "x.lock")
    old = time.time() - 600
    os.utime(local_store.path("x.lock"), (old, old))
    with local_store.lock("x.lock", timeout=2, stale_after=60):
        assert json.loads(local_store.read_bytes("x.lock"))["pid"] == os.getpid()


def test_a_lock_renewed_after_it_was_judged_stale_is_not_broken(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compare-and-delete: the holder renews its lock between another run's staleness check and
    that run's delete (it was frozen, and woke just then); the delete must not happen, the holder
    keeps the lock and its writes go on. Without the renewal the same judgement breaks it, and the
    holder's next guarded write raises."""
    stale_after = _tick(store)
    real_breakable = Store._breakable

    with store.lock("x.lock", stale_after=600) as held:  # its heartbeat would beat every 30 s
        time.sleep(stale_after + _tick(store) + 0.1)  # unrenewed for longer than stale_after

        judged: list[object] = []

        def judged_then_renewed(self: Store, path: str, expiry: float) -> object:
            seen = real_breakable(self, path, expiry)
            if not judged:
                judged.append(seen)  # judged stale...
                held.ensure()  # ...and renewed by its holder right after
            return seen

        monkeypatch.setattr(Store, "_breakable", judged_then_renewed)
        with (
            pytest.raises(StoreError, match="timed out"),
            store.lock("x.lock", timeout=0, stale_after=stale_after),
        ):
            pytest.fail("broke a lock renewed after it was judged stale")
        monkeypatch.setattr(Store, "_breakable", real_breakable)
        assert judged[0] is not None  # it was judged stale: only the compare kept it
        assert json.loads(store.read_bytes("x.lock"))["token"] == held.token
        held.ensure()  # still ours

    # The same judgement without a renewal: the lock is broken and taken, its old holder is fenced.
    with pytest.raises(LockLostError), store.lock("x.lock", stale_after=600) as held:
        time.sleep(stale_after + _tick(store) + 0.1)
        with store.lock("x.lock", timeout=5, stale_after=stale_after) as taker:
            with pytest.raises(LockLostError, match="lost"):
                store.write_bytes(b"late", "guarded.bin", fence=held.ensure)
            assert not store.exists("guarded.bin")
            assert json.loads(store.read_bytes("x.lock"))["token"] == taker.token
    assert not store.exists("x.lock")


def test_registered_storage_options_reach_the_filesystem_by_longest_prefix() -> None:
    from tasks.store.store import (
        register_storage_options,
        registered_storage_options,
        storage_options_for,
        url_to_fs,
    )

    register_storage_options("s3://songs", {"endpoint_url": "http://127.0.0.1:1", "anon": True})
    register_storage_options("s3://songs/private", {"endpoint_url": "http://127.0.0.1:2", "anon": True})
    try:
        assert storage_options_for("s3://songs/a.mp3")["endpoint_url"] == "http://127.0.0.1:1"
        assert storage_options_for("s3://songs/private/b.mp3")["endpoint_url"] == "http://127.0.0.1:2"
        assert storage_options_for("s3://store/x") == {}
        fs, path = url_to_fs("s3://songs/private/b.mp3")
        assert fs.storage_options["endpoint_url"] == "http://127.0.0.1:2" and path == "songs/private/b.mp3"
        assert set(registered_storage_options()) == {"s3://songs", "s3://songs/private"}
    finally:
        register_storage_options("s3://songs", None)
        register_storage_options("s3://songs/private", None)
    assert storage_options_for("s3://songs/a.mp3") == {}


@pytest.mark.parametrize(
    "value", ["../escape", "../../x", "a/b", "/abs", "", ".", "..", ".hidden", "a b", "x" * 129]
)
def test_an_id_that_is_not_one_folder_is_refused_naming_it(value: str) -> None:
    with pytest.raises(ConfigError, match="invalid model id") as error:
        checked_id("model", value)
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(
    "value",
    ["stft-n1024-h256-m128-sr22050-f0daef0d6a", "spectral-2e6afd36cb", "20261205T002021-a-2a9c47", "v1.2_x"],
)
def test_the_ids_musicflow_makes_are_valid(value: str) -> None:
    assert checked_id("dataset", value) == value


def test_listing_ids_skips_stray_folders(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    for name in ("spectral-1", "my model", ".DS_Store", "small-2"):
        (tmp_path / "store" / "models" / name).mkdir(parents=True)
    assert store.list_ids("models") == ["small-2", "spectral-1"]
    assert "my model" in store.list_dirs("models")


def test_local_writes_reach_the_disk_before_they_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole write and an exclusive create are flushed (the file, then its folder) before they
    return: after a power loss a committed catalog version is whole, not a zero-length name."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store = open_store(str(tmp_path / "store"))
    store.write_bytes(b"stats", "datasets", "stats.json")
    assert len(synced) >= 2  # the file and the folder
    synced.clear()
    assert store.create_exclusive(b"segment", "datasets", "catalog", "000000000001.parquet")
    assert len(synced) >= 2
