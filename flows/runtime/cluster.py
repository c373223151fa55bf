"""The Dask side: a LocalCluster of processes by default, or an existing cluster by address or
scheduler file (TLS too); and the one cluster ``musicflow serve`` keeps for the runs it serves."""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client, LocalCluster, Security

_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc|ws|wss)://[^\s/]+(:\d+)?/?$")

# ``--dask-security``: the keywords of ``distributed.Security`` that musicflow passes on. The
# certificate and key are paths (a flow-run parameter is shown in the UI: never a key's contents).
SECURITY_FILES = ("tls_ca_file", "tls_client_cert", "tls_client_key")
SECURITY_KEYS = (*SECURITY_FILES, "require_encryption", "tls_min_version")
# The dashboard of a LocalCluster musicflow starts: on a free port, on this host.
DASHBOARD_ADDRESS = "127.0.0.1:0"


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


def check_cluster_options(
    *,
    workers: int | None = None,
    dask_address: str | None = None,
    dask_scheduler_file: str | None = None,
    dask_security: dict[str, Any] | None = None,
) -> None:
    """Raise :class:`ConfigError` naming a bad ``workers``, ``dask_address``, ``dask_scheduler_file``
    or ``dask_security``, before anything starts."""
    if dask_address and dask_scheduler_file:
        raise ConfigError(
            f"invalid dask scheduler file {dask_scheduler_file!r}: give a dask address or a scheduler "
            f"file, not both (dask address {dask_address!r})"
        )
    if dask_address:
        if not _ADDRESS.match(dask_address):
            raise ConfigError(f"invalid dask address {dask_address!r}: expected e.g. tcp://127.0.0.1:8786")
    elif dask_scheduler_file:
        if not Path(dask_scheduler_file).is_file():
            raise ConfigError(f"invalid dask scheduler file {dask_scheduler_file!r}: no such file")
    elif workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"invalid workers {workers!r}: must be a positive integer")
    security(dask_security)


def security(spec: dict[str, Any] | None) -> Security | None:
    """``distributed.Security`` from ``--dask-security``'s keywords (paths of the CA, certificate
    and key...); ``None`` for none given (a client then reads dask's ``distributed.comm.tls``
    config, as Dask does). :class:`ConfigError` names an unknown keyword or a missing file."""
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(
            f"invalid dask security {spec!r}: expected a JSON object of {', '.join(SECURITY_KEYS)}"
        )
    for key, value in spec.items():
        if key not in SECURITY_KEYS:
            raise ConfigError(
                f"invalid dask security key {key!r}: expected some of {', '.join(SECURITY_KEYS)}"
            )
        if key in SECURITY_FILES and not (isinstance(value, str) and Path(value).is_file()):
            shown = value if isinstance(value, str) and len(value) < 200 else "(not a path)"
            raise ConfigError(f"invalid dask security {key} {shown!r}: no such file")
    from distributed import Security

    return Security(**spec)


def dashboard_link(client: Any) -> str | None:
    """The Dask dashboard's URL of ``client``'s cluster (its scheduler's HTTP server), or None
    when it has none."""
    if "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    return str(client.dashboard_link)


@contextmanager
def dask_client(
    *,
    workers: int | None = None,
    dask_address: str | None = None,
    dask_scheduler_file: str | None = None,
    dask_security: dict[str, Any] | None = None,
    dashboard: bool = True,
    memory_limit: int | str | None = None,
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
        ``tcp://host:8786`` (or ``tls://...``) of an existing scheduler (dask-kubernetes,
        dask-jobqueue, Coiled, ``musicflow serve``'s...); ``workers`` is then ignored.
    dask_scheduler_file : str, optional
        The JSON file ``dask scheduler --scheduler-file`` writes, instead of an address.
    dask_security : dict, optional
        ``distributed.Security`` keywords for a TLS cluster (see :func:`security`).
    dashboard : bool
        The LocalCluster's dashboard, on a free port (:func:`dashboard_link` gives its URL).
    memory_limit : int or str, optional
        Per worker (bytes, or Dask's "2GiB"); defaults to :func:`worker_memory_limit`.
    """
    from distributed import Client

    check_cluster_options(
        workers=workers,
        dask_address=dask_address,
        dask_scheduler_file=dask_scheduler_file,
        dask_security=dask_security,
    )
    # Dask's INFO chatter about nannies and workers would drown the flow's own logs.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if dask_address or dask_scheduler_file:
        with Client(
            dask_address,
            scheduler_file=dask_scheduler_file,
            security=security(dask_security),
            set_as_default=False,
        ) as client:
            yield client
        return
    n_workers = default_workers() if workers is None else workers
    with (
        _local_cluster(n_workers, dashboard=dashboard, memory_limit=memory_limit) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def _local_cluster(
    n_workers: int, *, dashboard: bool, memory_limit: int | str | None = None, port: int = 0
) -> LocalCluster:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=port,
        # The scheduler's HTTP server (health, metrics) starts even with the dashboard off, on 8787
        # unless told: a free port, so two runs never ask for the same one.
        dashboard_address=DASHBOARD_ADDRESS,
        scheduler_kwargs={"dashboard": dashboard},
        silence_logs=logging.WARNING,
        memory_limit=worker_memory_limit(n_workers) if memory_limit is None else memory_limit,
    )


# How often ``KeptCluster`` checks that its cluster still runs (seconds).
KEEP_CHECK_SECONDS = 5.0


class KeptCluster:
    """One LocalCluster kept for the flow runs ``musicflow serve`` serves: started once (the runs
    skip the cluster start and the workers' imports), started again on the same address when it
    dies (its scheduler closed, or no worker left), so the deployments' ``dask_address`` stays right.
    """

    def __init__(
        self, *, workers: int | None = None, dashboard: bool = True, port: int | None = None
    ) -> None:
        self.n_workers = default_workers() if workers is None else workers
        self.dashboard = dashboard
        self.port = port or free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.restarts = 0
        self._cluster: LocalCluster | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    @property
    def dashboard_link(self) -> str | None:
        cluster = self._cluster
        return str(cluster.dashboard_link) if cluster is not None and self.dashboard else None

    def start(self, *, check_every: float = KEEP_CHECK_SECONDS) -> KeptCluster:
        logging.getLogger("distributed").setLevel(logging.WARNING)
        with self._lock:
            self._cluster = _local_cluster(self.n_workers, dashboard=self.dashboard, port=self.port)
        self._watch = threading.Thread(target=self._keep, args=(check_every,), name="musicflow-keep-dask",
                                       daemon=True)  # fmt: skip
        self._watch.start()
        return self

    def alive(self) -> bool:
        """Whether the cluster runs and has a worker."""
        from distributed.core import Status

        cluster = self._cluster
        if cluster is None or cluster.status != Status.running:
            return False
        try:
            return bool(cluster.scheduler_info.get("workers"))
        except Exception:  # a scheduler that went away mid-question
            return False

    def restart_if_dead(self) -> bool:
        """Start the cluster again, on the same address, when it died; True when it did."""
        with self._lock:
            if self._stop.is_set() or self.alive():
                return False
            logging.getLogger(__name__).warning(
                "the Dask cluster at %s died: starting it again", self.address
            )
            if self._cluster is not None:
                with suppress(Exception):  # already half gone: what matters is the new one
                    self._cluster.close(timeout=10)
            self._cluster = _local_cluster(self.n_workers, dashboard=self.dashboard, port=self.port)
            self.restarts += 1
            return True

    def _keep(self, check_every: float) -> None:
        while not self._stop.wait(check_every):
            try:
                self.restart_if_dead()
            except Exception as error:  # the port still held, say: try again at the next check
                logging.getLogger(__name__).warning("could not start the Dask cluster again: %s", error)

    def close(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join(timeout=30)
        with self._lock:
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None

    def __enter__(self) -> KeptCluster:
        return self.start() if self._cluster is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kept cluster keeps it across restarts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
