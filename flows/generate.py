"""Flow ``generate``: new audio from a trained model, written back to the store.

Scheduled (cron) by ``deployments/serve.py``; each run writes WAV, MP3, a
spectrogram and ``metrics.json`` to ``STORE/generated/<run_id>/``, and a page to listen to them
(``index.html``, ``tasks.report.write_run_page``) that its artifact links to.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.prefect_tasks import generate_clips_task, generate_timeout_seconds
from flows.runtime import heartbeats
from flows.runtime.blocks import use_storage
from flows.runtime.images import SIGNED_SECONDS, image_markdown
from flows.runtime.names import generate_run_name
from tasks.generation.runs import new_run_id, run_dir
from tasks.model.repository import resolve_model
from tasks.report import write_run_page
from tasks.store.store import open_store

# A finished run returns at once, not after its heartbeat thread's next 1-s step (see the module).
heartbeats.install()


@flow(name="generate", flow_run_name=generate_run_name)
def generate(
    store: str,
    model: str | None = None,
    seconds: float = 10.0,
    count: int = 1,
    seed: str = "validation",
    seed_audio: str | None = None,
    temperature: float | None = None,
    store_block: str | None = None,
    sampling: str | None = None,
    phase: str | None = None,
) -> dict[str, Any]:
    """Generate ``count`` clips of ``seconds`` from ``model`` (default: the newest); returns metrics.json
    with the run's quality score. ``temperature`` None is the model's default; ``sampling`` None is
    ``tasks.config.DEFAULT_SAMPLING`` (one of ``tasks.config.SAMPLINGS``); ``phase`` None is
    ``tasks.config.DEFAULT_PHASE`` (how an stft model's phases are reconstructed, one of
    ``tasks.config.PHASES``).

    ``store_block`` names a Prefect block with the store's credentials (``s3-bucket/NAME``...).
    """
    logger = get_run_logger()
    use_storage(store, store_block=store_block)
    model_id = resolve_model(open_store(store), model)
    report = generate_clips_task.with_options(timeout_seconds=generate_timeout_seconds(seconds, count))(
        store, model_id, seconds, count, seed, seed_audio, temperature, new_run_id(model_id), sampling, phase
    )
    for clip in report["clips"]:
        if clip["metrics"]["collapsed"]:
            logger.warning("%s collapsed into %s", clip["name"], clip["metrics"]["collapsed"])
    quality = report["quality"]
    logger.info(
        "quality %s (1 = as close to the validation songs as real music, 0 = shaped noise): "
        "d_gen %.4g, d_real %.4g, d_noise %.4g",
        quality["quality"],
        quality["d_gen"],
        quality["d_real"],
        quality["d_noise"],
    )
    for axis, scored in quality.get("axes", {}).items():
        logger.info(
            "%s %s", axis, scored.get("score") if "not_scored" not in scored else scored["not_scored"]
        )
    _publish(store, report)
    return report


def _publish(store: str, report: dict[str, Any]) -> None:
    rows = []
    for clip in report["clips"]:
        metrics = clip["metrics"]
        rows.append(
            {
                "clip": clip["name"],
                "seconds": round(metrics["seconds"], 2),
                "rms_dbfs": metrics["rms_dbfs"],
                "clipped_fraction": metrics["clipped_fraction"],
                "centroid_hz": metrics["spectral_centroid_hz"],
                "flatness": metrics["spectral_flatness"],
                "collapsed": metrics["collapsed"] or "no",
                "quality": clip.get("quality", {}).get("quality"),
                "lufs": clip.get("quality", {}).get("lufs"),
                "onset_rate": clip.get("quality", {}).get("onset_rate"),
                "nearest_training": metrics.get("nearest_training", {}).get("mean"),
                "longest_copy_s": metrics.get("longest_copy_seconds"),
                "files": ", ".join(clip["files"]),
            }
        )
    quality = report.get("quality", {})
    loudness = quality.get("loudness", {})
    axes = "; ".join(
        f"{axis} {scored.get('score')} (0 = {scored['anchor']}, spread ± {scored['spread']['std']}, "
        f"ceiling {scored.get('ceiling')})"
        if "not_scored" not in scored
        else f"{axis} not scored ({scored['not_scored']})"
        for axis, scored in quality.get("axes", {}).items()
    )
    for row in rows:  # the run's axes (pooled over the clips) beside each clip's row
        row.update({axis: scored.get("score") for axis, scored in quality.get("axes", {}).items()})
    create_table_artifact(
        key="generated-clips",
        table=rows,
        description=(
            f"Clips in {report['location']}: quality {quality.get('quality')} "
            f"(1 = like the validation songs, 0 = shaped noise), loudness "
            f"{loudness.get('clips_lufs')} LUFS against {loudness.get('train_lufs')} LUFS "
            f"for the training songs. Axes of the run (1 = the real continuation): {axes or 'none'}"
        ),
    )
    opened = open_store(store)
    page = write_run_page(opened, report["run_id"], expires_seconds=SIGNED_SECONDS)
    listen = (
        f"To listen: [this run's page]({page}) (`{page}`), a player for every clip"
        if page is not None
        else "To listen: no URL can be made for this store"
    )
    images = "\n".join(
        f"### {clip['name']}\n\n`{report['location']}/{clip['name']}.png`\n\n"
        + image_markdown(
            opened, run_dir(report["run_id"]), f"{clip['name']}.png", alt=f"{clip['name']} spectrogram"
        )
        + "\n"
        for clip in report["clips"]
    )
    create_markdown_artifact(
        key="generated-spectrograms",
        markdown=(
            f"# Generated by `{report['model_id']}`\n\n{report['location']}\n\n"
            f"{listen}; `musicflow report --store {store}` writes a page for the whole store "
            f"(`musicflow-report/index.html`).\n\n{images}"
        ),
        description="Spectrograms of the generated clips",
    )
