"""The files of an ingest source: listing them, and what identifies a song's bytes.

A source is a directory, a single file or a URL that fsspec reads
(:func:`open_source`). :func:`list_audio_files` gives one :class:`SourceFile`
per audio file in it, with its size and mtime and never its content, from a listing that
streams (:func:`iter_audio_files`: a bucket of millions of keys is read a page at a time, and
only its audio files are kept, as compact records); a song's
identity is the sha256 of its bytes (:func:`sha256_of`, :func:`sha256_stream`),
computed by the planner or by the worker that reads the file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import fsspec.asyn

from tasks.config import AUDIO_EXTENSIONS
from tasks.errors import ConfigError
from tasks.store.store import is_local_fs, url_to_fs

_HASH_CHUNK = 1 << 20
# Keys taken from an object store's listing at a time: one ListObjectsV2 page.
LIST_PAGE_KEYS = 1000


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file to ingest: its URL (or local path), size, mtime and content hash.

    ``song_id`` is filled in by the planner only for files that might be
    duplicates (see :func:`tasks.ingest.plan.plan_ingest`); the worker hashes the others.
    ``problem`` says why a listed file cannot be read at all (a FIFO, a
    dangling link): it becomes a failed row without being opened.
    """

    uri: str
    bytes: int
    mtime: float | None = None
    song_id: str | None = None
    problem: str | None = None


def open_source(source: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path of an existing source; :class:`ConfigError` naming it otherwise."""
    try:
        fs, root = url_to_fs(source)
        exists = fs.exists(root)
    except (ValueError, ImportError, OSError) as error:
        raise ConfigError(f"invalid source {source!r}: {error}") from error
    if not exists:
        raise ConfigError(f"source not found: {source!r}")
    return fs, root


def list_audio_files(source: str) -> list[SourceFile]:
    """Every audio file under ``source`` (a directory, a single file or a URL), sorted.

    Files are recognised by extension (``AUDIO_EXTENSIONS``); what is inside
    them is decided only when decoding. On a local disk, special files (FIFOs,
    sockets, devices) and dangling symbolic links are listed with a
    ``problem`` and never opened; folders that cannot be read are skipped.
    Raises :class:`ConfigError` when the source does not exist.
    """
    return sorted(iter_audio_files(source), key=lambda item: item.uri)


def iter_audio_files(source: str) -> Iterator[SourceFile]:
    """The audio files of :func:`list_audio_files`, unsorted, as the listing reads them.

    Keys are filtered as they arrive and only the audio files' records are kept: an S3 (s3fs)
    prefix is listed a page of :data:`LIST_PAGE_KEYS` keys at a time, any other fsspec
    filesystem a directory at a time (``walk``, dropping each directory's cached listing), so
    the listing holds one page's or one directory's info dicts, never the bucket's.
    """
    fs, root = open_source(source)
    if is_local_fs(fs):
        yield from _list_local(root)
        return
    if fs.isfile(root):
        infos: Iterator[dict[str, Any]] = iter([fs.info(root)])
    elif _lists_in_pages(fs):
        infos = _object_keys(fs, root)
    else:
        infos = _walked(fs, root)
    for info in infos:
        path = str(info.get("name", ""))
        if info.get("type") == "file" and path.lower().endswith(AUDIO_EXTENSIONS):
            yield SourceFile(
                uri=fs.unstrip_protocol(path), bytes=int(info.get("size") or 0), mtime=_mtime(info)
            )


def _lists_in_pages(fs: fsspec.AbstractFileSystem) -> bool:
    """s3fs, whose ``_iterdir`` pages through ListObjectsV2 (other filesystems' differ, or lack it)."""
    try:
        from s3fs import S3FileSystem
    except ImportError:  # pragma: no cover - a dependency; without it no filesystem is s3fs's
        return False
    return isinstance(fs, S3FileSystem)


def _object_keys(fs: Any, root: str) -> Iterator[dict[str, Any]]:
    """Every key under ``root`` of an s3fs filesystem, one listing page at a time (s3fs's own
    ``find`` gathers them all, and keeps them in its listing cache)."""
    bucket, key, _ = fs.split_path(root)
    pages = fs._iterdir(bucket, delimiter="", prefix=key.rstrip("/") + "/" if key else "")
    try:
        while True:
            page = fsspec.asyn.sync(fs.loop, _take, pages, LIST_PAGE_KEYS)
            last = len(page) < LIST_PAGE_KEYS
            yield from page
            del page  # before the next page is taken: one page alive at a time
            if last:
                return
    finally:
        fsspec.asyn.sync(fs.loop, pages.aclose)


async def _take(items: AsyncIterator[dict[str, Any]], n_items: int) -> list[dict[str, Any]]:
    """The next ``n_items`` of ``items`` (fewer at its end)."""
    taken: list[dict[str, Any]] = []
    while len(taken) < n_items:
        try:
            taken.append(await items.__anext__())
        except StopAsyncIteration:
            break
    return taken


def _walked(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[dict[str, Any]]:
    """Every file's info under ``root``, a directory at a time."""
    for directory, _, files in fs.walk(root, detail=True):
        yield from files.values()
        del files  # before the next directory is listed: one directory alive at a time
        fs.invalidate_cache(directory)


def _list_local(root: str) -> list[SourceFile]:
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        paths = [root]
    else:
        paths = []
        for directory, subdirectories, names in os.walk(root, onerror=lambda error: None):
            subdirectories.sort()
            paths += [
                os.path.join(directory, name) for name in names if name.lower().endswith(AUDIO_EXTENSIONS)
            ]
    files = [_local_file(path) for path in sorted(paths)]
    return [item for item in files if item is not None]


def _local_file(path: str) -> SourceFile | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return SourceFile(
                uri=path, bytes=0, mtime=None, problem="dangling symbolic link (its target is missing)"
            )
        return None  # gone since the folder was listed
    except OSError as error:
        return SourceFile(uri=path, bytes=0, mtime=None, problem=f"cannot stat the file: {error.strerror}")
    if stat.S_ISDIR(info.st_mode):
        return None
    if not stat.S_ISREG(info.st_mode):
        return SourceFile(
            uri=path, bytes=0, mtime=info.st_mtime, problem=f"not a regular file ({_kind(info.st_mode)})"
        )
    return SourceFile(uri=path, bytes=info.st_size, mtime=info.st_mtime)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):  # fmt: skip
        if test(mode):
            return name
    return "a special file"


def _mtime(info: dict[str, object]) -> float | None:
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


def sha256_stream(handle: IO[bytes], *, copy_to: IO[bytes] | None = None) -> str:
    """The song id of the bytes left in ``handle``: their sha256, read in 1 MB chunks, each one
    also written to ``copy_to`` when it is given (a download, hashed on the way)."""
    digest = hashlib.sha256()
    while chunk := handle.read(_HASH_CHUNK):
        digest.update(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return digest.hexdigest()


def sha256_of(uri: str) -> str:
    """The song id of the file at ``uri`` (:func:`sha256_stream` of its bytes)."""
    fs, path = url_to_fs(uri)
    with fs.open(path, "rb") as handle:
        return sha256_stream(handle)


def unread_song_id(uri: str) -> str:
    """The ``song_id`` of a failed row for a file whose bytes could not be read: from its name."""
    return hashlib.sha256(b"unread:" + os.fsencode(uri)).hexdigest()
