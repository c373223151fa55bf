"""Images of the store (spectrograms, loss curves) shown in the Prefect UI's markdown artifacts.

A browser cannot open a local path nor an ``s3://`` URL. Where the store can sign (S3) with
long-lived keys, the artifact shows the image through a presigned URL, valid for
:data:`SIGNED_SECONDS`; with temporary credentials (a session token, which a presigned URL
carries in the clear) and anywhere else a small PNG is embedded as a ``data:`` URI (a
spectrogram is 40-150 KB); a larger one is a link to its location.
"""

from __future__ import annotations

import base64

from tasks.store.store import Store

SIGNED_SECONDS = 7 * 24 * 3600  # the longest an S3 presigned URL (SigV4) can be valid
EMBED_BYTES = 1_000_000  # a larger PNG is linked, not embedded in the artifact


def image_markdown(store: Store, *parts: str, alt: str) -> str:
    """Markdown that shows the PNG at ``parts`` of ``store``: ``![alt](URL)``, or a link when it
    can be neither signed nor embedded."""
    url = store.signed_url(*parts, expires_seconds=SIGNED_SECONDS)
    if url is None:
        data = store.read_bytes(*parts)
        if len(data) > EMBED_BYTES:
            location = store.full_url(*parts)
            return f"[{alt}: {location}]({location}) ({len(data) / 1e6:.1f} MB, not embedded)"
        url = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f"![{alt}]({url})"
