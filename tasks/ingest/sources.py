"""The files of an ingest source: listing them, and what identifies a song's bytes.

A source is a directory, a single file or a URL that fsspec reads
(:func:`open_source`). :func:`list_audio_files` gives one :class:`SourceFile`
per audio file in it, with its size and mtime and never its content; a song's
identity is the sha256 of its bytes (:func:`sha256_of`, :func:`sha256_stream`),
computed by the planner or by the worker that reads the file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import IO

import fsspec

from tasks.config import AUDIO_EXTENSIONS
from tasks.errors import ConfigError
from tasks.store.store import is_local_fs, url_to_fs

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
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
    fs, root = open_source(source)
    if is_local_fs(fs):
        return _list_local(root)
    infos = {root: fs.info(root)} if fs.isfile(root) else fs.find(root, detail=True)
    files = []
    for path, info in sorted(infos.items()):
        if info.get("type") != "file" or not path.lower().endswith(AUDIO_EXTENSIONS):
            continue
        files.append(
            SourceFile(uri=fs.unstrip_protocol(path), bytes=int(info.get("size") or 0), mtime=_mtime(info))
        )
    return files


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
