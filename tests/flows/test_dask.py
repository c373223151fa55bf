"""Dask the way its users run it: the dashboard link, an adaptive cluster that scales up to the
queued batches, a TLS cluster, and the cluster ``musicflow serve`` keeps for its runs."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster
from distributed.security import Security

from flows.ingest import MAX_BATCHES_IN_FLIGHT, batches_in_flight, ingest
from flows.runtime.cluster import KeptCluster, dashboard_link, dask_client, security
from flows.runtime.progress import listening
from tasks.errors import ConfigError


def test_batches_in_flight_follow_the_pending_batches() -> None:
    # An adaptive cluster with no worker yet: every batch is queued, not two per (absent) thread.
    assert batches_in_flight(20, 0) == 20
    assert batches_in_flight(20, 2) == 20
    assert batches_in_flight(1, 2) == 4  # room for a failed batch's files, one by one
    assert batches_in_flight(10_000, 4) == MAX_BATCHES_IN_FLIGHT
    assert batches_in_flight(10, 500) == 1000


def test_security_from_paths_and_its_errors(tmp_path: Path) -> None:
    assert security(None) is None
    with pytest.raises(ConfigError, match="'tls_cert'"):
        security({"tls_cert": "x"})
    with pytest.raises(ConfigError, match=r"tls_ca_file '/nowhere/ca\.pem'"):
        security({"tls_ca_file": "/nowhere/ca.pem"})
    files = _temporary_tls(tmp_path)
    made = security(files)
    assert made is not None and made.tls_client_cert == files["tls_client_cert"]


def _temporary_tls(folder: Path, temporary: Security | None = None) -> dict[str, str]:
    """A self-signed CA, certificate and key (of ``temporary``, or a new ``Security.temporary()``)
    as PEM files: what a user's ``--dask-security`` names."""
    temporary = temporary or Security.temporary()
    files = {}
    for key, value in (
        ("tls_ca_file", temporary.tls_ca_file),
        ("tls_client_cert", temporary.tls_client_cert),
        ("tls_client_key", temporary.tls_client_key),
    ):
        path = folder / f"{key}.pem"
        path.write_text(value)
        files[key] = str(path)
    return files


@pytest.mark.timeout(120)
def test_local_cluster_dashboard_on_and_off() -> None:
    with dask_client(workers=1) as client:
        link = dashboard_link(client)
        assert link and link.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(link, timeout=30) as page:  # the dashboard itself answers
            assert page.status == 200 and b"bokeh" in page.read().lower()
    with dask_client(workers=1, dashboard=False) as client, pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(str(client.dashboard_link), timeout=30)  # health checks only: no page


@pytest.fixture
def songs(tmp_path: Path, demo_songs: list[Path]) -> Path:
    folder = tmp_path / "songs"
    folder.mkdir()
    for song in demo_songs[:4]:
        (folder / song.name).hardlink_to(song)
    return folder


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_adaptive_cluster_scales_up_and_the_run_shows_its_dashboard(songs: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    stop = threading.Event()
    notices: list[str] = []
    with LocalCluster(
        n_workers=0,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        cluster.adapt(minimum=0, maximum=2, interval="200ms")

        def watch() -> None:
            while not stop.wait(0.1):
                seen.append(len(cluster.scheduler_info["workers"]))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            with listening(lambda *report: None, notice=notices.append):
                summary = ingest(
                    source=str(songs),
                    store=str(tmp_path / "store"),
                    dask_address=cluster.scheduler_address,
                    batch_mb=0.001,  # a batch per song
                )
        finally:
            stop.set()
            watcher.join()
        link = cluster.dashboard_link
    assert summary["songs_ok"] == 4 and len(summary["shards"]) == 4
    assert seen[0] == 0 and max(seen) > 0, seen
    assert notices == [f"Dask dashboard: {link}"]


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.timeout(300)
def test_ingest_on_a_tls_cluster(songs: Path, tmp_path: Path) -> None:
    cluster_security = Security.temporary()
    notices: list[str] = []
    files = _temporary_tls(tmp_path, cluster_security)
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tls://",
        host="127.0.0.1",
        security=cluster_security,
        dashboard_address="127.0.0.1:0",  # a dashboard the run does not show (dashboard=False)
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        with listening(lambda *report: None, notice=notices.append):
            summary = ingest(
                source=str(songs), store=str(tmp_path / "store"), dask_address=cluster.scheduler_address,
                dask_security=files, dashboard=False,
            )  # fmt: skip
    assert summary["songs_ok"] == 4
    assert notices == []  # --no-dashboard: no link, although this scheduler has one


@pytest.fixture
def kept() -> Iterator[KeptCluster]:
    with KeptCluster(workers=1, dashboard=False).start(check_every=3600) as cluster:
        yield cluster


@pytest.mark.timeout(180)
def test_kept_cluster_starts_again_on_the_same_address(kept: KeptCluster) -> None:
    def answers(address: str) -> Any:
        with Client(address, timeout=30, set_as_default=False) as client:
            return client.submit(sum, [1, 2], pure=False).result(timeout=60)

    assert kept.alive() and answers(kept.address) == 3
    assert not kept.restart_if_dead()  # alive: left alone
    assert kept._cluster is not None
    kept._cluster.close()  # the cluster dies
    assert not kept.alive()
    assert kept.restart_if_dead() and kept.restarts == 1
    assert kept.alive() and answers(kept.address) == 3


def test_a_batch_queued_behind_others_waits_for_them_within_its_allowance(tmp_path: Path) -> None:
    """Every batch is queued on the cluster at once, so a batch's wait allows for the batches ahead
    of it (``queued_behind_s``, their limits per thread, which the ingest flow sums): one queued
    behind 2 s of work on the only thread, with a 1 s limit of its own, times out without the
    allowance and completes with it."""
    import time

    from flows.prefect_tasks import ingest_batch_task
    from tasks.config import ingest_config

    config = ingest_config(batch_timeout=1.0)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        arguments = {"files": [], "store_url": str(tmp_path / "store"), "dataset_id": "d", "config": config}
        client.submit(time.sleep, 2.0, pure=False)  # the batch ahead, on the only thread
        with pytest.raises(TimeoutError, match="within 1 s"):
            ingest_batch_task.fn(**arguments, client=client)
        client.submit(time.sleep, 2.0, pure=False)
        result = ingest_batch_task.fn(**arguments, client=client, queued_behind_s=4.0)
        assert result.rows == []
