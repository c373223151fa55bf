"""``musicflow report``: a static page to listen to a store (tasks/report.py), opened in a real
headless Chromium (Playwright, Debian's chromium): the page loads, every ``<audio>`` element has the
clip's duration, every image decodes; an S3 store's media are copied next to the page. A generated
run's own page (``write_run_page``, the generate flow's artifact links to it) in the run's folder:
its links resolve, locally and through presigned S3 URLs.
Set MUSICFLOW_UI_SCREENSHOTS=DIR to keep the screenshot."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from helpers import CHROMIUM, chromium_browser, keep_screenshots, musicflow

from tasks.generation.generate import generate_run
from tasks.report import REPORT_PAGE, write_report, write_run_page
from tasks.store.store import open_store


@pytest.fixture(scope="module")
def listened(tiny_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the tiny model's store with one generated run of two 1 s clips."""
    store = tmp_path_factory.mktemp("report") / "store"
    shutil.copytree(tiny_model[0], store)
    run = generate_run(open_store(str(store)), seconds=1.0, count=2, run_id="two-clips")
    return {"store": str(store), "model_id": tiny_model[1], "run": run}


def test_the_page_plays_in_chromium(listened: dict[str, Any], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    out = tmp_path / "page"
    result = musicflow("report", "--store", listened["store"], "--out", str(out))
    assert result.returncode == 0, result.stderr
    page_path = out / REPORT_PAGE
    assert str(page_path.resolve()) in result.stdout

    with sync_api.sync_playwright() as driver:
        browser = chromium_browser(driver)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(page_path.as_uri())
            page.wait_for_function(
                "[...document.querySelectorAll('audio')].every(a => a.readyState >= 1)", timeout=30_000
            )
            players = page.evaluate(
                "[...document.querySelectorAll('audio')].map(a => [a.currentSrc, a.duration])"
            )
            images = page.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
            text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "musicflow-report.png"), full_page=True)
        finally:
            browser.close()

    run = listened["run"]
    assert len(players) == len(run["clips"]) == 2
    for (source, duration), clip in zip(players, run["clips"], strict=True):
        assert source.endswith(f"/media/generated/two-clips/{clip['name']}.mp3"), source
        assert duration == pytest.approx(clip["metrics"]["seconds"], abs=0.1)
    assert sorted(src for src, _ in images) == [
        "media/generated/two-clips/clip-01.png",
        "media/generated/two-clips/clip-02.png",
        f"media/models/{listened['model_id']}/loss-curve.png",
    ]
    assert all(width > 100 for _, width in images), images  # decoded, not broken images
    assert listened["model_id"] in text and "two-clips" in text
    for axis, scored in run["quality"]["axes"].items():  # each axis beside its anchor or the reason
        assert axis in text
        assert (scored.get("not_scored") or scored["anchor"]) in text
    keep_screenshots(tmp_path, "musicflow-report.png")


def test_an_s3_stores_media_are_copied_beside_the_page(
    listened: dict[str, Any], s3_bucket: str, tmp_path: Path
) -> None:
    remote = f"{s3_bucket}/store"
    store = open_store(remote)
    store.fs.put(listened["store"], store.root, recursive=True)
    page = write_report(store, tmp_path / "page")
    html = page.read_text()
    local = Path(listened["store"])
    for name in ("clip-01.mp3", "clip-01.wav", "clip-02.png"):
        copied = tmp_path / "page" / "media" / "generated" / "two-clips" / name
        assert copied.read_bytes() == (local / "generated" / "two-clips" / name).read_bytes()
        assert f"media/generated/two-clips/{name}" in html
    assert remote in html and "s3://" not in html.replace(remote, "")  # no link the browser cannot open
    # again: nothing changed, nothing copied (the copies are kept as they are)
    stamp = (tmp_path / "page" / "media" / "generated" / "two-clips" / "clip-01.wav").stat().st_mtime_ns
    write_report(store, tmp_path / "page")
    assert (
        tmp_path / "page" / "media" / "generated" / "two-clips" / "clip-01.wav"
    ).stat().st_mtime_ns == stamp


def test_report_on_a_missing_store_is_one_line(tmp_path: Path) -> None:
    result = musicflow("report", "--store", str(tmp_path / "nowhere"), "--out", str(tmp_path / "page"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nowhere" in lines[0], result.stderr
    assert not (tmp_path / "page").exists()


def _sources(html: str) -> list[str]:
    """The page's audio and image sources, as written."""
    return [source.replace("&amp;", "&") for source in re.findall(r"<(?:source|img) src='([^']+)'", html)]


def test_a_local_run_page_sits_beside_its_clips(listened: dict[str, Any]) -> None:
    url = write_run_page(open_store(listened["store"]), "two-clips", expires_seconds=60)
    assert url is not None and url.startswith("file://")
    page = Path(unquote(urlsplit(url).path))
    assert page == Path(listened["store"]).resolve() / "generated" / "two-clips" / REPORT_PAGE
    html = page.read_text()
    # each clip's players and spectrogram, mp3 first, named beside the page (nothing copied)
    assert _sources(html) == [
        name for clip in ("clip-01", "clip-02") for name in (f"{clip}.mp3", f"{clip}.wav", f"{clip}.png")
    ]
    assert all((page.parent / name).stat().st_size > 0 for name in _sources(html))
    for axis, scored in listened["run"]["quality"]["axes"].items():
        assert axis in html and (scored.get("not_scored") or scored["anchor"]) in html


def test_an_s3_run_page_is_presigned_and_so_are_its_clips(listened: dict[str, Any], s3_bucket: str) -> None:
    store = open_store(f"{s3_bucket}/store")
    store.fs.put(listened["store"], store.root, recursive=True)
    url = write_run_page(store, "two-clips", expires_seconds=600)
    assert url is not None and "Signature=" in url
    response = httpx.get(url)  # a browser's request: no credentials
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")  # rendered, not downloaded
    sources = _sources(response.text)
    assert len(sources) == 6 and all("Signature=" in source for source in sources)
    local = Path(listened["store"], "generated", "two-clips")
    for source in sources:
        name = urlsplit(source).path.rsplit("/", 1)[-1]
        assert httpx.get(source).content == (local / name).read_bytes()


def test_a_run_page_needs_a_url_a_browser_opens(listened: dict[str, Any]) -> None:
    store = open_store("memory://run-page-store")
    store.fs.put(listened["store"], store.root, recursive=True)
    if store.exists("generated", "two-clips", REPORT_PAGE):  # the local test's page, copied along
        store.fs.rm(store.path("generated", "two-clips", REPORT_PAGE))
    assert write_run_page(store, "two-clips", expires_seconds=60) is None
    assert not store.exists("generated", "two-clips", REPORT_PAGE)
