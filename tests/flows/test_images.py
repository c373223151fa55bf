"""Images of the store as the Prefect UI's markdown artifacts show them (flows/runtime/images.py):
presigned on S3 (the URL serves the PNG without credentials), embedded when local and small,
a link when too large."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

import flows.runtime.images
from flows.runtime.images import image_markdown
from tasks.store.store import Store, open_store

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def test_a_local_png_is_embedded(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.write_bytes(PNG, "models", "m", "loss-curve.png")
    assert store.signed_url("models", "m", "loss-curve.png", expires_seconds=60) is None
    embedded = base64.b64encode(PNG).decode()
    assert image_markdown(store, "models", "m", "loss-curve.png", alt="loss") == (
        f"![loss](data:image/png;base64,{embedded})"
    )


def test_a_large_local_png_is_a_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows.runtime.images, "EMBED_BYTES", len(PNG) - 1)
    store = open_store(str(tmp_path))
    store.write_bytes(PNG, "big.png")
    markdown = image_markdown(store, "big.png", alt="big")
    assert markdown.startswith(f"[big: {tmp_path}/big.png]({tmp_path}/big.png)")
    assert "data:" not in markdown


def test_an_s3_png_is_shown_through_a_presigned_url(s3_bucket: str) -> None:
    store = open_store(f"{s3_bucket}/store")
    store.write_bytes(PNG, "generated", "run", "clip-01.png")
    markdown = image_markdown(store, "generated", "run", "clip-01.png", alt="clip-01 spectrogram")
    found = re.fullmatch(r"!\[clip-01 spectrogram\]\((http[^)]+)\)", markdown)
    assert found, markdown
    url = found.group(1)
    assert "Signature=" in url  # as botocore signs for this client (SigV2 here, SigV4 where configured)
    response = httpx.get(url)  # a browser's request: no credentials
    assert response.status_code == 200 and response.content == PNG
    # valid for a week (moto does not check signatures: that a signature is verified is AWS's part)
    query = dict(parse_qsl(urlsplit(url).query))
    expires = int(query.get("Expires", 0)) or time.time() + int(query["X-Amz-Expires"])
    assert expires == pytest.approx(time.time() + 7 * 24 * 3600, abs=120)


def test_a_presigned_url_that_would_carry_a_session_token_is_not_made(
    s3_endpoint: str, s3_bucket: str
) -> None:
    """Temporary credentials sign a URL with their session token in its query, in the clear, for
    anyone who reads the artifact: the image is embedded instead (the secret-sentinel test found
    the token in the UI's artifacts and events)."""
    import s3fs

    token = "SESSION-TOKEN-IN-CLEAR"
    fs = s3fs.S3FileSystem(
        key="testing", secret="testing", token=token, client_kwargs={"endpoint_url": s3_endpoint},
        skip_instance_cache=True,
    )  # fmt: skip
    assert token in fs.sign(f"{s3_bucket[5:]}/store/x.png", expiration=60)  # what signing would give
    store = Store(url=f"{s3_bucket}/store", fs=fs, root=f"{s3_bucket[5:]}/store")
    store.write_bytes(PNG, "clip-01.png")
    assert store.signed_url("clip-01.png", expires_seconds=60) is None
    markdown = image_markdown(store, "clip-01.png", alt="clip-01 spectrogram")
    assert markdown.startswith("![clip-01 spectrogram](data:image/png;base64,") and token not in markdown
