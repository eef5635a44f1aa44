"""Scale-out on celery, tested as deployed (issue 12): the Procfile's code server, daemon and webserver
on a PostgreSQL instance with TWILIO_PIPELINE_EXECUTOR=celery, and two `twilio-pipeline worker`
processes on RabbitMQ running every step. What keeps a send exactly-once must hold across workers: the
`twilio_api` pool, the execution lease and the ledger. The tests share one deployment, in file order.
"""

from __future__ import annotations

import signal

import dagster as dg
import psutil
import pytest
import sqlalchemy as sa
from dagster._core.execution.backfill import BulkActionStatus

from twilio_pipeline.defs.partitions import EXECUTION_TAG
from twilio_pipeline_tests.celery.conftest import (
    AT_ONCE,
    AT_ONCE_RECIPIENTS,
    KILLED,
    KILLED_RECIPIENTS,
    MAX_CONCURRENCY,
    POOL_SLOTS,
    WORKER_CONCURRENCY,
)
from twilio_pipeline_tests.celery.harness import start_worker, stop_worker
from twilio_pipeline_tests.deployment.harness import FINISHED, SLOW_CHANNEL, phone

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LAUNCH_RUN = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""
REPOSITORY = {"repositoryLocationName": "twilio_pipeline", "repositoryName": "__repository__"}


def _only(runs):
    return runs[0] if len(runs) == 1 else None


def _finished(d, run_id: str):
    run = d.instance.get_run_by_id(run_id)
    return run if run is not None and run.status.value in FINISHED else None


def _run_of(d, job: str, execution_id: int):
    return d.wait(f"the {job} run of execution {execution_id}",
                  lambda: _only(d.runs(job, **{EXECUTION_TAG: str(execution_id)})), timeout=240)


def _celery_steps(d, run_id: str) -> dict[str, set[str]]:
    """step key -> the celery workers (node names) that ran it, from dagster-celery's engine events."""
    out: dict[str, set[str]] = {}
    for record in d.instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        if record.step_key and "in celery worker" in (event.message or ""):
            worker = event.engine_event_data.metadata.get("Celery worker")
            out.setdefault(record.step_key, set()).add(str(worker.value if worker is not None else "?"))
    return out


def _all_once(execution_id: int, n: int) -> dict[str, int]:
    return {phone(execution_id, i): 1 for i in range(1, n + 1)}


def test_three_executions_sent_at_once_through_two_workers_text_each_recipient_once(celery_deployment):
    d = celery_deployment
    runs = [_run_of(d, "outbound_job", eid) for eid in AT_ONCE]
    finished = [d.wait(f"run {r.run_id} to finish", lambda r=r: _finished(d, r.run_id), timeout=300) for r in runs]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in finished), d.log_tail("worker1") + d.log_tail("worker2")
    workers = set()
    for run in finished:
        steps = _celery_steps(d, run.run_id)
        assert {"send", "dedupe", "message_id_staging"} <= set(steps), steps  # every step on a celery worker
        workers |= set().union(*steps.values())
    assert len(workers) == 2, workers  # both workers took steps
    for eid in AT_ONCE:
        assert d.texts_by_number(eid) == _all_once(eid, AT_ONCE_RECIPIENTS)
        assert d.execution(eid)[0] == "sent"
    # The twilio_api pool held across workers: never more requests in flight than slots x max_concurrency.
    stats = d.sandbox.stats()
    assert stats["max_in_flight"] <= POOL_SLOTS * MAX_CONCURRENCY and stats["concurrency_429"] == 0, stats


def test_a_worker_sigkilled_mid_send_and_a_rerun_text_nobody_twice(celery_deployment):
    d = celery_deployment
    run = _run_of(d, "outbound_job", KILLED)
    d.wait("its send to be under way", lambda: sum(d.texts_by_number(KILLED).values()) >= 5, timeout=300,
           every=0.2)
    victim = _worker_running_send(d, run.run_id)
    d.kill(victim, signal.SIGKILL)  # the whole worker, its pool processes included: a host gone
    sent_before = sum(d.texts_by_number(KILLED).values())
    assert 0 < sent_before < KILLED_RECIPIENTS, "the kill did not land mid-send"
    start_worker(d, "worker3", WORKER_CONCURRENCY)  # two workers again for what follows

    # The broker hands the unacknowledged step to a live worker, which resumes the send from the ledger;
    # whatever the run's outcome, an operator's re-run sends what is left and nobody twice.
    done = d.wait("the killed worker's run to finish", lambda: _finished(d, run.run_id), timeout=300)
    if d.execution(KILLED)[0] != "sent":
        launched = d.gql(LAUNCH_RUN, {"params": {
            "selector": {**REPOSITORY, "jobName": "outbound_job"},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": str(KILLED)}]},
        }})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        done = d.wait("the re-run to finish", lambda: _finished(d, launched["run"]["runId"]), timeout=300)
    assert done.status == dg.DagsterRunStatus.SUCCESS, d.log_tail("worker3")
    assert d.texts_by_number(KILLED) == _all_once(KILLED, KILLED_RECIPIENTS)
    assert d.execution(KILLED)[0] == "sent"


def test_the_sync_chain_runs_through_celery_and_loads_every_state(celery_deployment):
    d = celery_deployment
    eid = AT_ONCE[0]

    def delivered():
        results = d.db.read_results(eid)
        return results.get("Status:delivered") == AT_ONCE_RECIPIENTS and results  # Twilio's spelling

    try:
        d.wait("the delivery states and results of the execution", delivered, timeout=300, every=2)
    except AssertionError as exc:
        raise AssertionError(f"results {d.db.read_results(eid)}, execution {d.execution(eid)}: {exc}") from None
    states = d.db.tables.states
    with d.db.connect() as conn:
        loaded = conn.execute(sa.select(sa.func.count()).select_from(states).where(
            states.c.ChannelExecutionID == eid, states.c.FulfillmentState == "Delivered")).scalar_one()
    assert loaded == AT_ONCE_RECIPIENTS
    def succeeded(job: str, **tags: str):
        return [r for r in d.runs(job, **tags) if r.status == dg.DagsterRunStatus.SUCCESS]

    # the run that wrote the results ends a moment later
    chained = d.wait("a successful execution sync of the chain", lambda: succeeded(
        "execution_sync_job", **{"dagster/sensor_name": "execution_sync_chain"}), timeout=120)
    scheduled = succeeded("channel_sync_job", **{"dagster/schedule_name": "channel_sync_schedule"})
    assert scheduled
    assert {"status_fetch", "state_bulk_load", "aggregate_results"} <= set(_celery_steps(d, chained[0].run_id))
    assert "keyword_parse" in _celery_steps(d, scheduled[0].run_id)


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }
"""


def test_a_backfill_from_graphql_runs_on_the_workers_and_texts_nobody_again(celery_deployment):
    d = celery_deployment
    before = {eid: d.texts_by_number(eid) for eid in AT_ONCE}
    launched = d.gql(LAUNCH_BACKFILL, {"params": {
        "assetSelection": [{"path": [key]} for key in ("suppression_refresh", "dedupe", "send", "message_id_staging")],
        "partitionNames": [str(eid) for eid in AT_ONCE],
    }})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    done = d.wait("the backfill to complete",
                  lambda: (b := d.instance.get_backfill(backfill_id)).status not in
                  (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING) and b, timeout=300)
    assert done.status == BulkActionStatus.COMPLETED_SUCCESS, done.status
    runs = d.runs(**{"dagster/backfill": backfill_id})
    assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    for run in runs:
        assert "send" in _celery_steps(d, run.run_id)
    assert {eid: d.texts_by_number(eid) for eid in AT_ONCE} == before


def _worker_running_send(d, run_id: str) -> str:
    """Which of our worker processes runs the run's send step (its pool process is a child of the worker)."""
    starts = [e for e in d.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START) if e.step_key == "send"]
    assert starts, "the send step had not started although messages were created"
    step_pid = starts[-1].dagster_event.pid
    ours = {name: proc.pid for name, proc in d.procs.items() if name.startswith("worker")}
    return next(name for name, pid in ours.items()
                if pid == step_pid or pid in {p.pid for p in psutil.Process(step_pid).parents()})


def test_a_worker_stopped_with_sigterm_mid_send_finishes_the_step_and_exits_0(celery_deployment):
    d = celery_deployment
    eid, n = 7205, 30
    d.add_execution(eid, n, SLOW_CHANNEL)
    run = _run_of(d, "outbound_job", eid)
    d.wait("its send to be under way", lambda: sum(d.texts_by_number(eid).values()) >= 3, timeout=300, every=0.2)
    name = _worker_running_send(d, run.run_id)
    assert stop_worker(d, name, timeout=240) == 0, d.log_tail(name)  # returns once the worker has exited
    done = d.wait("the run to finish", lambda: _finished(d, run.run_id), timeout=300)
    assert done.status == dg.DagsterRunStatus.SUCCESS
    assert len(_celery_steps(d, run.run_id)["send"]) == 1  # finished where it ran, not handed over
    assert d.texts_by_number(eid) == _all_once(eid, n)
