"""Never twice, never lost: interrupted sends, crash leftovers, concurrent runs, 429 storms and
ambiguous 5xx/timeouts, all against the real sandbox process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import sqlalchemy as sa

from twilio_pipeline.audience import create_execution, demo_audience
from twilio_pipeline.logs import ListLog
from twilio_pipeline.outbound import (
    ExecutionBusy,
    commit_execution,
    plan_execution,
    send_execution,
)
from twilio_pipeline.outbound.ledger import Claims
from twilio_pipeline_tests.outbound.conftest import (
    assert_exactly_once,
    channels,
    client_for,
    identities,
    ledger_rows,
    message_ids,
    run_id,
)

BODY = "Hello {{FirstName}}: new offer inside"


def _audience(n: int, start: int = 1):
    return [(i, f"+1415{i:07d}", {"FirstName": f"P{i}"}) for i in range(start, start + n)]


def _planned(db, n: int, execution_id: int = 7, **overrides):
    chans = channels(**overrides)
    channel = chans.channels[0]
    create_execution(db, execution_id, channel.name, BODY, _audience(n))
    plan_execution(db, channel, execution_id, run_id=run_id(), log=ListLog())
    return chans, channel


class _Stop(Exception):
    pass


def test_interrupted_send_then_rerun_sends_each_once(db, make_sandbox, log):
    sb = make_sandbox(latency_ms=30)
    chans, channel = _planned(db, 200, max_concurrency=4)  # ~130/s: progress (every 0.5 s) stops it early
    client = client_for(sb, channel)

    def progress(done, total, rate):
        if done >= 60:
            raise _Stop("operator pressed Ctrl-C")

    with pytest.raises(_Stop):
        send_execution(db, client, channel, 7, run_id=run_id(), log=log, progress=progress, claim_batch=50)
    rows = ledger_rows(db, 7)
    outcomes = {r["Outcome"] for r in rows}
    assert "inflight" not in outcomes, "requests under way were recorded, unsent claims released"
    sent_before = sum(r["Outcome"] == "sent" for r in rows)
    assert 60 <= sent_before < 200
    assert db.lease_holder("outbound:7") is None and db.staging_tables() == []

    summary = send_execution(db, client, channel, 7, run_id=run_id(), log=log, settle_s=0.1)
    assert summary.requests_this_run == 200 - sent_before
    assert_exactly_once(db, sb, 7)
    assert len(message_ids(db, 7)) == 200
    res = commit_execution(db, channel, 7, run_id=run_id(), log=log)
    assert res.results["Sent"] == 200 and res.status == "sent"
    identities(res.results)


def test_rows_left_inflight_by_a_dead_run_are_reconciled_first(db, sandbox, log):
    chans, channel = _planned(db, 40)
    client = client_for(sandbox, channel)
    # A run that died after claiming 5 rows, before requesting them.
    dead = Claims(db, 7, "dead-run").next_planned(5)
    assert len(dead) == 5
    summary = send_execution(db, client, channel, 7, run_id=run_id(), log=log, settle_s=0.1)
    assert summary.orphans == 5 and summary.adopted == 0 and summary.resent == 5
    assert_exactly_once(db, sandbox, 7)

    # A run that died after its requests reached Twilio but before it recorded the answers.
    led, ids = db.tables.ledger, db.tables.message_ids
    with db.begin() as conn:
        lost = conn.execute(sa.select(led.c.RPContactID, led.c.MessageSID).where(
            led.c.ChannelExecutionID == 7, led.c.RPContactID.between(10, 17))).all()
        conn.execute(led.update().where(led.c.ChannelExecutionID == 7, led.c.RPContactID.between(10, 17))
                     .values(Outcome="inflight", MessageSID=None, MessageStatus=None, RunID="killed-run"))
        conn.execute(ids.delete().where(ids.c.MessageID.in_([sid for _, sid in lost])))
    posts = sandbox.stats()["requests_by_endpoint"]["POST Messages"]
    summary = send_execution(db, client, channel, 7, run_id=run_id(), log=log, settle_s=0.1)
    assert summary.orphans == 8 and summary.adopted == 8 and summary.resent == 0
    assert sandbox.stats()["requests_by_endpoint"]["POST Messages"] == posts, "nothing re-sent"
    rows = assert_exactly_once(db, sandbox, 7)
    assert {r["RPContactID"]: r["MessageSID"] for r in rows if 10 <= r["RPContactID"] <= 17} == dict(lost)
    assert any("left in flight by an interrupted run" in line for line in log.lines)


def test_two_sends_started_together_send_each_message_once(db, make_sandbox, log):
    sb = make_sandbox(latency_ms=20)
    chans, channel = _planned(db, 150, max_concurrency=10)
    outcomes: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def go(name):
        client = client_for(sb, channel)
        barrier.wait()
        try:
            outcomes[name] = send_execution(db, client, channel, 7, run_id=name, log=log, settle_s=0.1)
        except ExecutionBusy as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=go, args=(f"run-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = [o for o in outcomes.values() if isinstance(o, ExecutionBusy)]
    done = [o for o in outcomes.values() if not isinstance(o, ExecutionBusy)]
    assert len(busy) + len(done) == 2 and done
    for exc in busy:
        assert exc.holder.owner in outcomes and f"run {exc.holder.owner}" in str(exc)
    assert sum(o.requests_this_run for o in done) == 150
    assert_exactly_once(db, sb, 7)


def test_429_storm_loses_and_duplicates_nothing(db, make_sandbox, log):
    sb = make_sandbox(fault_429_rate=0.3, max_concurrency=5, latency_ms=5)
    chans, channel = _planned(db, 200, max_concurrency=20)
    summary = send_execution(db, client_for(sb, channel), channel, 7, run_id=run_id(), log=log, settle_s=0.1)
    assert summary.sent == 200 and summary.unresolved == 0
    assert sb.stats()["throttled_429"] > 0 and summary.throttled > 0
    assert_exactly_once(db, sb, 7)


def test_ambiguous_5xx_and_timeouts_are_reconciled(db, make_sandbox, log):
    sb = make_sandbox(fault_500_rate=0.1, fault_timeout_rate=0.05, fault_after_create=0.5, timeout_s=1.5,
                      latency_ms=5, seed=3)
    chans, channel = _planned(db, 200, max_concurrency=20)
    client = client_for(sb, channel, read_timeout_s=0.5)
    summary = send_execution(db, client, channel, 7, run_id=run_id(), log=log, settle_s=0.3, reconcile_rounds=6)
    assert summary.ambiguous > 0 and summary.adopted > 0 and summary.resent > 0
    faults = sb.stats()["faults_injected"]
    assert faults["500"] > 0 and faults["timeout"] > 0
    res = commit_execution(db, channel, 7, run_id=run_id(), log=log)
    assert res.results["Unresolved"] == 0 and res.results["Sent"] == 200
    identities(res.results)
    assert_exactly_once(db, sb, 7)


def test_large_audience_on_demo_mix(db, make_sandbox, make_pipeline):
    sb = make_sandbox()
    chans = channels(max_concurrency=30, seeds=["+14155550999"], reconcile={"settle_s": 0.1})
    channel = chans.channels[0]
    create_execution(db, 9, channel.name, "Hi {{FirstName}}, your offer is ready", demo_audience(2000, seed=5))
    r = make_pipeline(db, sb, chans).send(9).results
    identities(r)
    assert r["CountBeforeDedup"] == 2000 and r["Duplicates"] > 50 and r["InvalidNumbers"] > 20
    assert r["NotRendered"] > 10 and r["SendFailed"] > 0 and r["SeedsSent"] == 1
    assert_exactly_once(db, sb, 9)
    assert db.staging_tables() == []


CHILD = textwrap.dedent("""
    import sys, logging
    from twilio_pipeline.db import Database
    from twilio_pipeline.channels import parse_channels
    from twilio_pipeline.outbound import send_execution
    from twilio_pipeline.twilio import TwilioCredentials, Endpoints
    from twilio_pipeline.twilio.channel_client import client_for_channel
    url, prefix, base, sid, token = sys.argv[1:6]
    db = Database(url, prefix=prefix)
    chans = parse_channels({"channels": [{"name": "Test SMS Channel", "from_number": "+15005550006",
                                          "max_concurrency": 10}]})
    client = client_for_channel(TwilioCredentials(sid, token), chans.channels[0], Endpoints(base, base, base))
    send_execution(db, client, chans.channels[0], 7, run_id="child-run", log=logging.getLogger("child"))
""")


@pytest.mark.slow
def test_send_killed_with_sigkill_then_rerun(db, make_sandbox, log, tmp_path):
    sb = make_sandbox(latency_ms=20)
    chans, channel = _planned(db, 200, max_concurrency=10)
    child = subprocess.Popen([sys.executable, "-c", CHILD, db.url.render_as_string(hide_password=False), db.prefix,
                              sb.base_url, sb.account_sid, sb.auth_token], cwd=tmp_path)
    deadline = time.monotonic() + 30
    while sb.stats()["messages_outbound"] < 50:
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    holder = db.lease_holder("outbound:7")
    assert holder is not None and holder.owner == "child-run"  # the dead run's lease is still there ...
    summary = send_execution(db, client_for(sb, channel), channel, 7, run_id=run_id(), log=log, settle_s=0.2)
    assert summary.orphans > 0                                  # ... and is taken over at once (dead pid)
    assert_exactly_once(db, sb, 7)
    assert len(message_ids(db, 7)) == 200
