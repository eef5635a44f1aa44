"""The automation as deployed: sensors read the database URL from the environment, a failed tick loses no
sync, executions that cannot be sent say why, and a fresh production deployment starts nothing on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta

import dagster as dg
import pytest
import yaml
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster_graphql.client.query import LAUNCH_PIPELINE_EXECUTION_MUTATION
from dagster_graphql.test.utils import execute_dagster_graphql

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.definitions import defs
from twilio_pipeline.defs.inbound import INBOUND_ASSETS
from twilio_pipeline.defs.outbound import OUTBOUND_ASSETS
from twilio_pipeline.defs.partition_order import add_in_order, placement
from twilio_pipeline.defs.partitions import CHANNEL_TAG, EXECUTION_TAG, execution_partitions
from twilio_pipeline.defs.resources import DatabaseResource, build_resources
from twilio_pipeline.defs.run_coordinator import ExecutionRunCoordinator, RunRefused
from twilio_pipeline.defs.sensors import execution_sync_chain, queue_listener, sync_batches
from twilio_pipeline.defs.sync_selection import SYNC_EXECUTIONS_TAG
from twilio_pipeline.outbound.execution import read_execution
from twilio_pipeline.settings import SettingsError, automation_on, project_root

CHANNEL = "Demo SMS Channel"
CHANNELS_YAML = f"""channels:
  - name: {CHANNEL}
    from_number: "+15005550006"
"""
CONTACT = (1, "+14155550100", None)


def _env_resources(db_url, tmp_path, monkeypatch):
    """The code location's own resources, built as definitions.py builds them, with the database URL,
    the table prefix and the channel file taken from the environment."""
    channels = tmp_path / "channels.yaml"
    channels.write_text(CHANNELS_YAML)
    prefix = f"w{uuid.uuid4().hex[:6]}_"
    monkeypatch.setenv("TWILIO_PIPELINE_DATABASE_URL", db_url)
    monkeypatch.setenv("TWILIO_PIPELINE_TABLE_PREFIX", prefix)
    monkeypatch.setenv("TWILIO_PIPELINE_CHANNELS", str(channels))
    monkeypatch.setenv("TWILIO_PIPELINE_DATA_DIR", str(tmp_path / "data"))
    resources = build_resources()
    assert isinstance(resources["database"].url, dg.EnvVar)  # what the sensor used to receive unresolved
    db = Database(db_url, prefix=prefix)
    yield resources, db
    db.dispose()


@pytest.fixture
def env_resources(db_url, tmp_path, monkeypatch):
    """On SQLite and PostgreSQL."""
    yield from _env_resources(db_url, tmp_path, monkeypatch)


@pytest.fixture
def sqlite_env_resources(tmp_path, monkeypatch):
    """The run queue's behaviour does not depend on the pipeline database's backend: SQLite only."""
    yield from _env_resources(f"sqlite:///{tmp_path / 'pipeline.db'}", tmp_path, monkeypatch)


def _tick(sensor, instance, resources, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor(context)


def _track(db: Database, execution_id: int, n: int = 1) -> None:
    """Messages of the execution still tracked in Twilio_MessageIDs: the execution has something to sync."""
    with db.begin() as conn:
        for i in range(n):
            conn.execute(db.tables.message_ids.insert().values(
                MessageID=f"SM{execution_id:08d}{i:024d}", RPContactID=i + 1, ChannelExecutionID=execution_id,
                Sender="+15005550006", ToNumber=CONTACT[1], SentAt=utcnow(), LastStatus="sent"))


def _channel_sync_succeeded(instance) -> dg.DagsterRun:
    return instance.create_run_for_job(defs.resolve_job_def("channel_sync_job"), status=dg.DagsterRunStatus.SUCCESS)


def test_sync_chain_reads_the_database_url_from_the_environment_and_catches_up_after_a_failed_tick(
        env_resources, monkeypatch):
    resources, db = env_resources
    for eid in (5, 6, 7):
        create_execution(db, eid, CHANNEL, "hi", [CONTACT], status="sent")
    _track(db, 5)
    _track(db, 7)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(execution_partitions.name, ["5", "6", "7"])
        _channel_sync_succeeded(instance)

        # The tick after the channel sync fails (the database is unreachable for a moment) ...
        good_url = os.environ["TWILIO_PIPELINE_DATABASE_URL"]
        monkeypatch.setenv("TWILIO_PIPELINE_DATABASE_URL", "not a database url")
        with pytest.raises(Exception, match="SQLAlchemy URL"):
            _tick(execution_sync_chain, instance, build_resources())
        # ... and the next one (same cursor: the failed tick stored none) still requests the missed syncs.
        monkeypatch.setenv("TWILIO_PIPELINE_DATABASE_URL", good_url)
        result = _tick(execution_sync_chain, instance, resources)
        [request] = result.run_requests  # one run over 5..7 syncs 5 and 7; 6 has nothing to sync
        assert (request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]) == ("5", "7")
        assert request.tags[SYNC_EXECUTIONS_TAG] == "5,7" and request.tags[CHANNEL_TAG] == CHANNEL

        # Nothing new since: the next tick requests nothing.
        again = _tick(execution_sync_chain, instance, resources, cursor=result.cursor)
        assert not again.run_requests if isinstance(again, dg.SensorResult) else isinstance(again, dg.SkipReason)

        # The next channel sync: the database decides again (7 has been synced meanwhile, 6 has messages now).
        with db.begin() as conn:
            conn.execute(db.tables.message_ids.delete().where(db.tables.message_ids.c.ChannelExecutionID == 7))
        _track(db, 6)
        _channel_sync_succeeded(instance)
        later = _tick(execution_sync_chain, instance, resources, cursor=result.cursor)
        [request] = later.run_requests
        assert (request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]) == ("5", "6")
        assert request.tags[SYNC_EXECUTIONS_TAG] == "5,6" and request.tags[CHANNEL_TAG] == CHANNEL


def test_sync_batches_group_ten_eligible_executions_per_run_whatever_lies_between():
    keys = [str(i) for i in range(1, 26)] + ["-1", "-2"]
    eligible = {i: "A" for i in range(1, 24) if i != 4} | {24: "B", -1: "A", -2: "A"}
    batches = sync_batches(keys, eligible)
    # 4 (nothing to sync) and 25 do not split a batch; channels mix, as in a backfill run.
    assert batches == [[1, 2, 3, 5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
                       [22, 23, 24, -1, -2]]
    # A run's range covers at most `span` partitions, those left alone included.
    assert sync_batches([str(i) for i in range(1, 101)], {1: "A", 60: "A", 61: "A"}) == [[1], [60, 61]]


def test_queue_listener_reads_the_database_url_from_the_environment(env_resources):
    resources, db = env_resources
    create_execution(db, 1, CHANNEL, "hi", [CONTACT])
    with dg.instance_for_test() as instance:
        result = _tick(queue_listener, instance, resources)
    assert [r.partition_key for r in result.run_requests] == ["1"]


@pytest.mark.slow
def test_an_execution_that_cannot_be_sent_is_failed_with_the_reason_and_the_listener_says_so(env_resources):
    resources, db = env_resources
    create_execution(db, 12, CHANNEL, "hi", [])  # no recipients
    create_execution(db, 13, CHANNEL, "later", [CONTACT], send_after=utcnow() + timedelta(hours=2))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(execution_partitions.name, ["12"])
        result = dg.materialize(OUTBOUND_ASSETS, partition_key="12", instance=instance,
                                resources=resources, raise_on_error=False)
        assert not result.success
        row = read_execution(db, 12)
        assert row.status == "failed"
        assert "no recipients" in row.status_reason

        # Two ready executions the listener leaves alone: one whose run is on its way, one whose run ended.
        create_execution(db, 14, CHANNEL, "hi", [CONTACT])
        create_execution(db, 15, CHANNEL, "hi", [CONTACT])
        job = defs.resolve_job_def("outbound_job")
        instance.create_run_for_job(job, tags={EXECUTION_TAG: "14"}, status=dg.DagsterRunStatus.STARTED)
        ended = instance.create_run_for_job(job, tags={EXECUTION_TAG: "15"}, status=dg.DagsterRunStatus.FAILURE)

        skip = _tick(queue_listener, instance, resources)
    assert isinstance(skip, dg.SkipReason)
    message = skip.skip_message
    send_after = read_execution(db, 13).send_after
    assert f"waiting for SendAfter until {send_after:%Y-%m-%dT%H:%MZ}: 1 execution;" in message
    assert "1 execution failed: 12 (execution 12 has no recipients" in message
    assert "1 ready execution with a run queued or in progress: 14" in message
    assert f"1 ready execution whose run ended without sending (re-run it or send it from the CLI): 15 (run {ended.run_id[:8]} failure)" in message


@pytest.mark.slow
def test_a_bad_execution_in_a_multi_partition_sync_run_is_recorded_and_skipped(env_resources):
    resources, db = env_resources
    create_execution(db, 21, CHANNEL, "hi", [CONTACT], status="sent")
    create_execution(db, 22, CHANNEL, "hi", [])  # no recipients: cannot be sent, nor synced
    create_execution(db, 23, CHANNEL, "hi", [CONTACT], status="sent")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(execution_partitions.name, ["21", "22", "23"])
        result = dg.materialize(
            INBOUND_ASSETS, selection=["status_fetch", "state_bulk_load", "aggregate_results"],
            instance=instance, resources=resources, raise_on_error=False,
            tags={ASSET_PARTITION_RANGE_START_TAG: "21", ASSET_PARTITION_RANGE_END_TAG: "23"})
        assert result.success
        materialized = {(m.asset_key.to_user_string(), m.partition)
                        for m in result.get_asset_materialization_events()
                        for m in [m.event_specific_data.materialization]}
        for asset in ("status_fetch", "state_bulk_load", "aggregate_results"):
            assert {(asset, "21"), (asset, "23")} <= materialized

        # A run started without the run queue (`dagster asset materialize`, a script) is tagged by its steps.
        single = dg.materialize(INBOUND_ASSETS, selection=["status_fetch"], partition_key="21", instance=instance,
                                resources=resources)
        tags = instance.get_run_by_id(single.run_id).tags
        assert tags[EXECUTION_TAG] == "21" and tags[CHANNEL_TAG] == CHANNEL
    assert read_execution(db, 22).status == "failed"
    assert "no recipients" in read_execution(db, 22).status_reason
    assert read_execution(db, 21).status == "sent" and read_execution(db, 23).status == "sent"


def test_automation_default_follows_the_environment():
    assert automation_on({}) is True  # sandbox mode
    assert automation_on({"TWILIO_ACCOUNT_SID": "AC" + "0" * 32}) is False
    assert automation_on({"TWILIO_ACME_ACCOUNT_SID": "AC" + "0" * 32}) is False
    assert automation_on({"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_PIPELINE_AUTOMATION": "on"}) is True
    assert automation_on({"TWILIO_PIPELINE_AUTOMATION": "off"}) is False
    with pytest.raises(SettingsError, match="TWILIO_PIPELINE_AUTOMATION must be 'on' or 'off'"):
        automation_on({"TWILIO_PIPELINE_AUTOMATION": "yes"})


STATUSES = """
import json
from twilio_pipeline.definitions import defs
print(json.dumps({**{s.name: s.default_status.value for s in defs.sensors},
                  **{s.name: s.default_status.value for s in defs.schedules}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("automation, expected", [(None, "STOPPED"), ("on", "RUNNING")])
def test_a_code_location_with_a_twilio_account_starts_nothing_until_automation_is_on(automation, expected):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
    env.update(TWILIO_ACCOUNT_SID="AC" + "1" * 32, TWILIO_AUTH_TOKEN="secret")
    if automation:
        env["TWILIO_PIPELINE_AUTOMATION"] = automation
    proc = subprocess.run([sys.executable, "-c", STATUSES], capture_output=True, text=True, env=env,
                          cwd=project_root(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    statuses = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(statuses) == {"queue_listener", "execution_sync_chain", "channel_sync_schedule",
                             "daily_suppression_refresh"}
    assert set(statuses.values()) == {expected}


def test_sandbox_mode_runs_automation_by_default():
    assert {s.default_status for s in defs.sensors} == {dg.DefaultSensorStatus.RUNNING}
    assert {s.default_status for s in defs.schedules} == {dg.DefaultScheduleStatus.RUNNING}


def test_one_database_per_process_and_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'one.db'}"
    a, b = DatabaseResource(url=url), DatabaseResource(url=url)
    assert a.get_database() is b.get_database()
    assert DatabaseResource(url=url, table_prefix="x_").get_database() is not a.get_database()
    a.get_database().dispose()





@pytest.fixture
def repo_instance(tmp_path):
    """An instance configured by the repo's dagster.yaml (the one `make ui` uses; runs are recorded as
    launched instead of started), storage in tmp_path, and the code location loaded as the webserver and
    the daemon load it."""
    config = yaml.safe_load((project_root() / "dagster.yaml").read_text())
    config["run_launcher"] = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}
    origin = LoadableTargetOrigin(executable_path=sys.executable, module_name="twilio_pipeline.definitions",
                                  working_directory=str(project_root()))
    with dg.instance_for_test(overrides=config, temp_dir=str(tmp_path)) as instance, \
            WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(
                InProcessCodeLocationOrigin(origin))) as process_context:
        yield instance, process_context


def _launch(instance, process_context, job_name: str, tags: dict) -> dg.DagsterRun | str:
    """What the UI's "Materialize" does: launchPipelineExecution through the webserver's GraphQL schema
    (the run is created from the code location's job and submitted to the instance's run coordinator,
    as the daemons do for a backfill or a sensor). The run, or the error line the UI shows."""
    context = process_context.create_request_context()
    location = next(iter(context.get_code_location_entries()))
    result = execute_dagster_graphql(context, LAUNCH_PIPELINE_EXECUTION_MUTATION, variables={"executionParams": {
        "selector": {"repositoryLocationName": location, "repositoryName": "__repository__",
                     "pipelineName": job_name},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]}}})
    launched = result.data["launchPipelineExecution"]
    if launched["__typename"] != "LaunchRunSuccess":
        return launched["message"]
    return instance.get_run_by_id(launched["run"]["runId"])


def test_a_run_launched_from_the_ui_gets_the_execution_and_channel_tags_before_it_is_queued(
        sqlite_env_resources, repo_instance):
    _resources, db = sqlite_env_resources
    create_execution(db, 31, CHANNEL, "hi", [CONTACT])
    instance, workspace = repo_instance
    assert isinstance(instance.run_coordinator, ExecutionRunCoordinator)
    queue = instance.get_concurrency_config().run_queue_config
    assert queue.should_block_op_concurrency_limited_runs
    instance.add_dynamic_partitions(execution_partitions.name, ["31"])
    # What the UI's "Materialize" creates: the partition tag only.
    run = _launch(instance, workspace, "outbound_job", {"dagster/partition": "31"})
    assert run.status == dg.DagsterRunStatus.QUEUED
    assert run.tags[EXECUTION_TAG] == "31" and run.tags[CHANNEL_TAG] == CHANNEL
    # Filtering by execution finds it, and the pool is known to the queue before the first step claims.
    assert [r.run_id for r in instance.get_runs(filters=dg.RunsFilter(tags={EXECUTION_TAG: "31"}))] == [run.run_id]
    assert "twilio_api" in instance.event_log_storage.get_concurrency_keys()
    # A backfill run over a range of one channel's executions gets the channel tag.
    create_execution(db, 32, CHANNEL, "hi", [CONTACT])
    instance.add_dynamic_partitions(execution_partitions.name, ["32"])
    ranged = _launch(instance, workspace, "execution_sync_job",
                     {ASSET_PARTITION_RANGE_START_TAG: "31", ASSET_PARTITION_RANGE_END_TAG: "32"})
    assert ranged.status == dg.DagsterRunStatus.QUEUED and ranged.tags[CHANNEL_TAG] == CHANNEL


def test_a_partition_that_names_no_execution_is_refused_before_any_run_starts(sqlite_env_resources, repo_instance):
    _resources, db = sqlite_env_resources
    create_execution(db, 41, CHANNEL, "hi", [CONTACT])
    instance, workspace = repo_instance
    instance.add_dynamic_partitions(execution_partitions.name, ["41", "4242"])  # "Add partition" in the UI
    # Inside a backfill the run is queued and fails on its own (the asset finds no execution): the backfill
    # daemon would stop the whole backfill on a refusal.
    in_backfill = _launch(instance, workspace, "outbound_job", {"dagster/partition": "4242", "dagster/backfill": "b1"})
    assert in_backfill.status == dg.DagsterRunStatus.QUEUED
    refused = _launch(instance, workspace, "outbound_job", {"dagster/partition": "4242"})
    line = ("Partition '4242' names no execution in SMS_ChannelExecutions (a partition key is a "
            "ChannelExecutionID): run refused")
    assert refused.strip().splitlines() == [f"{RunRefused.__module__}.RunRefused: {line}"]
    run = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": "4242"}))[0]  # the latest
    assert run.status == dg.DagsterRunStatus.FAILURE  # never queued, never started
    assert not instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_START).records
    assert instance.get_dynamic_partitions(execution_partitions.name) == ["41"]  # no red partition left behind


def test_partitions_list_upstream_executions_by_id_then_follow_ups():
    assert placement(["1", "2", "-1", "-2"], ["3"]) == (["-1", "-2"], ["3", "-1", "-2"])
    assert placement(["1", "2", "-1"], ["-2", "2"]) == ([], ["-2"])
    assert placement(["1", "3"], ["2"]) == (["3"], ["2", "3"])
    with dg.instance_for_test() as instance:
        # The order they arrive in: sends, follow-ups made by channel syncs, a late upstream ID.
        for key in ("1", "2", "-1", "4", "-2", "3", "5"):
            add_in_order(instance, [key])
        assert instance.get_dynamic_partitions(execution_partitions.name) == ["1", "2", "3", "4", "5", "-1", "-2"]

        # A partition whose run is queued or running is never moved under it: the new key goes last for now.
        instance.create_run_for_job(defs.resolve_job_def("outbound_job"), tags={"dagster/partition": "-1"},
                                    status=dg.DagsterRunStatus.STARTED)
        add_in_order(instance, ["6"])
        assert instance.get_dynamic_partitions(execution_partitions.name)[-3:] == ["-1", "-2", "6"]


def test_the_queue_listener_adds_a_new_execution_before_the_follow_ups(env_resources):
    resources, db = env_resources
    create_execution(db, 2, CHANNEL, "hi", [CONTACT])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(execution_partitions.name, ["1", "-1"])
        result = _tick(queue_listener, instance, resources)
    delete, add = result.dynamic_partitions_requests
    assert isinstance(delete, dg.DeleteDynamicPartitionsRequest) and list(delete.partition_keys) == ["-1"]
    assert list(add.partition_keys) == ["2", "-1"]


@pytest.mark.slow
def test_the_run_queue_starts_no_more_sends_than_twilio_api_slots_and_one_run_per_execution(
        sqlite_env_resources, repo_instance):
    """22 ready executions used to start 6-7 runs at once, each holding a process while it waited for one
    of the 4 `twilio_api` slots; a double launch of one execution started twice."""
    _resources, db = sqlite_env_resources
    instance, process_context = repo_instance
    ids = list(range(51, 61))
    for eid in ids:
        create_execution(db, eid, CHANNEL, "hi", [CONTACT])
    instance.add_dynamic_partitions(execution_partitions.name, [str(e) for e in ids])
    order = [51, 51, *ids[1:]]  # execution 51 launched twice from the UI
    runs = [_launch(instance, process_context, "outbound_job", {"dagster/partition": str(e)}) for e in order]
    assert all(r.status == dg.DagsterRunStatus.QUEUED for r in runs)

    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    for _ in range(2):
        list(daemon.run_iteration(process_context))
    started = [r for r in runs if instance.get_run_by_id(r.run_id).status != dg.DagsterRunStatus.QUEUED]
    assert [r.tags[EXECUTION_TAG] for r in started] == ["51", "52", "53", "54"]  # 4 slots, 51 once
