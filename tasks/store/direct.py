"""Bulk files written past the page cache (``O_DIRECT``), where the file system takes it.

A shard's chunks are written once and read much later (by training), so caching them buys nothing,
and on some machines filling the page cache is what a write costs: on this project's 2-core VMs
(ext4 on virtio), 340 MB of 2 MiB files took 2.7-4.1 s of kernel CPU through the page cache and
0.01-0.02 s with ``O_DIRECT`` (0.2 s of wall, the disk's own speed). An ingest tick writes that much
for 2 h of songs, beside the decoding it competes with for the cores
(``benchmarks/bench_ingest.py --writes-only``).

:func:`write_file` writes a file with ``O_DIRECT`` when the data is at least :data:`MIN_BYTES` and a
whole number of :data:`ALIGN` blocks, and with an ordinary write otherwise, on systems without
``O_DIRECT``, on file systems that refuse it (``EINVAL``: tmpfs on older kernels, some FUSE and
network mounts; remembered per device), and when ``MUSICFLOW_DIRECT_IO=0``. What is on disk is the
same bytes either way.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import uuid
from pathlib import Path

from tasks.errors import ConfigError

# O_DIRECT wants the buffer, the size and the offset aligned to the device's logical block (512 B or
# 4 KiB); 4 KiB fits both.
ALIGN = 4096
# Smaller files (metadata, statistics) go through the page cache: for them it costs nothing.
MIN_BYTES = 1 << 20
ENV_SWITCH = "MUSICFLOW_DIRECT_IO"  # "0": never bypass the page cache
_OFF, _ON = {"0", "false", "no", "off"}, {"", "1", "true", "yes", "on"}
_REFUSALS = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)
_refused_devices: set[int] = set()  # devices whose file system refused O_DIRECT
_local = threading.local()  # each writing thread's aligned buffer, reused from write to write


def enabled() -> bool:
    """Whether large writes may bypass the page cache here: the platform has ``O_DIRECT`` and
    ``MUSICFLOW_DIRECT_IO`` does not turn it off (``0``, ``false``, ``no``, ``off``; unset, ``1``,
    ``true``, ``yes``, ``on``: on). :class:`ConfigError` naming any other value."""
    text = os.environ.get(ENV_SWITCH, "").strip()
    if text.lower() in _OFF:
        return False
    if text.lower() not in _ON:
        raise ConfigError(f"invalid {ENV_SWITCH} {text!r}: 0 or 1 (also false/true, no/yes, off/on)")
    return hasattr(os, "O_DIRECT")


def eligible(n_bytes: int) -> bool:
    """Whether a file of ``n_bytes`` is written with ``O_DIRECT`` where the file system allows it."""
    return n_bytes >= MIN_BYTES and n_bytes % ALIGN == 0 and enabled()


def write_file(path: str | Path, data: bytes | bytearray | memoryview) -> int:
    """Write ``data`` to ``path`` (replacing it, through a temporary name beside it, as a store
    write does) and return the bytes written; its parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    view = memoryview(data).cast("B")
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        written = _write_direct(temporary, view) if eligible(view.nbytes) else None
        if written is None:
            with open(temporary, "wb") as handle:
                written = handle.write(view)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return written


def _write_direct(path: Path, view: memoryview) -> int | None:
    """``view`` written to a new ``path`` with ``O_DIRECT``; None (nothing left behind) where the
    file system refuses it."""
    try:
        device = os.stat(path.parent).st_dev
    except OSError:
        return None
    if device in _refused_devices:
        return None
    buffer = _aligned_buffer(view.nbytes)
    buffer[: view.nbytes] = view
    try:  # mode 0o666 less the umask, as open() gives
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666)
    except OSError as error:
        if error.errno not in _REFUSALS:
            raise
        _refused_devices.add(device)
        return None
    try:
        written = 0
        with memoryview(buffer) as whole:
            while written < view.nbytes:  # after a short write, the rest (EINVAL if it is unaligned)
                written += os.write(fd, whole[written : view.nbytes])
    except OSError as error:
        os.close(fd)
        path.unlink(missing_ok=True)
        if error.errno not in _REFUSALS:
            raise
        _refused_devices.add(device)
        return None
    os.close(fd)
    return written


def _aligned_buffer(n_bytes: int) -> mmap.mmap:
    """This thread's page-aligned buffer (an anonymous map) of at least ``n_bytes``: a chunk's size,
    about 2 MiB (``tasks.dataset.shards.CHUNK_BYTES``), kept for the thread's next write."""
    buffer: mmap.mmap | None = getattr(_local, "buffer", None)
    if buffer is None or len(buffer) < n_bytes:
        if buffer is not None:
            buffer.close()
        buffer = mmap.mmap(-1, n_bytes)
        _local.buffer = buffer
    return buffer
