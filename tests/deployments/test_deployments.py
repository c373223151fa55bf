"""The deployments built in code (``musicflow serve``) and declared in ``deployments/prefect.yaml``,
as objects: what they are made of. tests/deployments/test_live_schedules.py is the proof that a real server
runs them (schedules, the trigger, the concurrency limits)."""

from __future__ import annotations

import datetime as dt
import inspect
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT, musicflow
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.events import DeploymentEventTrigger, DeploymentTriggerTypes
from pydantic import TypeAdapter

from deployments.serve import DATASET_ID_TEMPLATE, DEFAULT_GENERATE_CRON, build_deployments
from tasks.errors import ConfigError
from tasks.ingest.events import DATASET_UPDATED, dataset_updated_event, store_key

YAML = ROOT / "deployments" / "prefect.yaml"
NAMES = ["musicflow-ingest", "musicflow-train", "musicflow-generate"]


def by_name(deployments: list[Any]) -> dict[str, Any]:
    return {deployment.name: deployment for deployment in deployments}


@pytest.fixture(scope="module")
def default() -> dict[str, Any]:
    return by_name(build_deployments(source="/data/songs", store="/data/store"))


def only_schedule(deployment: Any) -> Any:
    (schedule,) = deployment.schedules
    return schedule.schedule


def test_three_deployments_of_the_three_flows(default: dict[str, Any]) -> None:
    assert list(default) == NAMES
    assert {name: d.flow_name for name, d in default.items()} == {
        "musicflow-ingest": "ingest",
        "musicflow-train": "train",
        "musicflow-generate": "generate",
    }
    for deployment in default.values():
        assert deployment.tags == ["musicflow"]
        assert deployment.parameters["store"] == "/data/store"
    assert default["musicflow-ingest"].parameters == {
        "source": "/data/songs",
        "store": "/data/store",
        "format": "zarr",
        "transform": "stft",  # the default; its sample rate and frame options are the transform's
        "block_size": 11025,
    }


def test_generate_runs_daily_by_default(default: dict[str, Any]) -> None:
    assert DEFAULT_GENERATE_CRON == "0 6 * * *"
    schedule = only_schedule(default["musicflow-generate"])
    assert isinstance(schedule, CronSchedule)
    assert (schedule.cron, schedule.timezone) == ("0 6 * * *", "UTC")
    assert default["musicflow-generate"].parameters == {"store": "/data/store", "seconds": 10.0, "count": 1}


def test_custom_cron_and_generate_options() -> None:
    generate = by_name(
        build_deployments(
            source="s", store="memory://x", generate_cron="*/15 * * * 1-5", seconds=3.5, count=2
        )
    )["musicflow-generate"]
    schedule = only_schedule(generate)
    assert schedule.cron == "*/15 * * * 1-5"
    assert generate.parameters == {"store": "memory://x", "seconds": 3.5, "count": 2}


def test_train_is_triggered_by_new_songs_in_its_store(default: dict[str, Any]) -> None:
    train = default["musicflow-train"]
    assert train.schedules in (None, [])
    (trigger,) = train.triggers
    assert isinstance(trigger, DeploymentEventTrigger)
    assert trigger.expect == {"musicflow.dataset.updated"} == {DATASET_UPDATED}
    assert trigger.match.root == {"musicflow.store": "/data/store"}
    assert trigger.enabled
    assert trigger.threshold == 1 and trigger.within == dt.timedelta(0)
    assert trigger.posture == "Reactive"
    # the store is the deployment's; the dataset comes from the event, rendered by the server
    assert (
        trigger.parameters
        == {"dataset": "{{ event.payload.dataset_id }}"}
        == {"dataset": DATASET_ID_TEMPLATE}
    )
    assert train.parameters == {"store": "/data/store"}  # the train flow picks the preset by the dataset


def test_the_trigger_matches_the_store_however_it_is_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    for spelling in ("store", "./store/", str(tmp_path / "store"), f"file://{tmp_path}/store"):
        assert store_key(spelling) == str(tmp_path / "store"), spelling
    assert store_key("s3://bucket/some/prefix/") == "s3://bucket/some/prefix"


def received(event: dict[str, Any]) -> Any:
    """An event as the server receives it."""
    from prefect.server.events.schemas.events import ReceivedEvent

    return ReceivedEvent(occurred=dt.datetime.now(dt.UTC), id=uuid.uuid4(), **event)


def flow_run_completed(flow_name: str) -> Any:
    return received(
        {
            "event": "prefect.flow-run.Completed",
            "resource": {"prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}"},
            "related": [
                {
                    "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": flow_name,
                }
            ],
        }
    )


def test_train_trigger_fires_on_this_stores_dataset_updates_only(default: dict[str, Any]) -> None:
    from prefect.server.events.schemas.automations import EventTrigger

    (trigger,) = default["musicflow-train"].triggers
    trigger = trigger.model_copy()
    deployment_id = uuid.uuid4()
    trigger.set_deployment_id(deployment_id)
    automation = trigger.as_automation()
    (action,) = automation.actions
    assert (action.deployment_id, action.parameters) == (deployment_id, {"dataset": DATASET_ID_TEMPLATE})
    server_side = EventTrigger.model_validate(automation.trigger.model_dump())
    ours = dataset_updated_event("/data/store", "rfft-x", songs_added=2, songs_failed=0)
    assert server_side.covers(received(ours))
    assert not server_side.covers(
        received(dataset_updated_event("/data/other", "rfft-x", songs_added=2, songs_failed=0))
    )
    assert not server_side.covers(
        received(dataset_updated_event("/data/store2", "rfft-x", songs_added=2, songs_failed=0))
    )
    assert not server_side.covers(flow_run_completed("ingest"))  # a completed ingest that added nothing
    assert not server_side.covers(received({**ours, "event": "musicflow.dataset.checked"}))


def test_ingests_never_overlap_and_trainings_queue(default: dict[str, Any]) -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    ingest, train, generate = (default[name] for name in NAMES)
    assert ingest.concurrency_limit == 1
    assert ingest.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert train.concurrency_limit == 1
    assert train.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE
    assert generate.concurrency_limit is None


def test_serve_options_become_the_flows_parameters() -> None:
    built = by_name(
        build_deployments(
            source="s3://songs/in",
            store="s3://models/store",
            block_size=1024,
            transform="fft",
            shard_format="parquet",
            sample_rate=22050,
            batch_timeout=120,
            epochs=3,
            max_minutes=30,
            train_options={"hidden": 32, "seq_len": 8, "hop": 4, "batch_size": 8, "patience": None},
            seconds=1.5,
            count=2,
            store_block="s3-bucket/models",
            source_block="aws-credentials/songs",
        )
    )
    assert built["musicflow-ingest"].parameters == {
        "source": "s3://songs/in",
        "store": "s3://models/store",
        "format": "parquet",
        "transform": "fft",
        "block_size": 1024,
        "sample_rate": 22050,
        "batch_timeout": 120,  # a stuck batch fails within it, and the next tick runs
        "store_block": "s3-bucket/models",
        "source_block": "aws-credentials/songs",
    }
    assert built["musicflow-train"].parameters == {
        "store": "s3://models/store",  # no preset: the train flow takes the dataset's transform's
        "epochs": 3,
        "max_minutes": 30,  # each triggered training's wall-clock budget
        "hidden": 32,
        "seq_len": 8,
        "hop": 4,
        "batch_size": 8,
        "store_block": "s3-bucket/models",
    }
    assert built["musicflow-generate"].parameters == {
        "store": "s3://models/store",
        "seconds": 1.5,
        "count": 2,
        "store_block": "s3-bucket/models",
    }
    (trigger,) = built["musicflow-train"].triggers
    assert trigger.match.root == {"musicflow.store": "s3://models/store"}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"block_size": 1}, "invalid block_size 1"),
        ({"transform": "wavelet"}, "invalid transform 'wavelet'"),
        ({"shard_format": "csv"}, "invalid format 'csv'"),
        ({"epochs": 0}, "invalid epochs 0"),
        ({"train_options": {"hidden": -3}}, "invalid hidden -3"),
        ({"train_options": {"dropout": 0.5}}, "invalid train options ['dropout']"),
        ({"max_minutes": 0}, "invalid max_minutes 0"),
        ({"max_minutes": -1.0}, "invalid max_minutes -1.0"),
        ({"max_minutes": float("nan")}, "invalid max_minutes nan"),
        ({"max_minutes": float("inf")}, "invalid max_minutes inf"),
    ],
)
def test_bad_serve_options_are_refused_naming_them(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_deployments(source="s", store="t", **options)
    assert fragment in str(raised.value)


def test_ingest_is_on_demand_unless_an_interval_is_given(default: dict[str, Any]) -> None:
    assert default["musicflow-ingest"].schedules in (None, [])
    assert default["musicflow-ingest"].triggers in (None, [])
    ingest = by_name(build_deployments(source="s", store="t", ingest_every=900, workers=2))[
        "musicflow-ingest"
    ]
    schedule = only_schedule(ingest)
    assert isinstance(schedule, IntervalSchedule)
    assert schedule.interval == dt.timedelta(seconds=900)
    assert ingest.parameters["workers"] == 2


@pytest.mark.parametrize("cron", ["61 * * * *", "0 6 * *", "daily at six", "0 25 * * *", ""])
def test_bad_cron_is_refused_naming_it(cron: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build_deployments(source="s", store="t", generate_cron=cron)
    assert f"invalid cron schedule {cron!r}" in str(raised.value)


@pytest.mark.parametrize("every", [0, -60.0])
def test_bad_ingest_interval_is_refused_naming_it(every: float) -> None:
    with pytest.raises(ConfigError, match=f"invalid ingest interval {every!r}"):
        build_deployments(source="s", store="t", ingest_every=every)


def test_deployment_parameters_are_parameters_of_their_flows(default: dict[str, Any]) -> None:
    from flows.generate import generate
    from flows.ingest import ingest
    from flows.train import train

    for flow, name in (
        (ingest, "musicflow-ingest"),
        (train, "musicflow-train"),
        (generate, "musicflow-generate"),
    ):
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(default[name].parameters) <= accepted, name
        for trigger in default[name].triggers or []:
            assert set(trigger.parameters or {}) <= accepted
    full = by_name(
        build_deployments(
            source="s",
            store="t",
            batch_timeout=60,
            epochs=2,
            max_minutes=30,
            train_options=dict.fromkeys(("hidden", "layers", "seq_len", "hop", "batch_size", "patience"), 2)
            | {"learning_rate": 0.01},
            store_block="s3-bucket/a",
            source_block="s3-bucket/b",
        )
    )
    for flow, name in (
        (ingest, "musicflow-ingest"),
        (train, "musicflow-train"),
        (generate, "musicflow-generate"),
    ):
        assert set(full[name].parameters) <= set(inspect.signature(flow.fn).parameters), name


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [("--cron", "0 99 * * *", "'0 99 * * *'"), ("--name", "my store", "invalid deployment name 'my store'")],
)
def test_serve_with_a_bad_value_exits_2_naming_it(
    tmp_path: Path, option: str, value: str, fragment: str
) -> None:
    result = musicflow(
        *("serve", "--source", str(tmp_path), "--store", str(tmp_path), option, value),
        env={"PREFECT_API_URL": "http://127.0.0.1:9/api"},  # must fail before any server
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("musicflow: error: ")
    assert fragment in lines[0]


# --- prefect.yaml -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def declared() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(YAML.read_text())
    assert document["name"] == "musicflow"
    return {deployment["name"]: deployment for deployment in document["deployments"]}


def test_yaml_names_the_same_deployments_and_entrypoints(
    declared: dict[str, dict[str, Any]], default: dict[str, Any]
) -> None:
    from prefect.flows import load_flow_from_entrypoint

    # the served three, and a pipeline deployment (ingest, train, generate in one run) for prefect deploy
    assert list(declared) == [*NAMES, "musicflow-pipeline"]
    for name, deployment in declared.items():
        path = deployment["entrypoint"].partition(":")[0]
        assert (ROOT / path).is_file(), deployment["entrypoint"]
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        if name in default:
            assert flow.name == default[name].flow_name
            assert default[name].entrypoint.endswith(deployment["entrypoint"])
        else:
            assert flow.name == "pipeline"
        assert set(deployment["parameters"]) <= set(inspect.signature(flow.fn).parameters)
        assert deployment["tags"] == ["musicflow"]
        assert deployment["work_pool"]["name"] == "musicflow"


def test_yaml_pull_step_clones_the_repository(declared: dict[str, dict[str, Any]]) -> None:
    document = yaml.safe_load(YAML.read_text())
    assert document["pull"] == [
        {
            "prefect.deployments.steps.git_clone": {
                "id": "clone-musicflow",
                "repository": "{{ $MUSICFLOW_REPO }}",
            }
        }
    ]
    assert all("pull" not in deployment for deployment in declared.values())


def test_yaml_schedules_and_trigger_match_the_code(
    declared: dict[str, dict[str, Any]], default: dict[str, Any]
) -> None:
    (schedule,) = declared["musicflow-generate"]["schedules"]
    assert CronSchedule(**schedule) == only_schedule(default["musicflow-generate"])
    assert not declared["musicflow-ingest"].get("schedules")
    assert not declared["musicflow-train"].get("schedules")

    (raw,) = declared["musicflow-train"]["triggers"]
    trigger = TypeAdapter(DeploymentTriggerTypes).validate_python(raw)
    (code,) = default["musicflow-train"].triggers
    assert isinstance(trigger, DeploymentEventTrigger)
    assert trigger.expect == code.expect
    assert trigger.match.root == {"musicflow.store": "{{ $MUSICFLOW_STORE }}"}
    assert set(trigger.match.root) == set(code.match.root)
    assert trigger.posture == code.posture and trigger.threshold == code.threshold
    assert trigger.parameters == code.parameters == {"dataset": DATASET_ID_TEMPLATE}
    assert not declared["musicflow-pipeline"].get("schedules") and not declared["musicflow-pipeline"].get(
        "triggers"
    )
    for name, strategy in (("musicflow-ingest", "CANCEL_NEW"), ("musicflow-train", "ENQUEUE")):
        limit = declared[name]["concurrency_limit"]
        assert limit == {"limit": default[name].concurrency_limit, "collision_strategy": strategy}
        assert default[name].concurrency_options.collision_strategy.value == strategy


def test_serve_passes_the_stft_frame_options_and_checks_them() -> None:
    built = by_name(
        build_deployments(
            source="/songs", store="/store", n_fft=512, hop_length=128, n_mels=64, preset="gruv"
        )
    )
    assert built["musicflow-ingest"].parameters == {
        "source": "/songs",
        "store": "/store",
        "format": "zarr",
        "transform": "stft",
        "block_size": 11025,
        "n_fft": 512,
        "hop_length": 128,
        "n_mels": 64,
    }
    assert built["musicflow-train"].parameters == {"store": "/store", "preset": "gruv"}
    with pytest.raises(ConfigError, match="300"):
        build_deployments(source="/songs", store="/store", n_fft=512, n_mels=300)


def test_a_name_prefixes_the_deployments_so_stores_can_share_a_server() -> None:
    built = build_deployments(source="/songs", store="/jazz", name="jazz")
    assert [d.name for d in built] == ["jazz-ingest", "jazz-train", "jazz-generate"]
    assert [d.flow_name for d in built] == ["ingest", "train", "generate"]


@pytest.mark.parametrize("name", ["", "has space", "a/b", "-dash-first", "x" * 65, "é"])
def test_a_bad_deployment_name_is_refused_naming_it(name: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid deployment name {re.escape(repr(name))}"):
        build_deployments(source="s", store="t", name=name)
