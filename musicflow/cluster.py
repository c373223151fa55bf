"""The Dask side: a LocalCluster of processes by default, or an existing cluster by address."""

from __future__ import annotations

import logging
import os
import re

from prefect_dask import DaskTaskRunner

from musicflow.errors import ConfigError

_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc|ws|wss)://[^\s/]+(:\d+)?/?$")


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def make_task_runner(*, workers: int | None = None, dask_address: str | None = None) -> DaskTaskRunner:
    """A Prefect task runner on Dask.

    Parameters
    ----------
    workers : int, optional
        Worker processes of the LocalCluster (one thread each: decoding and
        FFTs are CPU bound). Defaults to the number of cores.
    dask_address : str, optional
        ``tcp://host:8786`` of an existing scheduler (dask-kubernetes,
        dask-jobqueue, Coiled...); ``workers`` is then ignored.
    """
    # Dask's INFO chatter about nannies and workers would drown the flow's own logs.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if dask_address:
        if not _ADDRESS.match(dask_address):
            raise ConfigError(f"invalid dask address {dask_address!r}: expected e.g. tcp://127.0.0.1:8786")
        return DaskTaskRunner(address=dask_address)
    n_workers = default_workers() if workers is None else workers
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ConfigError(f"invalid workers {workers!r}: must be a positive integer")
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "silence_logs": logging.WARNING,
        },
    )
