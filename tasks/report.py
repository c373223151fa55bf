"""A static HTML page to listen to a store: ``musicflow report``.

Neither the terminal nor the Prefect UI plays audio. :func:`write_report` writes
``OUT/index.html`` with the store's datasets, its models (with their loss curves) and its
generated runs: each clip with an ``<audio>`` player, its spectrogram and metrics, and the
run's quality axes beside their anchors (``metrics.json``'s ``quality.axes``).

The page's images and audio are copied from the store into ``OUT/media/`` (through fsspec:
a local folder and S3 alike), so the folder opens in any browser and can be moved or
served as it is. A file already copied with the same size is not copied again.

:func:`write_run_page` writes the same section for one generated run, as a page of its own in
the run's folder of the store (``generated/<run_id>/index.html``), with nothing copied: a local
store's page names the clips beside it (a ``file://`` URL opens it), an S3 store's page links
them through presigned URLs and is itself presigned. The generate flow's artifact links to it.
"""

from __future__ import annotations

import datetime as dt
import html
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.generation.runs import read_run, read_runs, run_dir
from tasks.model.repository import LOSS_CURVE_FILE, model_dir
from tasks.status import store_status
from tasks.store.store import Store

REPORT_PAGE = "index.html"  # musicflow report's page in OUT, and a run's page in its folder
MEDIA_DIR = "media"
AUDIO_TYPES = {".mp3": "audio/mpeg", ".wav": "audio/wav"}  # the players' sources, in this order

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } code { font-size: 0.85rem; }
.clip { display: flex; gap: 1rem; align-items: flex-start; margin: 1rem 0; }
.clip img { max-width: 32rem; border: 1px solid #ddd; }
.curve { max-width: 36rem; border: 1px solid #ddd; }
.muted { color: #777; }
"""


# The URL a page gives a store file, from the file's folder and name in the store.
Link = Callable[[str, str], str]


def write_report(store: Store, out: Path) -> Path:
    """Write the page and copy its media into ``out``; returns the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    status = store_status(store)

    def copy(directory: str, name: str) -> str:
        return _copy(store, out, directory, name)

    sections = [
        _datasets(status["datasets"]),
        _models(store, copy, status["models"]),
        _generated(store, copy, sorted(read_runs(store), key=lambda run: run["run_id"], reverse=True)),
    ]
    path = out / REPORT_PAGE
    path.write_text(
        _page(
            f"musicflow store <code>{_text(store.url)}</code>", store, sections, made_by="musicflow report"
        ),
        encoding="utf-8",
    )
    return path


def write_run_page(store: Store, run_id: str, *, expires_seconds: int) -> str | None:
    """Write the page of the generated run ``run_id`` (its clips with players, spectrograms and
    metrics, and its quality axes) to ``generated/<run_id>/index.html`` in ``store``; returns a URL
    a browser opens: ``file://`` for a local store, presigned for ``expires_seconds`` where the
    store signs (S3). None where neither can be made (a memory store, or S3 with temporary
    credentials, whose presigned URLs would carry their session token): nothing is written then."""
    directory = run_dir(run_id)
    unsigned: list[str] = []  # store files no URL could be made for

    def link(folder: str, name: str) -> str:
        if store.is_local:
            return name  # beside the page, in the run's folder
        signed = store.signed_url(folder, name, expires_seconds=expires_seconds)
        if signed is None:
            unsigned.append(name)
        return signed or ""

    if store.is_local:
        url: str | None = Path(store.path(directory, REPORT_PAGE)).resolve().as_uri()
    else:
        url = store.signed_url(directory, REPORT_PAGE, expires_seconds=expires_seconds)
    if url is None:
        return None
    run = read_run(store, run_id)
    title, sections = f"musicflow run <code>{_text(run_id)}</code>", [_run(store, link, run)]
    page = _page(title, store, sections, made_by="the generate flow")
    if unsigned:
        return None
    store.write_bytes(page.encode("utf-8"), directory, REPORT_PAGE, content_type="text/html; charset=utf-8")
    return url


def _page(title: str, store: Store, sections: list[str], *, made_by: str) -> str:
    made = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>musicflow: {_text(store.url)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>{title}</h1>\n"
        f"<p class='muted'>Store <code>{_text(store.url)}</code>. Written {made} by {_text(made_by)}.</p>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def _datasets(datasets: list[dict[str, Any]]) -> str:
    columns = ["dataset_id", "songs_ok", "songs_failed", "seconds", "n_features", "transform", "format"]
    return f"<h2>Datasets ({len(datasets)})</h2>\n" + _table(columns, datasets)


def _models(store: Store, link: Link, models: list[dict[str, Any]]) -> str:
    parts = [f"<h2>Models ({len(models)})</h2>"]
    columns = ["model_id", "dataset_id", "state", "epochs", "best_epoch", "train_loss", "val_loss"]
    parts.append(_table([*columns, "baseline_val_loss", "params"], models))
    for model in models:
        directory = model_dir(model["model_id"])
        if not store.exists(directory, LOSS_CURVE_FILE):
            continue
        curve = link(directory, LOSS_CURVE_FILE)
        parts.append(
            f"<h3>{_text(model['model_id'])}</h3>\n"
            f"<img class='curve' src='{_attr(curve)}' alt='loss curve of {_attr(model['model_id'])}'>"
        )
    return "\n".join(parts)


def _generated(store: Store, link: Link, runs: list[dict[str, Any]]) -> str:
    return "\n".join([f"<h2>Generated runs ({len(runs)})</h2>", *(_run(store, link, run) for run in runs)])


def _run(store: Store, link: Link, run: dict[str, Any]) -> str:
    """One generated run: its facts, quality axes and clips."""
    quality = run.get("quality", {})
    parts = [
        f"<h3>{_text(run['run_id'])}</h3>\n<p>model <code>{_text(run['model_id'])}</code>, "
        f"{len(run['clips'])} clip(s) of {run['seconds']:.1f} s, sampling {_text(run.get('sampling'))}, "
        f"quality <b>{_text(quality.get('quality'))}</b> (1 = as close to the validation songs as "
        "real music, 0 = shaped noise)</p>",
        _axes(quality.get("axes", {})),
    ]
    parts += [_clip(store, link, run, clip) for clip in run["clips"]]
    return "\n".join(parts)


def _axes(axes: dict[str, Any]) -> str:
    """The quality axes beside their anchors: 0 = the anchor, 1 = the real continuation."""
    if not axes:
        return "<p class='muted'>No quality axes in this run's metrics.json.</p>"
    rows = [
        {
            "axis": axis,
            "score": scored.get("score"),
            "0 is": scored.get("anchor", ""),
            "spread (std)": (scored.get("spread") or {}).get("std", ""),
            "ceiling": scored.get("ceiling", ""),
            "not scored": scored.get("not_scored", ""),
        }
        for axis, scored in axes.items()
    ]
    return _table(list(rows[0]), rows)


def _clip(store: Store, link: Link, run: dict[str, Any], clip: dict[str, Any]) -> str:
    directory = run_dir(run["run_id"])
    sources, image = [], ""
    for extension, mime in AUDIO_TYPES.items():
        name = f"{clip['name']}{extension}"
        if name in clip["files"] and store.exists(directory, name):
            sources.append(f"<source src='{_attr(link(directory, name))}' type='{mime}'>")
    spectrogram = f"{clip['name']}.png"
    if spectrogram in clip["files"] and store.exists(directory, spectrogram):
        image = f"<img src='{_attr(link(directory, spectrogram))}' alt='spectrogram'>"
    metrics = clip.get("metrics", {})
    facts = {
        "seconds": round(metrics.get("seconds", 0.0), 2),
        "collapsed": metrics.get("collapsed") or "no",
        "rms dBFS": metrics.get("rms_dbfs"),
        "quality": clip.get("quality", {}).get("quality"),
        "LUFS": clip.get("quality", {}).get("lufs"),
        "longest copy (s)": metrics.get("longest_copy_seconds"),
    }
    listed = "".join(f"<li>{_text(key)}: {_text(value)}</li>" for key, value in facts.items())
    player = f"<audio controls preload='metadata'>{''.join(sources)}</audio>" if sources else ""
    return (
        f"<div class='clip'><div><b>{_text(clip['name'])}</b><br>{player}<ul>{listed}</ul></div>{image}</div>"
    )


def _copy(store: Store, out: Path, *parts: str) -> str:
    """Copy a store file into ``out/media/`` (unless there with the same size); its page-relative URL."""
    relative = posixpath.join(MEDIA_DIR, *parts)
    target = out / relative
    size = store.fs.size(store.path(*parts))
    if not (target.is_file() and target.stat().st_size == size):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.read_bytes(*parts))
    return relative


def _table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p class='muted'>None.</p>"
    head = "".join(f"<th>{_text(column)}</th>" for column in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_text(row.get(column))}</td>" for column in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _attr(value: str) -> str:
    return html.escape(value, quote=True)
