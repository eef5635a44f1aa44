"""Ambiguous creates (a 5xx after Twilio made the message) on a Twilio that lists new messages late and
redacts bodies: nobody is texted twice, every SID is recorded, and `resend_unconfirmed: false` never resends."""

from __future__ import annotations

import sqlalchemy as sa

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import utcnow
from twilio_pipeline.logs import ListLog
from twilio_pipeline.outbound import commit_execution, plan_execution, send_execution
from twilio_pipeline_tests.outbound.conftest import (
    assert_exactly_once,
    channels,
    client_for,
    identities,
    ledger_rows,
    run_id,
)

BODY = "Hello {{FirstName}}: new offer inside"


def _plan(db, n: int, execution_id: int = 40, start: int = 1, **overrides):
    channel = channels(**overrides).channels[0]
    create_execution(db, execution_id, channel.name, BODY,
                     [(i, f"+1415{i:07d}", {"FirstName": f"P{i}"}) for i in range(start, start + n)])
    plan_execution(db, channel, execution_id, run_id=run_id(), log=ListLog())
    return channel


def test_redacted_bodies_and_list_lag_never_text_anyone_twice(db, make_sandbox, log):
    sb = make_sandbox(fault_500_rate=0.15, fault_after_create=1.0, redact_bodies=True, list_lag_ms=500, seed=5)
    channel = _plan(db, 60, max_concurrency=8, reconcile={"settle_s": 1.0})
    summary = send_execution(db, client_for(sb, channel), channel, 40, run_id=run_id(), log=log)
    assert summary.ambiguous > 0
    assert summary.adopted == summary.ambiguous and summary.resent == 0, "every created message found"
    rows = assert_exactly_once(db, sb, 40)  # one text each, every SID recorded and staged
    assert all(r["MessageSID"] for r in rows)
    res = commit_execution(db, channel, 40, run_id=run_id(), log=log)
    assert res.status == "sent" and res.results["Sent"] == 60 and res.results["Unresolved"] == 0
    identities(res.results)


def test_resend_unconfirmed_false_keeps_a_message_twilio_does_not_list_unresolved(db, make_sandbox, log):
    sb = make_sandbox(fault_500_rate=0.2, fault_after_create=0.0, seed=11)  # a 5xx that created nothing
    channel = _plan(db, 40, max_concurrency=8, reconcile={"settle_s": 0.2, "resend_unconfirmed": False})
    summary = send_execution(db, client_for(sb, channel), channel, 40, run_id=run_id(), log=log)
    assert summary.ambiguous > 0 and summary.resent == 0 and summary.unresolved == summary.ambiguous
    created = sb.stats()["messages_created_by_to"]
    doubtful = [r for r in ledger_rows(db, 40) if r["Outcome"] == "ambiguous"]
    assert len(doubtful) == summary.ambiguous and not [r for r in doubtful if r["ToNumber"] in created]
    assert any("resend_unconfirmed is false" in line for line in log.lines)
    res = commit_execution(db, channel, 40, run_id=run_id(), log=log)
    assert res.status == "failed" and res.results["Unresolved"] == summary.ambiguous
    identities(res.results)

    posts = sb.stats()["requests_by_endpoint"]["POST Messages"]
    again = send_execution(db, client_for(sb, channel), channel, 40, run_id=run_id(), log=log)
    assert again.resent == 0 and again.unresolved == summary.ambiguous
    assert sb.stats()["requests_by_endpoint"]["POST Messages"] == posts, "a later send does not resend either"


def test_a_message_listed_after_settle_s_is_adopted_by_a_later_send_not_resent(db, make_sandbox, log):
    sb = make_sandbox(fault_500_rate=0.25, fault_after_create=1.0, list_lag_ms=1500, seed=2)
    channel = _plan(db, 20, max_concurrency=4, reconcile={"settle_s": 0.1, "resend_unconfirmed": False})
    first = send_execution(db, client_for(sb, channel), channel, 40, run_id=run_id(), log=log)
    assert first.ambiguous > 0 and first.unresolved > 0 and first.resent == 0
    later = channels(max_concurrency=4, reconcile={"settle_s": 1.5}).channels[0]
    second = send_execution(db, client_for(sb, later), later, 40, run_id=run_id(), log=log)
    assert second.adopted == first.unresolved and second.resent == 0 and second.unresolved == 0
    assert_exactly_once(db, sb, 40)


def test_a_message_another_row_holds_is_never_adopted(db, sandbox, log):
    """The only message to the number from our sender in the window is another execution's: resend."""
    channel = _plan(db, 1, execution_id=41, reconcile={"settle_s": 0.1})
    send_execution(db, client_for(sandbox, channel), channel, 41, run_id=run_id(), log=log)
    theirs = ledger_rows(db, 41)[0]["MessageSID"]
    _plan(db, 1, execution_id=42, reconcile={"settle_s": 0.1})
    led = db.tables.ledger
    with db.begin() as conn:  # a create of execution 42 that got a 5xx and made nothing
        conn.execute(led.update().where(led.c.ChannelExecutionID == 42)
                     .values(Outcome="ambiguous", AttemptedAt=utcnow(), UpdatedAt=utcnow(), RunID="gone"))
    summary = send_execution(db, client_for(sandbox, channel), channel, 42, run_id=run_id(), log=log)
    assert summary.adopted == 0 and summary.resent == 1
    ours = ledger_rows(db, 42)[0]
    assert ours["Outcome"] == "sent" and ours["MessageSID"] not in (None, theirs)
    assert sandbox.stats()["messages_created_by_to"] == {ours["ToNumber"]: 2}
    with db.connect() as conn:
        ids = db.tables.message_ids
        assert conn.execute(sa.select(sa.func.count()).select_from(ids)
                            .where(ids.c.MessageID.in_([theirs, ours["MessageSID"]]))).scalar() == 2
