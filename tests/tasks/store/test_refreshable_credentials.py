"""Credentials that refresh themselves for long runs: storage options that name an AWS profile
(``{"profile": NAME}``) whose ``credential_process`` hands out short-lived keys. botocore calls the
process again as the keys near their expiry, so a run of hours never works on frozen keys; and the
keys themselves are in no option, no parameter and no log line.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid
from pathlib import Path

import pytest

import tasks.store.store
from tasks.store.store import open_store, register_storage_options

# Prints keys valid for 2 minutes (inside botocore's 10-minute mandatory refresh window: each use
# asks for new ones), a new secret each call, and counts its calls.
PROCESS = """
import datetime as dt, json, sys, uuid
with open(sys.argv[1], "a") as calls:
    calls.write("call\\n")
expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
print(json.dumps({
    "Version": 1,
    "AccessKeyId": "REFRESHKEY",
    "SecretAccessKey": "SENTINEL-REFRESHED-" + uuid.uuid4().hex,
    "SessionToken": "SENTINEL-TOKEN-" + uuid.uuid4().hex,
    "Expiration": expires.isoformat().replace("+00:00", "Z"),
}))
"""


def test_a_profile_with_a_credential_process_is_asked_again_before_its_keys_expire(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, calls = tmp_path / "credentials.py", tmp_path / "calls.txt"
    script.write_text(PROCESS)
    config = tmp_path / "aws-config"
    config.write_text(
        f"[profile musicflow-refresh]\ncredential_process = {sys.executable} {script} {calls}\n"
        "region = us-east-1\n"
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setattr(tasks.store.store, "_STORAGE_OPTIONS", {})
    url = f"{s3_bucket}/refresh-{uuid.uuid4().hex[:8]}"
    register_storage_options(url, {"profile": "musicflow-refresh"})

    store = open_store(url)
    for index in range(3):
        store.write_json({"index": index, "at": dt.datetime.now(dt.UTC).isoformat()}, f"part-{index}.json")
        assert store.read_json(f"part-{index}.json")["index"] == index

    assert len(calls.read_text().splitlines()) >= 2  # asked again: the keys were not frozen at start
    assert "SENTINEL" not in json.dumps(tasks.store.store.registered_storage_options())
