"""musicflow.server: the Prefect API musicflow talks to, checked the way Prefect itself talks to it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from helpers import ROOT

from musicflow.server import api_healthy, ensure_prefect_api
from tasks.errors import ConfigError, ServiceError, exit_code

AUTH = "Basic " + base64.b64encode(b"musicflow:sesame").decode()


@pytest.fixture(autouse=True)
def _prefect_settings_restored() -> Iterator[None]:
    """ensure_prefect_api re-reads this process's Prefect settings (the API it chose): put back the
    ones the session had, whatever each test chose."""
    from prefect import context

    saved = context.GLOBAL_SETTINGS_CONTEXT
    yield
    context.GLOBAL_SETTINGS_CONTEXT = saved


@pytest.fixture
def protected_api() -> Iterator[str]:
    """An API on 127.0.0.1 protected as a Prefect server started with PREFECT_SERVER_API_AUTH_STRING
    is: its health check answers anyone, every other route only the right credentials (401)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # as a Prefect server started with PREFECT_SERVER_API_AUTH_STRING: /health answers anyone,
            # the rest only the right credentials
            allowed = self.path == "/api/health" or self.headers.get("Authorization") == AUTH
            self.send_response(200 if allowed else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            body = b'"3.8.0"' if self.path == "/api/admin/version" else b"true"
            self.wfile.write(body if allowed else b'{"detail": "Unauthorized"}')

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/api"
    server.shutdown()
    server.server_close()


def test_a_protected_api_answers_with_prefects_credentials(
    protected_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", protected_api)
    without_credentials = temporary_settings(restore_defaults={PREFECT_API_AUTH_STRING})
    with (
        without_credentials,
        pytest.raises(ConfigError, match=r"refused the credentials .*PREFECT_API_AUTH_STRING"),
    ):
        ensure_prefect_api(start=False)
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: "musicflow:sesame"}):
        assert api_healthy(protected_api)
        assert ensure_prefect_api(start=False) == protected_api


def test_an_api_that_does_not_answer_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that is down is a failure of the run (exit 1), not a bad argument (exit 2)."""
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with pytest.raises(ServiceError, match="is not answering") as raised:
        ensure_prefect_api(start=False)
    assert exit_code(raised.value) == 1


@pytest.mark.usefixtures("prefect_server")
def test_the_api_found_is_the_one_this_process_uses(tmp_path: Path) -> None:
    """Issue 26 (found by the soak): the CLI found a server and exported its URL, but its own Prefect
    had read its settings at import, so the flow run here started an ephemeral API server of its own
    (a child uvicorn): its events missed the server's automations, and when that child died the
    command hung at exit. A fresh process with no API configured and a server on the default port."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    script = (
        "import musicflow.server as server\n"
        f"server.DEFAULT_PORT = {port}\n"
        "url = server.ensure_prefect_api(start=False)\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.server.api.server import SubprocessASGIServer\n"
        "with get_client(sync_client=True) as client:\n"
        "    print(url, client.api_url, len(SubprocessASGIServer._instances))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile naming an API either
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    found, used, ephemeral = done.stdout.split()
    assert found == url and used.rstrip("/") == url.rstrip("/") and ephemeral == "0", done.stdout
