"""Credentials the Prefect way: the source on one S3 endpoint, the store on another, each with its
own credentials, and no AWS credential or endpoint variable anywhere.

Two moto servers, each answering one bucket and one access key only (403 otherwise), so that a
request sent to the wrong endpoint, or with the other side's credentials, fails the run. The
pipeline names prefect-aws blocks (the flow-run parameters carry block names, never secrets) and
ingests on a Dask LocalCluster, whose worker processes get the options as a task argument;
``musicflow ingest`` takes them as ``--source-options`` / ``--storage-options`` JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_BLOCK
from helpers import musicflow, write_periodic_songs

from flows.runtime.blocks import storage_options_from_block
from tasks.store.credentials import parse_storage_options

CREDENTIAL = re.compile(r"Credential=([^/]+)/")


class OneBucketOneKey:
    """WSGI middleware for a moto server: only ``bucket``, only for ``access_key``."""

    def __init__(self, app: Callable[..., Any], *, access_key: str, bucket: str) -> None:
        self.app, self.access_key, self.bucket = app, access_key, bucket
        self.requests = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        found = CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        bucket = environ.get("PATH_INFO", "/").lstrip("/").split("/", 1)[0]
        if not found or found.group(1) != self.access_key:
            return self._deny(start_response, "InvalidAccessKeyId", "not this endpoint's access key")
        if bucket and bucket != self.bucket:
            return self._deny(start_response, "AccessDenied", f"this endpoint serves {self.bucket!r} only")
        self.requests += 1
        return self.app(environ, start_response)

    @staticmethod
    def _deny(start_response: Callable[..., Any], code: str, message: str) -> list[bytes]:
        start_response("403 Forbidden", [("Content-Type", "application/xml")])
        return [f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()]


class Endpoint:
    def __init__(self, bucket: str, access_key: str, secret: str) -> None:
        from moto.server import ThreadedMotoServer

        self.bucket, self.access_key, self.secret = bucket, access_key, secret
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        wsgi = self.server._server
        assert wsgi is not None
        self.guard = OneBucketOneKey(wsgi.app, access_key=access_key, bucket=bucket)
        wsgi.app = self.guard  # type: ignore[assignment]

    @property
    def options(self) -> dict[str, Any]:
        """The s3fs options of this endpoint (what --storage-options takes)."""
        return {
            "key": self.access_key,
            "secret": self.secret,
            "endpoint_url": self.url,
            "client_kwargs": {"region_name": "us-east-1"},
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options)


@pytest.fixture(scope="module")
def endpoints() -> Iterator[tuple[Endpoint, Endpoint]]:
    songs = Endpoint("songs", "SONGSKEY", "songs-secret")
    store = Endpoint("store", "STOREKEY", "store-secret")
    # moto servers in one process share their buckets: each is created once, where it belongs
    for endpoint in (songs, store):
        endpoint.client().create_bucket(Bucket=endpoint.bucket)
    try:
        yield songs, store
    finally:
        songs.server.stop()
        store.server.stop()


def upload_songs(songs: Endpoint, tmp_path: Path, prefix: str, n_songs: int = 4) -> str:
    local = tmp_path / "local-songs"
    write_periodic_songs(local, n_songs=n_songs, seconds=1.0, block_size=TINY_BLOCK)
    fs = songs.fs()
    for path in sorted(local.iterdir()):
        fs.put_file(str(path), f"songs/{prefix}/{path.name}")
    return f"s3://songs/{prefix}"


def test_the_guard_refuses_the_other_sides_key_and_bucket(endpoints: tuple[Endpoint, Endpoint]) -> None:
    songs, store = endpoints
    import s3fs

    crossed = s3fs.S3FileSystem(skip_instance_cache=True, **{**songs.options, "endpoint_url": store.url})
    with pytest.raises(PermissionError):
        crossed.ls("store")
    with pytest.raises((PermissionError, FileNotFoundError)):
        store.fs().ls("songs")


@pytest.mark.usefixtures("prefect_server", "no_ambient_credentials")
def test_pipeline_with_blocks_source_and_store_on_two_endpoints(
    endpoints: tuple[Endpoint, Endpoint], tmp_path: Path
) -> None:
    from prefect_aws import AwsCredentials, S3Bucket

    from flows.pipeline import pipeline

    songs, store = endpoints
    source = upload_songs(songs, tmp_path, "blocks")
    AwsCredentials(
        aws_access_key_id=songs.access_key,
        aws_secret_access_key=songs.secret,
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": songs.url},
    ).save("songs-endpoint", overwrite=True)
    S3Bucket(
        bucket_name="store",
        credentials=AwsCredentials(
            aws_access_key_id=store.access_key,
            aws_secret_access_key=store.secret,
            region_name="us-east-1",
            aws_client_parameters={"endpoint_url": store.url},
        ),
    ).save("musicflow-store", overwrite=True)
    before = (songs.guard.requests, store.guard.requests)

    state = pipeline(
        source=source,
        store="s3://store/blocks",
        source_block="aws-credentials/songs-endpoint",
        store_block="s3-bucket/musicflow-store",
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

    assert (result["ingest"]["songs_ok"], result["ingest"]["songs_failed"]) == (4, 0), result["ingest"]
    written = store.fs().find("store/blocks")
    assert any("/shards/" in path for path in written)  # by the Dask worker
    assert any(path.endswith("/model.keras") for path in written)
    run_id = result["generate"]["run_id"]
    assert any(path.endswith(f"{run_id}/metrics.json") for path in written)
    assert songs.guard.requests > before[0] and store.guard.requests > before[1]
    assert not songs.fs().find("songs/blocks/datasets")  # nothing of the store on the songs side

    # the flow runs' parameters, which the UI shows, name the blocks and hold no secret
    from prefect.client.orchestration import get_client

    async def parameters() -> list[dict[str, Any]]:
        async with get_client() as client:
            root = await client.read_flow_run(state.state_details.flow_run_id)
            return [root.parameters]

    import asyncio

    (shown,) = asyncio.run(parameters())
    assert shown["store_block"] == "s3-bucket/musicflow-store"
    assert songs.secret not in json.dumps(shown) and store.secret not in json.dumps(shown)


@pytest.mark.usefixtures("prefect_server", "no_ambient_credentials")
def test_cli_ingest_with_json_options_for_each_endpoint(
    endpoints: tuple[Endpoint, Endpoint], tmp_path: Path
) -> None:
    songs, store = endpoints
    source = upload_songs(songs, tmp_path, "cli", n_songs=2)
    options_file = tmp_path / "store-options.json"
    options_file.write_text(json.dumps(store.options))
    command = ["ingest", source, "--store", "s3://store/cli"]
    command += ["--source-options", json.dumps(songs.options), "--storage-options", f"@{options_file}"]
    command += ["--block-size", str(TINY_BLOCK), "--workers", "1", "--json"]
    command += ["--batch-mb", "0.05"]  # 90 kB songs: one a batch

    result = musicflow(*command, timeout=240)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["songs_ok"], summary["songs_failed"]) == (2, 0), summary
    assert any("/shards/" in path for path in store.fs().find("store/cli"))
    # its output is a pipe, not a terminal: one progress line per batch, no progress bar
    batches = [line for line in result.stderr.splitlines() if line.startswith("ingest: ") and "songs" in line]
    assert [line.split(" (")[0] for line in batches] == ["ingest: 1/2", "ingest: 2/2"], result.stderr
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr

    # without the store's options the same command fails, in one line naming the store
    command = [arg for arg in command if not arg.startswith("@")]
    command.remove("--storage-options")
    failed = musicflow(*command, timeout=240)
    assert failed.returncode == 2, failed.stderr
    assert "s3://store/cli" in failed.stderr.strip().splitlines()[-1]


def test_block_objects_become_s3fs_options() -> None:
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket

    from tasks.errors import ConfigError

    aws = AwsCredentials(
        aws_access_key_id="AK",
        aws_secret_access_key="SK",
        aws_session_token="TOKEN",
        region_name="eu-west-1",
        aws_client_parameters={"endpoint_url": "http://127.0.0.1:9000", "use_ssl": False, "verify": False},
    )
    assert storage_options_from_block(aws, "s3://any/where") == {
        "key": "AK",
        "secret": "SK",
        "token": "TOKEN",
        "endpoint_url": "http://127.0.0.1:9000",
        "use_ssl": False,
        "client_kwargs": {"region_name": "eu-west-1", "verify": False},
    }
    minio = MinIOCredentials(minio_root_user="u", minio_root_password="p")
    assert storage_options_from_block(S3Bucket(bucket_name="b", credentials=minio), "s3://b/x") == {
        "key": "u",
        "secret": "p",
    }
    with pytest.raises(ConfigError, match="for bucket 'b', not for 's3://other/x'"):
        storage_options_from_block(S3Bucket(bucket_name="b", credentials=minio), "s3://other/x")
    assert parse_storage_options('{"anon": true}') == {"anon": True}
    assert parse_storage_options(None) == {} == parse_storage_options("  ")


def test_exported_options_stay_out_of_the_flow_processs_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """``musicflow serve`` hands the options to the flow runs it starts through the environment; a
    flow run registers them and takes them out, so its ffmpeg, git and Dask workers never see them."""
    import subprocess
    import sys

    from tasks.store.credentials import STORAGE_OPTIONS_ENV, import_storage_options
    from tasks.store.store import register_storage_options, registered_storage_options

    options = {"s3://sentinel-bucket": {"key": "K", "secret": "SENTINEL-SECRET"}}
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(options))
    import_storage_options()
    assert registered_storage_options()["s3://sentinel-bucket"]["secret"] == "SENTINEL-SECRET"
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.environ))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert STORAGE_OPTIONS_ENV not in child.stdout
    assert "SENTINEL" not in child.stdout
    import_storage_options()  # a second flow in the same process (a subflow): nothing to import, no error
    assert registered_storage_options()["s3://sentinel-bucket"]["secret"] == "SENTINEL-SECRET"
    register_storage_options("s3://sentinel-bucket", None)
