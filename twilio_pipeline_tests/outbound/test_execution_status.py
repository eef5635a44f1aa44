"""The execution's Status decides whether it is sent, whoever starts the run (CLI, sensor, UI, backfill):
`ready`, `sending` (an interrupted run) and `failed` (a retry) are sent, `sent` finds nothing new; a
`cancelled` or `draft` execution, or one whose SendAfter is still ahead, is refused in one line with its
Status untouched - unless forced. Nothing the pipeline writes at the end of a send overwrites the
upstream's `cancelled`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import utcnow
from twilio_pipeline.defs.outbound import OUTBOUND_ASSETS
from twilio_pipeline.defs.partitions import execution_partitions
from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
from twilio_pipeline.outbound import (
    commit_execution,
    mark_failed,
    plan_execution,
    read_execution,
    record_interruption,
    send_refusal,
)
from twilio_pipeline_tests.outbound.conftest import channels, run_id
from twilio_pipeline_tests.reliability.conftest import PipelineCli, assert_no_traceback, channel

CONTACTS = [(i, f"+1415555{i:04d}", {"FirstName": f"P{i}"}) for i in range(1, 6)]


def _status(db, execution_id: int) -> tuple[str, str | None]:
    ex = db.tables.executions
    with db.connect() as conn:
        row = conn.execute(sa.select(ex.c.Status, ex.c.StatusReason)
                           .where(ex.c.ChannelExecutionID == execution_id)).one()
    return row.Status, row.StatusReason


def _set_status(db, execution_id: int, status: str) -> None:
    ex = db.tables.executions
    with db.begin() as conn:
        conn.execute(ex.update().where(ex.c.ChannelExecutionID == execution_id).values(Status=status))


def test_send_refusal_names_the_status_or_the_send_after_and_force_overrides_it(db):
    create_execution(db, 1, "X", "hi", CONTACTS[:1])
    now = utcnow()
    row = read_execution(db, 1)
    for status in ("ready", "sending", "failed", "sent"):
        assert send_refusal(replace(row, status=status), now=now) is None
    for status in ("cancelled", "draft", "paused"):
        refusal = send_refusal(replace(row, status=status), now=now)
        assert f"execution 1 has Status {status!r}" in refusal and "--force" in refusal and "\n" not in refusal
        assert send_refusal(replace(row, status=status), force=True, now=now) is None
    later = replace(row, send_after=now + timedelta(days=30))
    assert "SendAfter" in send_refusal(later, now=now) and "still in the future" in send_refusal(later, now=now)
    assert send_refusal(later, force=True, now=now) is None
    assert send_refusal(replace(row, send_after=now - timedelta(minutes=1)), now=now) is None


def test_the_end_of_a_send_an_error_or_an_interruption_never_overwrites_cancelled(db, log):
    """The upstream cancels while the execution is sending: the commit writes the results (what was never
    requested is Pending), the Status stays `cancelled`; so does it after a failure or an interruption."""
    ch = channels().channels[0]
    create_execution(db, 2, ch.name, "Hi {{FirstName}}", CONTACTS)
    plan_execution(db, ch, 2, run_id=run_id(), log=log)
    assert _status(db, 2)[0] == "sending"
    _set_status(db, 2, "cancelled")
    out = commit_execution(db, ch, 2, run_id=run_id(), log=log)
    assert _status(db, 2) == ("cancelled", None) and out.status == "cancelled"
    results = db.read_results(2)
    assert results["Pending"] == 5 and results["Targeted"] == 0 and results["CountBeforeDedup"] == 5
    assert not mark_failed(db, 2, "RuntimeError: boom")
    record_interruption(db, ch, 2, cause="SIGTERM", phase="sending")
    assert _status(db, 2) == ("cancelled", None)
    # A pipeline status is still moved: `sending` -> failed with the interruption's reason.
    _set_status(db, 2, "sending")
    reason = record_interruption(db, ch, 2, cause="SIGTERM", phase="sending")
    assert reason == "interrupted by SIGTERM during sending; 0 of 5 recipients requested; a later send resumes"
    assert _status(db, 2) == ("failed", reason)


@pytest.fixture
def dagster_resources(db_url, tmp_path, sandbox):
    ch_file = tmp_path / "channels.yaml"
    ch_file.write_text("channels:\n  - {name: Status SMS, from_number: '+15005550006', max_concurrency: 4}\n")
    database = DatabaseResource(url=db_url, table_prefix=f"st{os.getpid()}_{abs(hash(str(tmp_path))) % 10**6}_")
    twilio = TwilioResource(account_sid=sandbox.account_sid, auth_token=sandbox.auth_token,
                            api_base_url=sandbox.base_url, bulkexports_base_url=sandbox.base_url,
                            messaging_base_url=sandbox.base_url, channels_path=str(ch_file), data_dir=str(tmp_path))
    yield {"database": database, "twilio": twilio}
    database.get_database().dispose()


def _materialize(instance, resources, execution_id: int, run_config=None):
    instance.add_dynamic_partitions(execution_partitions.name, [str(execution_id)])
    return dg.materialize(OUTBOUND_ASSETS, partition_key=str(execution_id), instance=instance, resources=resources,
                          run_config=run_config, raise_on_error=False)


def _step_failure(result) -> str:
    [failure] = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.message.strip()


@pytest.mark.slow
def test_a_dagster_run_refuses_a_cancelled_or_future_execution_unless_its_run_config_forces_it(
        dagster_resources, sandbox):
    db = dagster_resources["database"].get_database()
    create_execution(db, 3, "Status SMS", "Hi {{FirstName}}", CONTACTS, status="cancelled")
    create_execution(db, 4, "Status SMS", "Hi {{FirstName}}", CONTACTS, send_after=utcnow() + timedelta(days=30))
    with dg.instance_for_test() as instance:
        for eid, words in ((3, "Status 'cancelled'"), (4, "SendAfter")):
            result = _materialize(instance, dagster_resources, eid)
            assert not result.success
            message = _step_failure(result)
            assert words in message and len(message.splitlines()) == 1, message
        assert sandbox.stats()["messages_outbound"] == 0
        assert _status(db, 3) == ("cancelled", None) and _status(db, 4) == ("ready", None)
        # One `force: true` (here on the send step) applies to the whole run.
        result = _materialize(instance, dagster_resources, 3, {"ops": {"send": {"config": {"force": True}}}})
        assert result.success
    assert _status(db, 3) == ("sent", None)
    assert len(sandbox.stats()["messages_created_by_to"]) == 5


@pytest.fixture
def status_cli(tmp_path, make_sandbox):
    """A real `twilio-pipeline` installation (subprocesses) against a sandbox."""
    sb = make_sandbox()
    cli = PipelineCli(tmp_path / "cli", sb, [channel("Status SMS")])
    yield sb, cli
    cli.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_send_refuses_cancelled_draft_and_future_executions_with_exit_2_unless_forced(status_cli):
    sb, cli = status_cli
    create_execution(cli.db, 1, "Status SMS", "Hi {{FirstName}}", CONTACTS, status="cancelled")
    create_execution(cli.db, 2, "Status SMS", "Hi {{FirstName}}", CONTACTS, status="draft")
    create_execution(cli.db, 3, "Status SMS", "Hi {{FirstName}}", CONTACTS,
                     send_after=utcnow() + timedelta(days=30))
    for eid, words in ((1, "has Status 'cancelled'"), (2, "has Status 'draft'"), (3, "SendAfter")):
        result = cli.run("send", str(eid), timeout=120)
        assert result.returncode == 2, result.describe()
        assert_no_traceback(result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: execution {eid} ") and words in lines[0], lines
    assert sb.stats()["messages_outbound"] == 0
    assert [_status(cli.db, eid) for eid in (1, 2, 3)] == [("cancelled", None), ("draft", None), ("ready", None)]

    forced = cli.run("send", "1", "--force", timeout=180)
    assert forced.returncode == 0, forced.describe()
    assert _status(cli.db, 1) == ("sent", None) and len(sb.stats()["messages_created_by_to"]) == 5
    again = cli.run("send", "1", timeout=180)  # `sent`: nothing new, exit 0
    assert again.returncode == 0 and "nothing new to send" in again.stdout, again.describe()
    assert sum(sb.stats()["messages_created_by_to"].values()) == 5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_send_of_a_failed_execution_retries_it(status_cli):
    sb, cli = status_cli
    create_execution(cli.db, 5, "Status SMS", "Hi {{FirstName}}", CONTACTS, status="failed")
    result = cli.run("send", "5", timeout=180)
    assert result.returncode == 0, result.describe()
    assert _status(cli.db, 5) == ("sent", None)
    assert sorted(sb.stats()["messages_created_by_to"].values()) == [1] * 5
