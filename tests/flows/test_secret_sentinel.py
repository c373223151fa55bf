"""A secret never lands anywhere: a sentinel secret key and session token reach S3 (moto) through
``--storage-options`` / ``--source-options`` files on the CLI and through a prefect-aws block in the
pipeline flow; an ingest that fails for some songs (a non-audio ``.mp3``, an empty ``.wav``), a
training and a generation run with them (``musicflow pipeline``, and the pipeline flow in this
process), and a store on an endpoint that refuses connections fails
with them. Then everything written is scanned: the CLI's stdout and stderr, this process's output
(the flow's logs and its Dask workers'), every flow run, task run, log, artifact and event the
Prefect server holds (through its client), the server's database file itself, and every file of
the store (catalog, shards, stats, config, cards, metrics, clips). The sentinel appears nowhere.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_BLOCK
from helpers import musicflow, write_periodic_songs

SECRET = f"SENTINEL-SECRET-{uuid.uuid4().hex}"
TOKEN = f"SENTINEL-TOKEN-{uuid.uuid4().hex}"
SENTINELS = (SECRET, TOKEN)


class MotoS3:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def options(self, endpoint_url: str | None = None) -> dict[str, Any]:
        """s3fs options carrying the sentinel secret and session token (moto accepts any)."""
        return {
            "key": "SENTINELKEYID",
            "secret": SECRET,
            "token": TOKEN,
            "endpoint_url": endpoint_url or self.url,
            "client_kwargs": {"region_name": "us-east-1"},
        }

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options())


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    import boto3

    server = MotoS3()
    client = boto3.client(
        "s3",
        endpoint_url=server.url,
        aws_access_key_id="SENTINELKEYID",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    for bucket in ("songs", "store"):
        client.create_bucket(Bucket=bucket)
    try:
        yield server
    finally:
        server.server.stop()


def upload_songs(moto: MotoS3, tmp_path: Path, prefix: str) -> str:
    """Three 1-s songs, a non-audio ``.mp3`` and an empty ``.wav`` (two failed rows) under
    ``s3://songs/<prefix>``."""
    local = tmp_path / f"songs-{prefix}"
    write_periodic_songs(local, n_songs=3, seconds=1.0, block_size=TINY_BLOCK)
    (local / "not-audio.mp3").write_bytes(b"this is not an mp3 file at all\n" * 50)
    (local / "empty.wav").write_bytes(b"")
    fs = moto.fs()
    for path in sorted(local.iterdir()):
        fs.put_file(str(path), f"songs/{prefix}/{path.name}")
    return f"s3://songs/{prefix}"


def leaks(text: str) -> list[str]:
    return [sentinel[:24] for sentinel in SENTINELS if sentinel in text]


def store_files(moto: MotoS3, prefix: str) -> dict[str, bytes]:
    fs = moto.fs()
    return {path: fs.cat_file(path) for path in fs.find(f"store/{prefix}")}


def prefect_records(since: float) -> dict[str, str]:
    """Every flow run, task run, log, artifact and event the server holds from ``since`` on, as
    JSON text by kind and id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort
    from prefect.types import DateTime

    start = DateTime.fromtimestamp(since)

    async def fetch() -> dict[str, str]:
        found: dict[str, str] = {}
        async with get_client() as client:
            runs = await client.read_flow_runs(limit=200)
            for run in runs:
                if run.created is None or run.created.timestamp() < since:
                    continue
                found[f"flow-run {run.name}"] = run.model_dump_json()
                for state in await client.read_flow_run_states(run.id):
                    found[f"flow-run-state {run.name} {state.id}"] = state.model_dump_json()
            for task_run in await client.read_task_runs(limit=200):
                if task_run.created is None or task_run.created.timestamp() < since:
                    continue
                found[f"task-run {task_run.name}"] = task_run.model_dump_json()
            offset = 0
            while True:
                logs = await client.read_logs(
                    LogFilter(timestamp=LogFilterTimestamp(after_=start)),
                    limit=200,
                    offset=offset,
                    sort=LogSort.TIMESTAMP_ASC,
                )
                for log in logs:
                    found[f"log {log.id}"] = log.model_dump_json()
                if len(logs) < 200:
                    break
                offset += 200
            for artifact in await client.read_artifacts(limit=200):
                if artifact.created is None or artifact.created.timestamp() < since:
                    continue
                found[f"artifact {artifact.key} {artifact.id}"] = artifact.model_dump_json()
            query: dict[str, Any] = {"filter": {"occurred": {"since": start.isoformat()}}, "limit": 50}
            response = await client.request("POST", "/events/filter", json=query)
            while True:
                page = response.json()
                for event in page["events"]:
                    found[f"event {event['event']} {event['id']}"] = json.dumps(event)
                if not page.get("next_page"):
                    break
                response = await client._client.get(page["next_page"])
        return found

    return asyncio.run(fetch())


def database_file() -> Path | None:
    """The SQLite file of the test server (None for another database)."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    if "sqlite" not in url:
        return None
    return Path(url.split(":///", 1)[1])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server", "no_ambient_credentials")
def test_a_sentinel_secret_appears_nowhere(
    moto: MotoS3, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    since = time.time() - 1
    outputs: dict[str, str] = {}

    # --- the CLI: options files; ingest (with failed songs), train, generate in one command ---
    source = upload_songs(moto, tmp_path, "cli")
    options = tmp_path / "options.json"
    options.write_text(json.dumps(moto.options()))
    result = musicflow(
        *("pipeline", source, "--store", "s3://store/cli", "--storage-options", f"@{options}"),
        *("--source-options", f"@{options}", "--block-size", str(TINY_BLOCK), "--workers", "1"),
        *("--epochs", "1", "--hidden", "16", "--seq-len", "4", "--hop", "2", "--seconds", "0.5"),
        timeout=600,
    )
    outputs["cli pipeline stdout"], outputs["cli pipeline stderr"] = result.stdout, result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 failed" in result.stdout + result.stderr, result.stdout + result.stderr[-3000:]
    refused = tmp_path / "refused.json"
    unreachable = {
        **moto.options(f"http://127.0.0.1:{closed_port()}"),
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    refused.write_text(json.dumps(unreachable))
    failed = musicflow("status", "--store", "s3://store/refused", "--storage-options", f"@{refused}")
    outputs["cli refused stdout"], outputs["cli refused stderr"] = failed.stdout, failed.stderr
    assert failed.returncode == 1, failed.stderr[-3000:]  # an endpoint that does not answer: a failed run
    assert failed.stderr.startswith("musicflow: error: cannot reach store 's3://store/refused'")

    # --- the flows: the pipeline with a prefect-aws block holding the secret ---
    from prefect_aws import AwsCredentials

    from flows.pipeline import pipeline

    # No session token in the block: prefect-aws keeps ``aws_session_token`` as a plain string, which
    # the server shows in the block's ``prefect.block-document.created`` event and stores in clear
    # (docs/credentials.md); the secret key is a SecretStr, encrypted and never shown.
    AwsCredentials(
        aws_access_key_id="SENTINELKEYID",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": moto.url},
    ).save("sentinel-s3", overwrite=True)
    flow_source = upload_songs(moto, tmp_path, "flows")
    state = pipeline(
        source=flow_source,
        store="s3://store/flows",
        source_block="aws-credentials/sentinel-s3",
        store_block="aws-credentials/sentinel-s3",
        block_size=TINY_BLOCK,
        workers=1,
        epochs=1,
        hidden=16,
        seq_len=4,
        hop=2,
        seconds=0.5,
        return_state=True,
    )
    result = state.result()
    assert (result["ingest"]["songs_ok"], result["ingest"]["songs_failed"]) == (3, 2), result["ingest"]
    captured = capfd.readouterr()
    outputs["this process stdout"], outputs["this process stderr"] = captured.out, captured.err

    # --- scan everything written ---
    found = {name: leaks(text) for name, text in outputs.items()}
    records = prefect_records(since)
    assert any(name.startswith("log ") for name in records) and any(
        name.startswith("event ") for name in records
    )
    assert any(name.startswith("artifact ") for name in records)
    found.update({name: leaks(text) for name, text in records.items()})
    for prefix in ("cli", "flows"):
        files = store_files(moto, prefix)
        assert any(path.endswith("card.json") for path in files)
        assert any(path.endswith("metrics.json") for path in files)
        assert any("/catalog/" in path for path in files)
        found.update({path: leaks(data.decode("latin-1")) for path, data in files.items()})
    database = database_file()
    if database is not None:
        for path in database.parent.glob(database.name + "*"):  # the file, its -wal and -shm
            found[str(path)] = leaks(path.read_bytes().decode("latin-1"))
    assert {name: hits for name, hits in found.items() if hits} == {}
