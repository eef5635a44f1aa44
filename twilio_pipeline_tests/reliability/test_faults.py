"""Faults: with 10 % 429s, 2 % 500s (half of them after the message was created), 1 % connection resets
and 1 % stalled requests on every API call, `twilio-pipeline send` and `sync` still complete, every
eligible recipient gets exactly one message, and every error Twilio refused a recipient with is
recorded on that recipient with its code (ledger, Failed state, results; 21610 as an opt-out)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from twilio_pipeline.audience import create_execution
from twilio_pipeline.channels import parse_channels
from twilio_pipeline.inbound import suppressed_numbers
from twilio_pipeline.logs import ListLog
from twilio_pipeline.rules.states import state_name
from twilio_pipeline_tests.reliability.conftest import (
    REFUSED,
    SENDER,
    assert_identities,
    assert_no_traceback,
    assert_sid_by_sid,
    assert_unique_states,
    channel,
    ledger,
    mixed_audience,
)

EXECUTION = 3
CONTACTS = 800


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_send_and_sync_complete_under_faults_exactly_once(make_sandbox, make_cli):
    sb = make_sandbox(latency_ms=10, fault_429_rate=0.10, fault_500_rate=0.02, fault_after_create=0.5,
                      fault_reset_rate=0.01, fault_timeout_rate=0.01, timeout_s=1.0, status_delay_ms=500,
                      undelivered_rate=0.05, failed_rate=0.03, seed=9)
    spec = channel("Faulty SMS", max_concurrency=20)
    cli = make_cli(sb, [spec])
    audience = mixed_audience(sb, CONTACTS, seed=31)
    create_execution(cli.db, EXECUTION, "Faulty SMS", "Hello {{FirstName}}, a deal for you", audience.contacts)

    # Send: re-run only while something is still unresolved (Twilio's answers were ambiguous).
    runs = []
    for _ in range(3):
        result = cli.run("send", str(EXECUTION), timeout=300)
        runs.append(result)
        assert_no_traceback(result.output)
        assert result.returncode == 0, result.describe()
        if cli.db.read_results(EXECUTION)["Unresolved"] == 0:
            break
    results = cli.db.read_results(EXECUTION)
    assert results["Unresolved"] == 0 and results["Pending"] == 0, runs[-1].describe()
    faults = sb.stats()["faults_injected"]
    assert all(faults[k] > 0 for k in ("429", "500", "reset", "timeout")), faults

    assert_sid_by_sid(cli.db, sb, EXECUTION, audience.eligible)
    rows = {r["RPContactID"]: r for r in ledger(cli.db, EXECUTION)}
    assert {rid: rows[rid]["Outcome"] for rid in audience.expected} == audience.expected
    # Every refusal is recorded on its recipient with Twilio's code: ledger, Failed state, results.
    assert {rid: rows[rid]["ErrorCode"] for rid in audience.refused} == audience.refused
    assert all(rows[rid]["Reason"] for rid in audience.refused)
    st = cli.db.tables.states
    with cli.db.connect() as conn:
        failed = dict(conn.execute(sa.select(st.c.RPContactID, st.c.EventName).where(
            st.c.ChannelExecutionID == EXECUTION, st.c.FulfillmentState.in_(["Failed", "Undelivered"]))).all())
    assert {rid: failed.get(rid) for rid in audience.refused} == {r: str(c) for r, c in audience.refused.items()}
    # A message adopted after an ambiguous answer may already have failed at Twilio: its state carries the code.
    by_to = {m["to"]: m for m in sb.messages(direction="outbound-api")}
    for rid in set(failed) - set(audience.refused):
        assert failed[rid] == str(by_to[audience.eligible[rid]]["error_code"]), (rid, failed[rid])
    assert_identities(results)
    assert results["SendFailed"] == len(REFUSED) and results["Sent"] == len(audience.eligible)
    chan = parse_channels({"channels": [spec]}).channels[0]
    with cli.db.connect() as conn:
        assert "+15005550004" in {r[0] for r in conn.execute(suppressed_numbers(cli.db, chan))}, \
            "a 21610 refusal must be recorded as an opt-out"

    # Sync under the same faults: statuses and replies come back complete, each stored once.
    sb.advance_clock(30)
    repliers = sorted(audience.eligible.values())[:40]
    sb.inbound_bulk([{"From": n, "To": SENDER, "Body": "STOP" if i % 2 else "HELP"} for i, n in enumerate(repliers)])
    for _ in range(3):
        result = cli.run("sync", timeout=300)
        assert_no_traceback(result.output)
        assert result.returncode == 0, result.describe()
        with cli.db.connect() as conn:
            left = conn.execute(sa.select(sa.func.count()).select_from(cli.db.tables.message_ids)).scalar()
        if left == 0:
            break
    assert left == 0, "tracked SIDs left after the syncs"
    assert_unique_states(cli.db)
    by_to = {m["to"]: m for m in sb.messages(direction="outbound-api")}
    rid_of = {n: rid for rid, n in audience.eligible.items()}
    with cli.db.connect() as conn:
        states = conn.execute(sa.select(st.c.RPContactID, st.c.FulfillmentState, st.c.EventName).where(
            st.c.ChannelExecutionID == EXECUTION)).all()
        suppressed = {r[0] for r in conn.execute(suppressed_numbers(cli.db, chan))}
    have = {(r[0], r[1], r[2]) for r in states}
    for number, m in by_to.items():
        code = str(m["error_code"]) if m["status"] in ("failed", "undelivered") else None
        assert (rid_of[number], state_name(m["status"]), code) in have, (number, m["status"])
    replies = {(r[0], r[2]) for r in states if r[1] == "Replied"}
    assert replies == {(rid_of[n], "STOP" if i % 2 else "HELP") for i, n in enumerate(repliers)}
    assert {n for i, n in enumerate(repliers) if i % 2} <= suppressed
    results = cli.db.read_results(EXECUTION)
    assert sum(v for k, v in results.items() if k.startswith("Status:")) == results["Sent"]


def test_a_message_adopted_after_it_failed_keeps_its_error_code(db, make_sandbox):
    """The window the fault test hits by chance, made certain: Twilio created the message, the answer was
    lost with the run, and by the next run the message has failed. Its adopted state carries the code."""
    from twilio_pipeline.outbound import commit_execution, plan_execution, send_execution
    from twilio_pipeline.twilio import Endpoints, TwilioCredentials
    from twilio_pipeline.twilio.channel_client import client_for_channel

    sb = make_sandbox(failed_rate=1.0, status_delay_ms=100, seed=1)
    chan = parse_channels({"channels": [channel("Adopt SMS", max_concurrency=2)]}).channels[0]
    create_execution(db, 4, "Adopt SMS", "Hello", [(1, "+14155550601", None), (2, "+14155550602", None)])
    log = ListLog()
    plan_execution(db, chan, 4, run_id="plan", log=log)
    client = client_for_channel(TwilioCredentials(sb.account_sid, sb.auth_token), chan,
                                Endpoints(sb.base_url, sb.base_url, sb.base_url))
    with client:
        created = client.create_message({"To": "+14155550601", "From": SENDER, "Body": "Hello"})
        assert created.accepted
        led = db.tables.ledger
        with db.begin() as conn:  # a run claimed the row, Twilio took the request, the run died
            conn.execute(led.update().where(led.c.ChannelExecutionID == 4, led.c.RPContactID == 1)
                         .values(Outcome="inflight", RunID="dead-run", AttemptedAt=created.started_at.replace(
                             tzinfo=None)))
        sb.advance_clock(30)
        summary = send_execution(db, client, chan, 4, run_id="next", log=log, settle_s=0.05)
    assert summary.adopted == 1 and summary.resent == 0
    failed = sb.messages(to="+14155550601")[0]
    assert failed["sid"] == created.message["sid"] and failed["status"] == "failed" and failed["error_code"]
    res = commit_execution(db, chan, 4, run_id="commit", log=log)
    st = db.tables.states
    with db.connect() as conn:
        states = conn.execute(sa.select(st.c.FulfillmentState, st.c.EventName).where(
            st.c.ChannelExecutionID == 4, st.c.RPContactID == 1)).all()
    assert states == [("Failed", str(failed["error_code"]))]
    assert res.results["Sent"] == 2


