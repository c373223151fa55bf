"""The Dask side: a LocalCluster of processes by default, or an existing cluster by address."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tasks.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client

_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc|ws|wss)://[^\s/]+(:\d+)?/?$")


def default_workers() -> int:
    """Cores this process may use: CPU affinity and the cgroup's CPU quota (v1 or v2), not the host's
    core count (a container limited to 2 cores on a 64-core host gets 2 workers)."""
    from dask.system import cpu_count

    return max(1, cpu_count())


def cluster_threads(client: Any) -> int:
    """Worker threads of the Dask cluster ``client`` is connected to (0 while it has no workers)."""
    return sum(client.nthreads().values())


def worker_memory_limit(n_workers: int) -> int:
    """Bytes each of ``n_workers`` workers may use: the cgroup's memory limit (v1 or v2), the RSS
    rlimit or the host's memory, whichever is least, shared out."""
    from distributed.system import memory_limit

    return max(1, memory_limit() // max(1, n_workers))


def check_cluster_options(*, workers: int | None = None, dask_address: str | None = None) -> None:
    """Raise :class:`ConfigError` naming a bad ``workers`` or ``dask_address``, before anything starts."""
    if dask_address:
        if not _ADDRESS.match(dask_address):
            raise ConfigError(f"invalid dask address {dask_address!r}: expected e.g. tcp://127.0.0.1:8786")
    elif workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"invalid workers {workers!r}: must be a positive integer")


@contextmanager
def dask_client(
    *, workers: int | None = None, dask_address: str | None = None, memory_limit: int | str | None = None
) -> Iterator[Client]:
    """A Dask client on a fresh LocalCluster of processes, or on an existing cluster; both closed on exit.

    The Prefect task runs stay in the flow process, one per Dask task they wait for (see
    ``flows.prefect_tasks.ingest_batch_task``), so the workers run plain functions: they need musicflow
    importable, never a Prefect API.

    Parameters
    ----------
    workers : int, optional
        Worker processes of the LocalCluster (one thread each: decoding and
        FFTs are CPU bound). Defaults to the cores this process may use.
    dask_address : str, optional
        ``tcp://host:8786`` of an existing scheduler (dask-kubernetes,
        dask-jobqueue, Coiled...); ``workers`` is then ignored.
    memory_limit : int or str, optional
        Per worker (bytes, or Dask's "2GiB"); defaults to :func:`worker_memory_limit`.
    """
    from distributed import Client, LocalCluster

    check_cluster_options(workers=workers, dask_address=dask_address)
    # Dask's INFO chatter about nannies and workers would drown the flow's own logs.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if dask_address:
        with Client(dask_address, set_as_default=False) as client:
            yield client
        return
    n_workers = default_workers() if workers is None else workers
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
            memory_limit=worker_memory_limit(n_workers) if memory_limit is None else memory_limit,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client
