"""One Prefect API for the flow process and every Dask worker.

Without a configured API, Prefect starts an ephemeral server in each process
that runs a task, and process-based Dask workers would each get their own
(slow, and SQLite "database is locked"). :func:`ensure_prefect_api` makes sure
there is exactly one server and that ``PREFECT_API_URL`` names it, in this
process's environment, which worker processes inherit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.errors import ConfigError, ServiceError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
logger = logging.getLogger(__name__)


def api_healthy(api_url: str, *, timeout: float = 2.0) -> bool:
    """Whether the Prefect API at ``api_url`` answers, asked through Prefect's own client: the
    credentials Prefect is configured with go along (``PREFECT_API_KEY`` for Prefect Cloud,
    ``PREFECT_API_AUTH_STRING`` for a server started with ``PREFECT_SERVER_API_AUTH_STRING``).
    An API that answers its health check but refuses those credentials is a :class:`ConfigError`
    that says so (a protected server's ``/health`` answers anyone)."""
    from prefect.client.orchestration import SyncPrefectClient  # lazy: start-up
    from prefect.exceptions import PrefectHTTPStatusError  # lazy: start-up
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY  # lazy: start-up

    def secret(value: Any) -> str | None:
        return value.get_secret_value() if hasattr(value, "get_secret_value") else value

    client = SyncPrefectClient(
        api_url,
        auth_string=secret(PREFECT_API_AUTH_STRING.value()),
        api_key=secret(PREFECT_API_KEY.value()),
        httpx_settings={"timeout": timeout},
    )
    with client:
        if client.api_healthcheck() is not None:
            return False
        try:
            client.api_version()  # an authenticated call: /health is open on a protected server
        except PrefectHTTPStatusError as error:
            if error.response.status_code in (401, 403):
                raise ConfigError(
                    f"Prefect API {api_url!r} refused the credentials ({error.response.status_code}): set "
                    "PREFECT_API_AUTH_STRING (a server started with PREFECT_SERVER_API_AUTH_STRING) or "
                    "PREFECT_API_KEY (Prefect Cloud)"
                ) from None
            return False
        except Exception:  # not answering as a Prefect API does
            return False
    return True


def ensure_prefect_api(*, start: bool = True, log_dir: Path | None = None, wait_seconds: float = 90.0) -> str:
    """Return the URL of a healthy Prefect API, starting a local server if needed.

    1. ``PREFECT_API_URL`` configured (environment or profile): use it, it must answer.
    2. A server already answering on 127.0.0.1:4200: use it.
    3. Otherwise start ``prefect server start`` in the background (it keeps
       running after we exit, so the runs stay browsable in the UI).
    """
    from prefect.settings import PREFECT_API_URL

    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if configured:
        if not api_healthy(configured):
            raise ServiceError(f"Prefect API {configured!r} (PREFECT_API_URL) is not answering")
        _use_api(configured)
        return configured
    local = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/api"
    if not api_healthy(local):
        if not start:
            raise ServiceError(
                f"no Prefect API at {local}: run `prefect server start` or set PREFECT_API_URL"
            )
        _start_server(log_dir or Path.home() / ".musicflow")
        deadline = time.monotonic() + wait_seconds
        while not api_healthy(local):
            if time.monotonic() > deadline:
                raise ServiceError(f"Prefect server did not answer at {local} within {wait_seconds:.0f} s")
            time.sleep(0.5)
    _use_api(local)
    return local


def _use_api(url: str) -> None:
    """Make ``url`` the Prefect API of this process and of every process it starts.

    The environment is for the child processes (Dask workers, subprocesses); this process's Prefect
    read its settings when it was imported, so they are read again: without that, the flow run here
    started an ephemeral API server of its own (a child uvicorn over the same database), its events
    never reached the server's automations, and a process whose child server died hung at exit
    draining its events (found by the soak, issue 26)."""
    from prefect.context import refresh_global_settings_context  # lazy: start-up

    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()


def ui_url(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")


def _server_command(host: str, port: int) -> list[str]:
    """``prefect server start`` on ``host:port``, with this interpreter's ``prefect`` when it has one."""
    prefect_cli = Path(sys.executable).with_name("prefect")
    prefect = str(prefect_cli) if prefect_cli.exists() else "prefect"
    return [prefect, "server", "start", "--host", host, "--port", str(port)]


@contextlib.contextmanager
def own_server(home: Path, *, wait_seconds: float = 180.0) -> Iterator[str]:
    """A ``prefect server start`` (API and UI) on a free port of 127.0.0.1 with ``home`` as its
    ``PREFECT_HOME``, so its own SQLite database (``home/prefect.db``) and log (``home/server.log``);
    yields its API URL and stops it on exit. For tests and benchmarks that need a server of their own."""
    with socket.socket() as probe:
        probe.bind((DEFAULT_HOST, 0))
        port = probe.getsockname()[1]
    api = f"http://{DEFAULT_HOST}:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_UI_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}  # fmt: skip
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # the default: PREFECT_HOME/prefect.db
    with open(home / "server.log", "wb") as log:
        server = subprocess.Popen(
            _server_command(DEFAULT_HOST, port), env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + wait_seconds
        while not api_healthy(api):
            if server.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"the Prefect server at {api} did not start: see {home / 'server.log'}")
            time.sleep(0.5)
        yield api
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _start_server(log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "prefect-server.log"
    logger.info("starting a Prefect server on %s:%s (log: %s)", DEFAULT_HOST, DEFAULT_PORT, log_path)
    command = _server_command(DEFAULT_HOST, DEFAULT_PORT)
    with open(log_path, "ab") as log:
        subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command, like `prefect server start &`
            env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"},
        )
