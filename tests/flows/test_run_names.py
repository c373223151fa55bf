"""The short locations flow-run names are made of (flows/runtime/names.py); the names themselves are
checked on real runs in tests/deployments/test_live_deploy.py."""

from __future__ import annotations

import pytest

from flows.runtime.names import short_location


@pytest.mark.parametrize(
    ("url", "short"),
    [
        ("/srv/music/songs", "songs"),
        ("/srv/music/songs/", "songs"),
        ("store", "store"),
        ("s3://bucket/data/store/", "store"),
        ("s3://bucket", "s3://bucket"),
        ("s3://bucket/", "s3://bucket"),
        ("file:///tmp/x/store", "store"),
        ("memory://store", "memory://store"),
        (None, "?"),
        ("", "?"),
    ],
)
def test_short_location_keeps_the_last_part(url: str | None, short: str) -> None:
    assert short_location(url) == short
