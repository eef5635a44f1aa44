"""The whole outbound fulfillment against the real sandbox, as production runs it (the outbound job, in
process): counts, identities, the Interaction log, first states, suppression, input errors and rejected
credentials."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from twilio_pipeline.audience import create_execution
from twilio_pipeline.channels import Channel, ChannelConfigError
from twilio_pipeline.outbound import (
    OutboundInputError,
    load_execution,
    plan_execution,
)
from twilio_pipeline.outbound.plan import SEED_ID_BASE
from twilio_pipeline_tests.outbound.conftest import (
    SENDER,
    assert_exactly_once,
    channels,
    days_ago,
    identities,
    iso,
    ledger_rows,
    run_id,
)
from twilio_pipeline_tests.pipeline_harness import StepFailed

BODY = "Hi {{FirstName}}, 20% off today at the store"
OPTED_OUT = "+14155550111"
OPTED_BACK_IN = "+14155550122"
SEED = "+14155550999"

AUDIENCE = [
    (1, "+14155550100", {"FirstName": "Ada"}),
    (2, "+1 (415) 555-0100", {"FirstName": "Ada"}),       # formatted duplicate of 1
    (3, "+14155550100", {"FirstName": "Ada"}),            # exact duplicate of 1
    (4, "+14155550101", {"FirstName": "Grace"}),
    (5, None, {"FirstName": "Alan"}),                     # invalid: NULL
    (6, "", {"FirstName": "Alan"}),                       # invalid: empty
    (7, "call me maybe", {"FirstName": "Alan"}),          # invalid: letters
    (8, "12345", {"FirstName": "Alan"}),                  # invalid: too short / no country code
    (9, "+99912345678", {"FirstName": "Alan"}),           # invalid: country code
    (10, "415-555-0123", {"FirstName": "Alan"}),          # invalid: national format without default_region
    (11, OPTED_OUT, {"FirstName": "Edsger"}),             # STOP before the send
    (12, OPTED_BACK_IN, {"FirstName": "Barbara"}),        # STOP then START: sent
    (13, "+14155550133", {"LastName": "Knuth"}),          # missing merge field
    (14, "+14155550144", None),                           # no attributes at all
    (15, "+15005550001", {"FirstName": "Ken"}),           # Twilio refuses: 21211
    (16, "+15005550004", {"FirstName": "Radia"}),         # Twilio refuses: 21610 (opted out at Twilio)
    (17, "+1.415.555.0101", {"FirstName": "Grace"}),      # formatted duplicate of 4
    (0, "+14155550155", {"FirstName": "Tim"}),            # lowest id, listed last: still wins
    (18, "+14155550155", {"FirstName": "Tim"}),           # duplicate of 0
]


def _setup(db, sb, **channel_overrides):
    channel_overrides.setdefault("reconcile", {"settle_s": 0.1})
    chans = channels(seeds=[SEED, "not-a-seed"], **channel_overrides)
    channel = chans.channels[0]
    create_execution(db, 101, channel.name, BODY, AUDIENCE)
    sb.inbound(OPTED_OUT, SENDER, "STOP", iso(days_ago(3)))
    sb.inbound(OPTED_BACK_IN, SENDER, "stop", iso(days_ago(3)))
    sb.inbound(OPTED_BACK_IN, SENDER, "START", iso(days_ago(2)))
    return chans, channel


def test_counts_identities_and_interaction_log(db, sandbox, make_pipeline):
    chans, channel = _setup(db, sandbox, price_per_segment=0.0079)
    run = make_pipeline(db, sandbox, chans).send(101)
    r = run.results
    assert r["CountBeforeDedup"] == 19
    assert r["Duplicates"] == 4            # 2, 3, 17, 18
    assert r["InvalidNumbers"] == 6        # 5..10
    assert r["Unsubscribed"] == 1          # 11
    assert r["NotRendered"] == 2           # 13, 14
    assert r["Targeted"] == 6              # 0, 1, 4, 12, 15, 16
    assert r["Sent"] == 4 and r["SendFailed"] == 2 and r["Unresolved"] == 0
    assert r["SeedsSent"] == 1 and r["InvalidSeeds"] == 1 and r["UnsubscribedSeeds"] == 0
    assert r["Segments"] == 4 and r["EstimatedCost"] == pytest.approx(4 * 0.0079)
    identities(r)
    assert db.read_results(101) == r
    rows = assert_exactly_once(db, sandbox, 101)
    by_id = {row["RPContactID"]: row for row in rows}
    assert by_id[2]["Reason"] == "duplicate of RPContactID 1"
    assert by_id[18]["Reason"] == "duplicate of RPContactID 0"
    assert by_id[10]["Outcome"] == "invalid" and "default_region" in by_id[10]["Reason"]
    assert by_id[13]["Outcome"] == "not_rendered" and "FirstName" in by_id[13]["Reason"]
    assert by_id[15]["ErrorCode"] == 21211 and by_id[16]["ErrorCode"] == 21610
    first, second = SEED_ID_BASE - 1, SEED_ID_BASE - 2
    assert by_id[first]["IsSeed"] and by_id[first]["Outcome"] == "sent" and by_id[second]["Outcome"] == "invalid"
    assert by_id[1]["Body"] == "Hi Ada, 20% off today at the store"

    # First states: Queued per accepted message, Failed with the error code per refusal; seeds untracked.
    st = db.tables.states
    with db.connect() as conn:
        states = {(s.RPContactID, s.FulfillmentState, s.EventName)
                  for s in conn.execute(sa.select(st).where(st.c.ChannelExecutionID == 101))}
    assert states == {(0, "Queued", None), (1, "Queued", None), (4, "Queued", None), (12, "Queued", None),
                      (15, "Failed", "21211"), (16, "Failed", "21610")}
    # 21610 on send is recorded as STOP for the sender.
    sup = db.tables.suppression
    with db.connect() as conn:
        stops = conn.execute(sa.select(sup.c.PhoneNumber).where(sup.c.Activity == "STOP")).scalars().all()
    assert "+15005550004" in stops and OPTED_OUT in stops
    ex = db.tables.executions
    with db.connect() as conn:
        assert conn.execute(sa.select(ex.c.Status).where(ex.c.ChannelExecutionID == 101)).scalar() == "sent"
    assert db.staging_tables() == []

    prefix = f"Action: {channel.name} Activity: "
    guide = [line[len(prefix):] for line in run.log.lines if line.startswith(prefix)]
    expected = [
        "Testing channel availability, attempt 1",
        "Channel availability test returned the following results:",
        "Connect to Twilio: - Success",
        "Channel availability test completed successfully",
        "Retrieving SMS subscription data",
        "Deduplicating on contact key",
        "Count before deduplication: 19",
        "Count after deduplication: 15",
        "Number of duplicates: 4",
        "Committing offer history data",
        "About to send SMS campaign",
        "Count before deduplication: 19",
        "Preparing to send Twilio messages",
        "Sending first batch of SMS campaign: 7 messages",
        "4 SMS(s) have been sent",
        "6 invalid SMS numbers",
        "1 unsubscribed SMS numbers",
        "1 seed SMS(s) have been sent",
        "1 invalid seed SMS numbers",
        "0 unsubscribed seed SMS numbers",
    ]
    remaining = iter(guide)
    missing = [line for line in expected if not any(g == line for g in remaining)]
    assert not missing, (missing, guide)  # every line present, in this (chronological) order
    assert run.commit.as_metadata()["Sent"] == 4
    assert "Count before deduplication: 19" in run.plan.as_metadata()["interaction_log"]


def test_rerun_sends_nothing_and_recomputes_same_results(db, sandbox, make_pipeline):
    chans, channel = _setup(db, sandbox)
    pipeline = make_pipeline(db, sandbox, chans)
    first = pipeline.send(101)
    first_results = first.results
    posts = sandbox.stats()["requests_by_endpoint"]["POST Messages"]
    second = pipeline.send(101)
    assert second.send.nothing_to_send and second.send.requests_this_run == 0
    assert second.plan.newly_planned == 0
    assert sandbox.stats()["requests_by_endpoint"]["POST Messages"] == posts
    assert second.results == first_results
    assert_exactly_once(db, sandbox, 101)


def test_input_errors_fail_before_any_request(db, sandbox, log, make_pipeline):
    chans = channels()
    with pytest.raises(OutboundInputError, match="execution 404 does not exist"):
        load_execution(db, chans, 404)
    create_execution(db, 1, "No Such Channel", BODY, [(1, "+14155550100", {"FirstName": "A"})])
    with pytest.raises(OutboundInputError, match="names channel 'No Such Channel', which is not in the channel file"):
        load_execution(db, chans, 1)
    create_execution(db, 2, chans.channels[0].name, BODY, [])
    with pytest.raises(OutboundInputError, match="execution 2 has no recipients"):
        load_execution(db, chans, 2)
    with pytest.raises(ChannelConfigError, match="from_number"):
        channels(from_number="+1-not-a-number")
    bad = Channel.model_construct(**{**chans.channels[0].model_dump(), "from_number": "12"})
    create_execution(db, 3, bad.name, BODY, [(1, "+14155550100", {"FirstName": "A"})])
    # The channel file with the malformed sender, as a user would write it: the run fails in one line.
    pipeline = make_pipeline(db, sandbox, chans)
    pipeline.channels_path.write_text(pipeline.channels_path.read_text().replace(SENDER, "12"))
    with pytest.raises(StepFailed, match="key 'from_number': must be an E.164 number"):
        pipeline.send(3)
    with pytest.raises(OutboundInputError, match="from_number '12'"):
        plan_execution(db, bad, 3, run_id=run_id(), log=log)
    assert sandbox.stats()["requests_total"] == 0
    assert ledger_rows(db, 3) == []


def test_rejected_credentials_fail_at_once(db, sandbox, make_pipeline):
    chans, channel = _setup(db, sandbox)
    with pytest.raises(StepFailed, match="rejected the credentials") as failed:
        make_pipeline(db, sandbox, chans, auth_token="wrong-token").send(101)
    log = failed.value.log
    assert failed.value.step == "suppression_refresh"
    assert sandbox.stats()["requests_by_endpoint"].get("POST Messages", 0) == 0
    assert sum(1 for line in log.lines if "Testing channel availability" in line) == 1
    ex = db.tables.executions
    with db.connect() as conn:
        status, reason = conn.execute(sa.select(ex.c.Status, ex.c.StatusReason)
                                      .where(ex.c.ChannelExecutionID == 101)).one()
    assert status == "failed" and "rejected the credentials" in reason
    assert "wrong-token" not in reason and not any("wrong-token" in line for line in log.lines)
    assert db.staging_tables() == []
    assert db.lease_holder("outbound:101") is None


def test_connectivity_test_false_skips_the_probe(db, sandbox, make_pipeline):
    chans, channel = _setup(db, sandbox, connectivity_test=False)
    run = make_pipeline(db, sandbox, chans).send(101)
    assert "GET IncomingPhoneNumbers" not in sandbox.stats()["requests_by_endpoint"]
    assert run.connectivity is None and run.results["Sent"] == 4
