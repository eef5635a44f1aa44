"""Production, tested as deployed (issue 11): the Procfile's code server, daemon and webserver on a
PostgreSQL instance, the database URL from the environment, Twilio played by the sandbox. Nothing here
runs a job in the test process: the daemon's sensors and schedules, the run queue and the webserver's
GraphQL do everything, as they would for a platform engineer.

The tests share one deployment and run in file order; the executions they watch were all inserted
before the daemon started (conftest.py), so the queue listener's first tick launches them together, and
the backfill is launched in the background as soon as its executions are sent (`backfill`): what the
deployment does for one test goes on while another test waits, and the tests stay independent in what they
check.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dagster as dg
import psutil
import pytest
import sqlalchemy as sa
from dagster._core.execution.backfill import BulkActionStatus

from twilio_pipeline import step_forkserver
from twilio_pipeline.defs.partitions import CHANNEL_TAG, EXECUTION_TAG, TWILIO_POOL
from twilio_pipeline.defs.sync_selection import SYNC_EXECUTIONS_TAG
from twilio_pipeline.settings import project_root
from twilio_pipeline_tests.deployment.conftest import BACKFILL, BAD, KILLED, KILLED_RECIPIENTS, WALK
from twilio_pipeline_tests.deployment.harness import CHANNEL, FINISHED, SLOW_CHANNEL, phone, procfile_commands

# Every test sets the backfill going (module scope: the first one does), see `backfill`.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.usefixtures("backfill")]

OUTBOUND_ASSETS = ["suppression_refresh", "dedupe", "send", "message_id_staging"]
REPOSITORY = {"repositoryLocationName": "twilio_pipeline", "repositoryName": "__repository__"}
LAUNCH_RUN = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }
"""
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  ... on InvalidSubsetError { message } ... on UnauthorizedError { message } } }
"""


def _only(runs: list[dg.DagsterRun]) -> dg.DagsterRun | None:
    return runs[0] if len(runs) == 1 else None


def _finished(deployment, run_id: str) -> dg.DagsterRun | None:
    run = deployment.instance.get_run_by_id(run_id)
    return run if run is not None and run.status.value in FINISHED else None


def _listener_run(deployment, execution_id: int) -> dg.DagsterRun:
    """The queue listener's one run of an execution, once finished."""
    run = deployment.wait(f"the queue listener's run of execution {execution_id}",
                          lambda: _only(deployment.runs("outbound_job", **{EXECUTION_TAG: str(execution_id)})),
                          timeout=180)
    assert run.tags.get("dagster/sensor_name") == "queue_listener", run.tags
    return deployment.wait(f"run {run.run_id} to finish", lambda: _finished(deployment, run.run_id), timeout=420)


def _went_through_the_queue(deployment, run_id: str) -> bool:
    return bool(deployment.instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED))


def _slots(deployment) -> str:
    info = deployment.instance.event_log_storage.get_concurrency_info(TWILIO_POOL)
    return f"limit {info.slot_count}, claimed {info.claimed_slots}, pending {info.pending_steps}"


def _claimed_by(deployment, run_id: str) -> list:
    storage = deployment.instance.event_log_storage
    if TWILIO_POOL not in storage.get_concurrency_keys():
        return []
    info = storage.get_concurrency_info(TWILIO_POOL)
    return [s for s in [*info.claimed_slots, *info.pending_steps] if s.run_id == run_id]


def test_a_run_worker_killed_mid_send_frees_its_slots_and_a_rerun_from_graphql_texts_nobody_twice(deployment):
    d = deployment
    run = d.wait("the queue listener's run of the slow execution",
                 lambda: _only(d.runs("outbound_job", **{EXECUTION_TAG: str(KILLED)})), timeout=180)
    d.wait("its send to be under way", lambda: sum(d.texts_by_number(KILLED).values()) >= 5, timeout=180,
           every=0.2)
    send_start = [e for e in d.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
                  if e.step_key == "send"]
    assert send_start, "the send step had not started although messages were created"
    # The run worker is the process that started the run; the send step runs in a process of its own,
    # forked from the code server's shared forkserver (twilio_pipeline.step_forkserver), not below it.
    [run_start] = d.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
    worker = psutil.Process(run_start.dagster_event.pid)
    step = psutil.Process(send_start[0].dagster_event.pid)
    assert step.ppid() == int(d.code_server_env()[step_forkserver.PID_ENV]) != worker.pid
    victims = [worker, *worker.children(recursive=True), step, *step.children(recursive=True)]
    for p in victims:  # the run worker first: it must not get the chance to record anything
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)
    sent_before = d.texts_by_number(KILLED)
    assert 0 < sum(sent_before.values()) < KILLED_RECIPIENTS, "the kill did not land mid-send"

    failed = d.wait("the killed run to be marked failed", lambda: _finished(d, run.run_id), timeout=90)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    d.wait("the killed run's twilio_api slots to be freed", lambda: not _claimed_by(d, run.run_id), timeout=120)
    status, reason = d.execution(KILLED)
    # docs/reference.md: never `sent` nor back to `ready`; `sending` (a SIGKILL leaves no chance to write) or
    # `failed` with a reason beginning `interrupted`; either way a later send resumes it.
    assert status == "sending" or (status == "failed" and (reason or "").startswith("interrupted")), (status, reason)

    # The operator re-runs the partition from the UI: a launchRun through the webserver's GraphQL.
    launched = d.gql(LAUNCH_RUN, {"params": {
        "selector": {**REPOSITORY, "jobName": "outbound_job"},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": str(KILLED)}]},
    }})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    rerun_id = launched["run"]["runId"]
    rerun = d.wait("the re-run to finish", lambda: _finished(d, rerun_id), timeout=420,
                   detail=lambda: d.describe_run(rerun_id) + f"\nslots: {_slots(d)}")
    assert rerun.status == dg.DagsterRunStatus.SUCCESS, d.log_tail("code")
    assert _went_through_the_queue(d, rerun_id)
    assert d.texts_by_number(KILLED) == {phone(KILLED, i): 1 for i in range(1, KILLED_RECIPIENTS + 1)}
    assert d.execution(KILLED)[0] == "sent"
    assert not _claimed_by(d, rerun_id)
    # Launched from the UI, the run still carries the execution's tags (its run limit and filters hold).
    assert rerun.tags.get(EXECUTION_TAG) == str(KILLED) and rerun.tags.get(CHANNEL_TAG) == SLOW_CHANNEL, rerun.tags


def test_a_ready_execution_is_sent_synced_and_its_results_loaded_unattended(deployment):
    d = deployment
    run = _listener_run(d, WALK)
    assert run.status == dg.DagsterRunStatus.SUCCESS, d.log_tail("code")
    assert run.tags.get(CHANNEL_TAG) == CHANNEL
    assert _went_through_the_queue(d, run.run_id)  # the QueuedRunCoordinator of deploy/dagster.prod.yaml
    engine = [e.user_message for e in d.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
    assert any("from the code server's preloaded forkserver" in m for m in engine), engine
    assert d.execution(WALK)[0] == "sent"
    assert d.texts_by_number(WALK) == {phone(WALK, i): 1 for i in range(1, 6)}

    def delivered() -> bool:
        results = d.db.read_results(WALK)
        return results.get("Status:delivered") == 5 and results

    results = d.wait("the delivery states and results of the execution", delivered, timeout=420,
                     detail=lambda: f"results: {d.db.read_results(WALK)}")
    assert results["Sent"] == 5
    states = d.db.tables.states
    with d.db.connect() as conn:
        loaded = conn.execute(sa.select(states.c.RPContactID).where(
            states.c.ChannelExecutionID == WALK, states.c.FulfillmentState == "Delivered")).scalars().all()
    assert sorted(loaded) == [1, 2, 3, 4, 5]
    # ... loaded by the scheduled channel sync and the execution syncs the chain sensor started.
    scheduled = [r for r in d.runs("channel_sync_job", **{"dagster/schedule_name": "channel_sync_schedule"})
                 if r.status == dg.DagsterRunStatus.SUCCESS]
    chained = [r for r in d.runs("execution_sync_job", **{"dagster/sensor_name": "execution_sync_chain"})
               if r.status == dg.DagsterRunStatus.SUCCESS]
    assert scheduled and chained
    assert all(_went_through_the_queue(d, r.run_id) for r in scheduled + chained)
    # The chain batches the executions it syncs, as a backfill would: a run over several of them (the
    # executions here were all sent together), not one run per execution.
    batched = [r.tags[SYNC_EXECUTIONS_TAG] for r in chained if "," in r.tags.get(SYNC_EXECUTIONS_TAG, "")]
    assert batched, [dict(r.tags) for r in chained]


@dataclass(frozen=True)
class LaunchedBackfill:
    backfill_id: str
    status_of_bad: tuple[str, str | None]
    texts_before: dict[int, dict[str, int]]


def _launch_backfill(d) -> LaunchedBackfill:
    """Once the queue listener's runs of the executions have ended: their backfill through GraphQL."""
    for eid in BACKFILL:
        _listener_run(d, eid)
    status_of_bad = d.execution(BAD)
    texts_before = {eid: d.texts_by_number(eid) for eid in BACKFILL}
    launched = d.gql(LAUNCH_BACKFILL, {"params": {
        "assetSelection": [{"path": [key]} for key in OUTBOUND_ASSETS],
        "partitionNames": [str(eid) for eid in BACKFILL],
    }})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return LaunchedBackfill(launched["backfillId"], status_of_bad, texts_before)


@pytest.fixture(scope="module")
def backfill(deployment):
    """The backfill is launched in the background as soon as it can be, so that it runs while the tests
    before its own do: the backfill daemon looks every 30 s, and the deployment is shared anyway. Its
    executions are not the ones the other tests watch."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="backfill") as pool:
        yield pool.submit(_launch_backfill, deployment)


def test_a_backfill_from_graphql_with_one_bad_execution_fails_that_partition_only(deployment, backfill):
    d = deployment
    launched = backfill.result(timeout=600)
    status, reason = launched.status_of_bad
    assert status == "failed" and reason, (status, reason)
    texts_before = launched.texts_before
    backfill_id = launched.backfill_id
    done = d.wait("the backfill to complete",
                  lambda: (b := d.instance.get_backfill(backfill_id)).status not in
                  (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING) and b, timeout=420)
    assert done.status != BulkActionStatus.FAILED, done.error

    runs = d.runs(**{"dagster/backfill": backfill_id})
    assert runs
    for run in runs:  # every run about one execution carries its tags, also from a backfill
        if "dagster/partition" in run.tags:
            assert run.tags.get(EXECUTION_TAG) == run.tags["dagster/partition"], run.tags
            assert run.tags.get(CHANNEL_TAG) == CHANNEL, run.tags
    materialized = {e.dagster_event.partition for r in runs
                    for e in d.instance.all_logs(r.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                    if e.dagster_event.asset_key == dg.AssetKey("message_id_staging")}
    assert materialized == {str(eid) for eid in BACKFILL if eid != BAD}
    failed = {key.partition_key for key in done.asset_backfill_data.failed_and_downstream_subset.iterate_asset_partitions()}
    assert failed == {str(BAD)}
    assert d.execution(BAD)[0] == "failed"
    for eid in BACKFILL:
        assert d.texts_by_number(eid) == texts_before[eid]  # nobody texted again
        if eid != BAD:
            assert d.execution(eid)[0] == "sent"


def test_health_checks_documented_in_the_readme_answer(deployment):
    d = deployment
    grpc = subprocess.run([sys.executable, "-m", "dagster", "api", "grpc-health-check", "--host", "127.0.0.1",
                           "-p", str(d.code_port)], env=d.env, capture_output=True, text=True, timeout=120)
    assert grpc.returncode == 0, grpc.stdout + grpc.stderr
    d.wait("dagster-daemon liveness-check to pass", lambda: subprocess.run(
        ["dagster-daemon", "liveness-check"], env=d.env, capture_output=True, timeout=120).returncode == 0,
        timeout=120, every=2)
    assert d.webserver_up()


def test_a_second_code_server_refuses_the_port_and_a_restarted_one_resumes_automation(deployment):
    d = deployment
    second = subprocess.run(["bash", "-c", "exec " + procfile_commands()["code"]], env=d.env, cwd=project_root(),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 1 and "already in use" in second.stderr, second.stderr
    assert second.stderr.count("\n") == 1 and d.code_server_healthy()

    d.kill("code", signal.SIGKILL)  # a crash, not a clean stop
    assert not d.code_server_healthy()
    d.start("code")
    d.wait("the restarted code server to serve", d.code_server_healthy, timeout=180)
    d.add_execution(7106, 2)
    run = _listener_run(d, 7106)
    assert run.status == dg.DagsterRunStatus.SUCCESS, d.log_tail("code")
    assert d.execution(7106)[0] == "sent"
    assert d.texts_by_number(7106) == {phone(7106, 1): 1, phone(7106, 2): 1}
    assert os.environ.get("TWILIO_PIPELINE_TEST_POSTGRES_URL")
