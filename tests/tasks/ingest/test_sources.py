"""The source listing streams: a bucket of many keys is never held whole as info dicts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import fsspec
import fsspec.asyn
import pytest
from fsspec.spec import AbstractFileSystem

from tasks.ingest import sources
from tasks.ingest.sources import list_audio_files
from tasks.store.store import open_store

N_FOLDERS = 40
KEYS_PER_FOLDER = 2500  # 100k keys, one in ten a song


class Info(dict[str, Any]):
    """An info dict that counts how many of its kind are alive at once."""

    alive: ClassVar[int] = 0
    peak: ClassVar[int] = 0

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        Info.alive += 1
        Info.peak = max(Info.peak, Info.alive)

    def __del__(self) -> None:
        Info.alive -= 1


def _key_info(folder: int, index: int) -> Info:
    extension = ".mp3" if index % 10 == 0 else ".jpg"
    return Info(name=f"bucket/f{folder:03d}/k{index:05d}{extension}", type="file", size=index)


class ManyKeysFileSystem(AbstractFileSystem):
    """A bucket of N_FOLDERS x KEYS_PER_FOLDER keys, each folder's listing made when it is asked for
    (as an object store's listing arrives over the network)."""

    protocol = "manykeys"
    cachable = False

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return {"name": path, "type": "directory" if path.count("/") < 2 else "file", "size": 0}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path).rstrip("/")
        if path == "bucket":
            listing = [
                Info(name=f"bucket/f{folder:03d}", type="directory", size=0) for folder in range(N_FOLDERS)
            ]
        else:
            folder = int(path.rsplit("/f", 1)[1])
            listing = [_key_info(folder, index) for index in range(KEYS_PER_FOLDER)]
        return listing if detail else [info["name"] for info in listing]


class ManyKeysObjectStore(ManyKeysFileSystem):
    """The same bucket listed as s3fs lists it: one flat, paginated listing of every key."""

    protocol = "manykeysobjects"

    @property
    def loop(self) -> Any:
        return fsspec.asyn.get_loop()

    def split_path(self, path: str) -> tuple[str, str, None]:
        bucket, _, key = self._strip_protocol(path).partition("/")
        return bucket, key, None

    async def _iterdir(self, bucket: str, delimiter: str = "/", prefix: str = "") -> AsyncIterator[Info]:
        assert (bucket, delimiter, prefix) == ("bucket", "", "")
        for folder in range(N_FOLDERS):
            for index in range(KEYS_PER_FOLDER):
                yield _key_info(folder, index)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for filesystem in (ManyKeysFileSystem, ManyKeysObjectStore):
        fsspec.register_implementation(filesystem.protocol, filesystem, clobber=True)
    # listed as s3fs is (only s3fs is known to page so)
    monkeypatch.setattr(sources, "_lists_in_pages", lambda fs: isinstance(fs, ManyKeysObjectStore))
    Info.alive = Info.peak = 0
    yield
    Info.alive = Info.peak = 0


@pytest.mark.parametrize("protocol", ["manykeys", "manykeysobjects"])
def test_a_listing_of_100k_keys_holds_a_directory_or_a_page_of_them_at_a_time(
    counted: None, protocol: str
) -> None:
    """Listing a bucket keeps its songs only, as they arrive: the info dicts alive at once are one
    folder's (a walk) or one page's (s3fs), not the bucket's 100k (fsspec's ``find`` built them all)."""
    files = list_audio_files(f"{protocol}://bucket")
    assert len(files) == N_FOLDERS * KEYS_PER_FOLDER // 10
    assert files[0].uri == f"{protocol}://bucket/f000/k00000.mp3"
    assert [item.uri for item in files] == sorted(item.uri for item in files)
    assert files[-1].bytes == KEYS_PER_FOLDER - 10
    held = N_FOLDERS + KEYS_PER_FOLDER if protocol == "manykeys" else sources.LIST_PAGE_KEYS
    assert Info.peak <= held + 1, Info.peak  # + the one in hand


def test_an_s3_listing_is_read_page_by_page(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On S3 (moto) the listing takes the keys a page at a time, to the last one, and leaves no
    copy of them in s3fs's listing cache (its ``find`` cached every folder's listing)."""
    store = open_store(s3_bucket)
    names = [
        f"in/{folder}/{index}.{extension}"
        for folder in "ab"
        for index in range(3)
        for extension in ("mp3", "txt")
    ]
    for name in names:
        store.write_bytes(b"x" * len(name), name)
    store.write_bytes(b"1", "inside.mp3")  # beside the prefix, not under it
    monkeypatch.setattr(sources, "LIST_PAGE_KEYS", 2)
    store.fs.invalidate_cache()
    files = list_audio_files(f"{s3_bucket}/in")
    expected = sorted(f"{s3_bucket}/{name}" for name in names if name.endswith(".mp3"))
    assert [item.uri for item in files] == expected
    assert all(item.bytes == len(item.uri) - len(s3_bucket) - 1 for item in files)
    assert all(item.mtime is not None for item in files)
    cached = [entry["name"] for listing in store.fs.dircache.values() for entry in listing]
    assert not [name for name in cached if name.endswith(".mp3")], cached
