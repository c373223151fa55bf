"""What a store holds, for ``musicflow status`` (plain dicts, JSON-ready)."""

from __future__ import annotations

from typing import Any

from tasks.config import FeatureConfig
from tasks.dataset.repository import list_datasets, read_config, read_rows, summarise_rows
from tasks.dataset.shards import shard_format
from tasks.generation.runs import read_runs
from tasks.model.repository import CARD_FILE, CHECKPOINTS, MODELS_DIR, STATE_FILE, model_dir, read_card
from tasks.store.store import Store


def dataset_status(store: Store, dataset_id: str) -> dict[str, Any]:
    """One dataset: id, songs ok/failed, seconds, n_blocks, n_features, format."""
    config = read_config(store, dataset_id)
    rows = read_rows(store, dataset_id)
    formats = sorted({shard_format(row.shard) for row in rows if row.ok and row.shard})
    return {
        "dataset_id": dataset_id,
        **summarise_rows(rows),
        "n_features": int(config["features"]["n_features"]),
        "transform": config["features"]["transform"],
        # Samples per row: the block (rfft/fft) or the hop between frames (stft).
        "block_size": FeatureConfig.from_dict(config["features"]).frame_step,
        "sample_rate": int(config["features"]["sample_rate"]),
        "format": ",".join(formats) or config.get("shard_format", ""),
    }


def model_status(store: Store, model_id: str) -> dict[str, Any] | None:
    """One model: finished (its card) or still training (its last checkpoint); None if neither."""
    directory = model_dir(model_id)
    if store.exists(directory, CARD_FILE):
        card, state = read_card(store, model_id), "trained"
    elif store.exists(directory, CHECKPOINTS, STATE_FILE):
        card, state = store.read_json(directory, CHECKPOINTS, STATE_FILE), "training"
    else:
        return None
    history = card.get("history", {"loss": [], "val_loss": []})
    return {
        "model_id": model_id,
        "dataset_id": card.get("dataset_id"),
        "state": state,
        "epochs": len(history["loss"]),
        # a finished model is its best validation epoch (the card's losses); a training its last
        "train_loss": card.get("train_loss", history["loss"][-1] if history["loss"] else None),
        "val_loss": card.get("val_loss", history["val_loss"][-1] if history["val_loss"] else None),
        "best_epoch": card.get("best_epoch"),
        "stop_reason": card.get("stop_reason"),
        "baseline_val_loss": card.get("baseline_val_loss"),
        "params": card.get("params"),
        "preset": card.get("config", {}).get("preset"),
    }


def store_status(store: Store) -> dict[str, Any]:
    """Everything in the store: ``{"datasets": [...], "models": [...], "generated": [...]}``."""
    datasets = [dataset_status(store, dataset_id) for dataset_id in list_datasets(store)]
    models = [found for model_id in store.list_ids(MODELS_DIR) if (found := model_status(store, model_id))]
    generated = [generated_status(report) for report in read_runs(store)]  # complete runs only
    return {"store": store.url, "datasets": datasets, "models": models, "generated": generated}


def generated_status(report: dict[str, Any]) -> dict[str, Any]:
    """One generation run: its files, length and each clip's metrics."""
    return {
        "run_id": report["run_id"],
        "model_id": report["model_id"],
        "files": [file for clip in report["clips"] for file in clip["files"]],
        "seconds": report["seconds"],
        "count": len(report["clips"]),
        "collapsed": [clip["metrics"]["collapsed"] for clip in report["clips"]],
        "quality": report.get("quality", {}).get("quality"),
        "axes": {
            axis: scored.get("score") for axis, scored in report.get("quality", {}).get("axes", {}).items()
        },
        "loudness_difference_db": report.get("quality", {}).get("loudness", {}).get("difference_db"),
        "metrics": {clip["name"]: clip["metrics"] for clip in report["clips"]},
        "location": report.get("location"),
    }
