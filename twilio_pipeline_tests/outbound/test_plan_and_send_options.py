"""Planning rules (idempotence, late additions, suppression, seeds, UCS-2, chunking) and send options
(Messaging Service, media, opt-out line, drain warning). Whole sends run the outbound job in process."""

from __future__ import annotations

import sqlalchemy as sa

from twilio_pipeline.audience import REFUSED_NUMBERS, add_contacts, create_execution, demo_audience
from twilio_pipeline.outbound import commit_execution, plan_execution, send_execution
from twilio_pipeline.rules.phones import normalise_number
from twilio_pipeline_tests.outbound.conftest import (
    SENDER,
    channels,
    client_for,
    days_ago,
    identities,
    iso,
    ledger_rows,
    run_id,
)


def test_plan_is_idempotent_and_plans_late_additions(db, log):
    chans = channels()
    channel = chans.channels[0]
    create_execution(db, 5, channel.name, "Hi {{FirstName}}",
                     [(i, f"+1415555{i:04d}", {"FirstName": "X"}) for i in range(1, 11)])
    first = plan_execution(db, channel, 5, run_id=run_id(), log=log)
    assert first.newly_planned == 10 and first.to_send == 10
    again = plan_execution(db, channel, 5, run_id=run_id(), log=log)
    assert again.newly_planned == 0 and again.to_send == 10
    # The upstream adds contacts later: one new, one repeating a number already planned (even with a
    # lower RPContactID it is the duplicate: the earlier row may already be sent).
    add_contacts(db, 5, [(11, "+14155550999", {"FirstName": "Y"}), (0, "+1 415 555 0003", {"FirstName": "Z"})])
    late = plan_execution(db, channel, 5, run_id=run_id(), log=log)
    assert late.newly_planned == 2 and late.to_send == 11 and late.duplicates == 1
    rows = {r["RPContactID"]: r for r in ledger_rows(db, 5)}
    assert rows[0]["Outcome"] == "duplicate" and "already in this execution" in rows[0]["Reason"]


def test_dedupe_is_global_across_chunks(db, log):
    chans = channels()
    channel = chans.channels[0]
    contacts = list(demo_audience(600, seed=2)) + [(601, "+1 (415) 555-0100", {"FirstName": "A"}),
                                                   (602, "+14155550100", {"FirstName": "A"})]
    create_execution(db, 6, channel.name, "Hi {{FirstName}}", contacts)
    create_execution(db, 66, channel.name, "Hi {{FirstName}}", contacts)
    small = plan_execution(db, channel, 6, run_id=run_id(), log=log, chunk_rows=37)
    big = plan_execution(db, channel, 66, run_id=run_id(), log=log, chunk_rows=100_000)
    keys = ("count_before_dedup", "duplicates", "invalid_numbers", "not_rendered", "to_send")
    assert {k: getattr(small, k) for k in keys} == {k: getattr(big, k) for k in keys}
    a = {(r["RPContactID"], r["Outcome"], r["Reason"]) for r in ledger_rows(db, 6)}
    b = {(r["RPContactID"], r["Outcome"], r["Reason"]) for r in ledger_rows(db, 66)}
    assert a == b
    # Brute force in Python: the lowest RPContactID of each normalised number wins.
    winners: dict[str, int] = {}
    for rid, address, _ in contacts:
        e164 = normalise_number(address).e164
        if e164:
            winners[e164] = min(rid, winners.get(e164, rid))
    dups = sum(1 for rid, address, _ in contacts
               if normalise_number(address).e164 and winners[normalise_number(address).e164] != rid)
    assert small.duplicates == dups
    assert small.count_before_dedup == len(contacts)


def test_suppression_seeds_and_opt_back_in(db, sandbox, make_pipeline):
    chans = channels(seeds=["+14155550998", "+14155550999", "+1 415 555 0999"],
                     seed_attributes={"Store": "Main St"}, reconcile={"settle_s": 0.1})
    channel = chans.channels[0]
    create_execution(db, 8, channel.name, "Hi {{FirstName}}, visit {{Store}}",
                     [(1, "+14155550100", {"FirstName": "A", "Store": "Elm"}),
                      (2, "+14155550101", {"FirstName": "B", "Store": "Elm"})])
    sandbox.inbound("+14155550998", SENDER, "UNSUBSCRIBE", iso(days_ago(1)))   # a seed opted out
    sandbox.inbound("+14155550101", SENDER, "STOP", iso(days_ago(5)))
    sandbox.inbound("+14155550101", SENDER, "UNSTOP", iso(days_ago(4)))        # back in: sent
    run = make_pipeline(db, sandbox, chans).send(8)
    r = run.results
    assert r["Sent"] == 2 and r["Unsubscribed"] == 0
    assert r["UnsubscribedSeeds"] == 1 and r["SeedsSent"] == 1 and r["InvalidSeeds"] == 0
    seed_msgs = sandbox.messages(to="+14155550999")
    assert [m["body"] for m in seed_msgs] == ["Hi [FirstName], visit Main St"]
    assert len(run.plan.as_metadata()) > 5 and any("listed twice" in w for w in run.log.warnings)
    identities(r)
    ids = db.tables.message_ids
    with db.connect() as conn:
        tracked = conn.execute(sa.select(ids.c.RPContactID)).scalars().all()
    assert sorted(tracked) == [1, 2]  # seeds are not tracked


def test_opt_out_after_plan_is_honoured_before_sending(db, sandbox, log, make_pipeline):
    chans = channels(reconcile={"settle_s": 0.1})
    channel = chans.channels[0]
    create_execution(db, 8, channel.name, "Hello", [(1, "+14155550100", None), (2, "+14155550101", None)])
    plan_execution(db, channel, 8, run_id=run_id(), log=log)
    sandbox.inbound("+14155550101", SENDER, "STOP", iso(days_ago(0.01)))
    run = make_pipeline(db, sandbox, chans).send(8)
    assert run.plan.newly_suppressed == 1 and run.results["Unsubscribed"] == 1
    assert sandbox.stats()["messages_created_by_to"] == {"+14155550100": 1}


def test_messaging_service_media_opt_out_line_and_ucs2(db, sandbox, make_pipeline):
    chans = channels(messaging_service_sid=sandbox.messaging_service_sid, append_opt_out="Reply STOP to opt out",
                     validity_period_s=600, reconcile={"settle_s": 0.1})
    channel = chans.channels[0]
    create_execution(db, 12, channel.name, "It’s {{FirstName}}’s day", [(1, "+14155550100", {"FirstName": "Ada"})],
                     media_url="https://example.com/a.png")
    create_execution(db, 13, channel.name, "Already says STOP to end", [(1, "+14155550101", None)])
    pipeline = make_pipeline(db, sandbox, chans)
    run = pipeline.send(12)
    assert run.results["Sent"] == 1
    msg = sandbox.messages(to="+14155550100")[0]
    assert msg["body"] == "It’s Ada’s day Reply STOP to opt out"
    assert msg["messaging_service_sid"] == sandbox.messaging_service_sid
    assert any("UCS-2" in w and "U+2019" in w for w in run.log.warnings)
    assert run.plan.ucs2_messages == 1
    st = db.tables.states
    with db.connect() as conn:
        assert conn.execute(sa.select(st.c.FulfillmentState).where(st.c.ChannelExecutionID == 12)).scalar() == "Accepted"
    pipeline.send(13)
    assert sandbox.messages(to="+14155550101")[0]["body"] == "Already says STOP to end"


def test_drain_warning_suggests_a_pool(db, sandbox, log):
    chans = channels(validity_period_s=5)  # a long code drains 1 segment/s: 5 segments fit
    channel = chans.channels[0]
    create_execution(db, 14, channel.name, "x" * 200, [(i, f"+1415555{i:04d}", None) for i in range(1, 6)])
    plan_execution(db, channel, 14, run_id=run_id(), log=log)
    summary = send_execution(db, client_for(sandbox, channel), channel, 14, run_id=run_id(), log=log, settle_s=0.1)
    assert summary.drain_warning and "10 segments exceed" in summary.drain_warning
    assert "Messaging Service pool of at least 2 long codes" in summary.drain_warning
    assert summary.drain_warning in "\n".join(log.warnings)
    commit = commit_execution(db, channel, 14, run_id=run_id(), log=log)
    assert commit.results["Segments"] == 10


def test_demo_audience_is_deterministic_and_mixed():
    a, b = list(demo_audience(3000, seed=1)), list(demo_audience(3000, seed=1))
    assert a == b and [c[0] for c in a] == list(range(1, 3001))
    addresses = [c[1] for c in a]
    assert any(x is None for x in addresses) and any(x in REFUSED_NUMBERS for x in addresses)
    assert any(isinstance(x, str) and x.startswith("+1 (") for x in addresses)
    assert any(c[2] is None or "FirstName" not in c[2] for c in a)
    assert len(set(addresses)) < len(addresses)


def test_fast_number_path_agrees_with_the_rule():
    from twilio_pipeline.outbound.plan import _parse_number, _slow_parse

    samples = [a for _, a, _ in demo_audience(5000, seed=4)] + [
        "+14155550100", "+114155550100", "+10005550100", "+18005550100", "+1415555010", "+141555501000",
        "+442079460958", "+390612345678", "+15005550001"]
    for raw in samples:
        assert _parse_number(raw, None) == _slow_parse(raw, None), raw
        assert _parse_number(raw, "US") == _slow_parse(raw, "US"), raw
