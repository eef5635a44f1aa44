"""Interrupting a send: SIGTERM (a deploy, `kill`, Kubernetes), Ctrl-C (SIGINT) and a Dagster run termination
(the UI's Terminate) leave the execution `failed` with a StatusReason starting `interrupted` - never `sending`
forever, which no queue listener picks up again - with the results as they stand (`Pending` counts what was
never requested), the lease released and the staging tables dropped; a later `send` resumes and every
recipient ends up texted exactly once.

Real `twilio-pipeline` subprocesses against a sandbox slow enough (latency, few workers) to be interrupted;
the moment is chosen by polling the sandbox or the staging registry, never by sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import ExitStack

import dagster as dg
import pytest
import sqlalchemy as sa

from twilio_pipeline.audience import create_execution
from twilio_pipeline_tests.polling import wait_until
from twilio_pipeline_tests.reliability.conftest import (
    assert_identities,
    assert_no_traceback,
    assert_sid_by_sid,
    channel,
    mixed_audience,
)
from twilio_pipeline_tests.step_forkservers import shared_forkserver

pytestmark = pytest.mark.slow
EXECUTION = 7
CONTACTS = 400


def _execution(db, execution_id: int) -> tuple[str, str | None]:
    ex = db.tables.executions
    with db.connect() as conn:
        row = conn.execute(sa.select(ex.c.Status, ex.c.StatusReason)
                           .where(ex.c.ChannelExecutionID == execution_id)).one()
    return row.Status, row.StatusReason


def _leases(db) -> int:
    with db.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.tables.leases)).scalar()


def _slow_setup(make_sandbox, make_cli, contacts: int = CONTACTS):
    """About 5 s of sending: 50 ms per request, 4 at a time."""
    sb = make_sandbox(latency_ms=50, seed=3)
    cli = make_cli(sb, [channel("Interrupt SMS", max_concurrency=4)])
    audience = mixed_audience(sb, contacts, seed=11)
    create_execution(cli.db, EXECUTION, "Interrupt SMS", "Hi {{FirstName}}", audience.contacts)
    return sb, cli, audience


def _assert_interrupted_then_resumed(sb, cli, audience, reason_start: str) -> None:
    """Status failed/interrupted with the results as they stand, nothing left behind; a second send
    texts exactly who was not texted yet."""
    status, reason = _execution(cli.db, EXECUTION)
    assert status == "failed" and reason.startswith(reason_start), (status, reason)
    assert reason.endswith("a later send resumes"), reason
    assert _leases(cli.db) == 0, "the interrupted run kept its lease"
    assert cli.db.staging_tables() == [], "the interrupted run left its staging tables"
    results = cli.db.read_results(EXECUTION)
    assert results["Pending"] > 0, results
    assert_identities(results)  # CountBeforeDedup = ... + Targeted + Pending
    assert f"{int(results['Targeted'])} of {int(results['Targeted'] + results['Pending'])} recipients requested" \
        in reason, (reason, results)
    created = sum(sb.stats()["messages_created_by_to"].values())
    assert 0 < created < len(audience.eligible) + 5

    again = cli.run("send", str(EXECUTION), timeout=180)
    assert again.returncode == 0, again.describe()
    assert_no_traceback(again.output)
    assert _execution(cli.db, EXECUTION) == ("sent", None)
    assert_sid_by_sid(cli.db, sb, EXECUTION, audience.eligible)  # every eligible recipient exactly once
    results = cli.db.read_results(EXECUTION)
    assert results["Pending"] == 0 and results["Sent"] == len(audience.eligible), results
    assert_identities(results)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_send_stopped_by_a_signal_while_sending_is_failed_interrupted_and_a_later_send_resumes(
        make_sandbox, make_cli, sig):
    sb, cli, audience = _slow_setup(make_sandbox, make_cli)
    run = cli.start("send", str(EXECUTION))
    wait_until(lambda: sb.stats()["messages_outbound"] >= 60, 120, "60 messages reached the sandbox", alive=run.alive)
    # To the CLI process (`kill -INT`/`kill -TERM`). A terminal's Ctrl-C also reaches Dagster's own
    # compute-log helper processes, whose KeyboardInterrupt tracebacks are not ours to silence.
    os.kill(run.pid, sig)
    result = run.wait(60)
    assert result.returncode == 1, result.describe()
    assert_no_traceback(result.output)
    lines = [line for line in result.stdout.splitlines() if "interrupted" in line]  # the run log is on stderr
    assert len(lines) == 1 and lines[0].startswith(f"Send of execution {EXECUTION} stopped"), result.describe()
    assert f"interrupted by {sig.name} during sending; " in lines[0], result.describe()
    _assert_interrupted_then_resumed(sb, cli, audience, f"interrupted by {sig.name} during sending; ")


@pytest.mark.timeout(240)
def test_sigterm_during_planning_leaves_failed_interrupted_and_a_later_send_sends_everyone_once(
        make_sandbox, make_cli):
    """100,000 contact rows for 300 numbers: planning takes seconds, sending 300 messages does not."""
    sb = make_sandbox(latency_ms=5, seed=3)
    cli = make_cli(sb, [channel("Interrupt SMS", max_concurrency=8)])
    rows = 100_000
    create_execution(cli.db, EXECUTION, "Interrupt SMS", "Hi {{FirstName}}",
                     ((i, f"+1415555{i % 300:04d}", {"FirstName": "A"}) for i in range(1, rows + 1)))
    run = cli.start("send", str(EXECUTION))
    wait_until(lambda: any("stg_plan_" in name for name in cli.db.staging_tables()), 120,
               "planning started", alive=run.alive)
    os.kill(run.pid, signal.SIGTERM)
    result = run.wait(60)
    assert result.returncode == 1, result.describe()
    assert_no_traceback(result.output)
    assert "interrupted by SIGTERM during planning" in result.output, result.describe()
    status, reason = _execution(cli.db, EXECUTION)
    assert status == "failed" and reason.startswith("interrupted by SIGTERM during planning; "), reason
    assert sb.stats()["messages_outbound"] == 0
    assert _leases(cli.db) == 0 and cli.db.staging_tables() == []

    again = cli.run("send", str(EXECUTION), timeout=180)
    assert again.returncode == 0, again.describe()
    created = sb.stats()["messages_created_by_to"]
    assert len(created) == 300 and set(created.values()) == {1}
    results = cli.db.read_results(EXECUTION)
    assert (results["CountBeforeDedup"], results["Duplicates"], results["Sent"], results["Pending"]) == \
        (rows, rows - 300, 300, 0)
    assert_identities(results)


WORKER = """
import os, sys
import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository

repo = ReconstructableRepository.for_module("twilio_pipeline.definitions", "defs", working_directory=os.getcwd())
with dg.DagsterInstance.get() as instance:
    instance.add_dynamic_partitions("channel_executions", [sys.argv[1]])
    result = dg.execute_job(repo.get_reconstructable_job("outbound_job"), instance,
                            tags={"dagster/partition": sys.argv[1], "twilio_pipeline/execution": sys.argv[1]})
    print("run", result.run_id, result.dagster_run.status.value, flush=True)
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("forkserver", ["the run's own", "the code server's shared"])
def test_a_dagster_run_termination_while_sending_is_failed_interrupted_and_a_later_send_resumes(
        make_sandbox, make_cli, forkserver):
    """The run as a daemon/UI launch runs it (its own process, the multiprocess executor, a step per
    process), terminated as the UI's Terminate does: the run launcher marks it CANCELING and the run
    worker gets SIGTERM, which Dagster turns into an interrupt of the step - whether the step was forked
    from a forkserver of the run's own or from the code server's shared one (twilio_pipeline.step_forkserver)."""
    sb, cli, audience = _slow_setup(make_sandbox, make_cli)
    with ExitStack() as stack:
        env = dict(cli.env)
        if forkserver == "the code server's shared":
            env.update(stack.enter_context(shared_forkserver(cli.env, cwd=str(cli.root))))
        engine = _terminate_while_sending(sb, cli, env)
    shared = forkserver == "the code server's shared"
    assert any(("code server's preloaded forkserver" in m) == shared and "steps forked from" in m for m in engine), engine
    _assert_interrupted_then_resumed(sb, cli, audience, "interrupted by a Dagster run termination during sending; ")


def _terminate_while_sending(sb, cli, env: dict[str, str]) -> list[str]:
    """Run the execution's outbound job as a run worker does and terminate it mid-send; its engine events."""
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(EXECUTION)], env=env, cwd=str(cli.root),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_until(lambda: sb.stats()["messages_outbound"] >= 60, 150, "60 messages reached the sandbox",
                   alive=lambda: worker.poll() is None)
        with cli.instance() as instance:
            [run] = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": str(EXECUTION)}))
            instance.run_launcher.terminate(run.run_id)
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELING
            os.kill(worker.pid, signal.SIGTERM)
            output, _ = worker.communicate(timeout=90)
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED, output[-3000:]
            engine = [e.user_message for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    return engine
