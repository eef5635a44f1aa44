"""The channel sync end to end against the sandbox, on SQLite, PostgreSQL and MariaDB: whole syncs run the
Dagster jobs in process (`PipelineHarness`), the tests of one step call the step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
import sqlalchemy as sa

from twilio_pipeline.inbound import (
    aggregate_results,
    eligible_executions,
    fetch_statuses,
    load_states,
    parse_keywords,
    refresh_inbound,
)
from twilio_pipeline.inbound import state_load as state_load_module
from twilio_pipeline.sandbox import SANDBOX_MESSAGING_SERVICE_SID
from twilio_pipeline.sandbox.process import SandboxProcess
from twilio_pipeline_tests.inbound.helpers import (
    SENDER,
    count,
    make_channel,
    make_client,
    numbers,
    sandbox_now,
    send_execution,
    state_rows,
    suppressed,
)


@pytest.fixture(scope="module")
def lossy_server(tmp_path_factory):
    """A sandbox where some messages end undelivered or failed."""
    with SandboxProcess(tmp_path_factory.mktemp("lossy"), status_delay_ms=50, undelivered_rate=0.2,
                        failed_rate=0.1, seed=7, access_log=False) as sb:
        yield sb


def inbound_results(db, eid: int) -> dict:
    return {k: v for k, v in db.read_results(eid).items() if k.startswith(("Status:", "Reply:", "Expired"))}


def assert_unique_states(db) -> None:
    st = db.tables.states
    delivery = (sa.select(sa.func.count()).select_from(st).where(st.c.FulfillmentState != "Replied")
                .group_by(st.c.ChannelExecutionID, st.c.RPContactID, st.c.FulfillmentState)
                .having(sa.func.count() > 1))
    replies = (sa.select(sa.func.count()).select_from(st).where(st.c.FulfillmentState == "Replied")
               .group_by(st.c.ChannelExecutionID, st.c.RPContactID, st.c.EventName, st.c.Timestamp)
               .having(sa.func.count() > 1))
    with db.connect() as conn:
        assert conn.execute(delivery).all() == []
        assert conn.execute(replies).all() == []


def test_send_deliveries_replies_sync(db, lossy_server, log, make_pipeline):
    sb = lossy_server
    sb.reset()
    channel = make_channel(keywords=["MORE"])
    pipeline = make_pipeline(db, sb, channel)
    with make_client(sb) as client:
        nums = numbers(40)
        send_execution(db, client, channel, 1, nums)
        sb.advance_clock(5)
        sb.inbound(nums[0], SENDER, "STOP")
        sb.inbound(nums[1], SENDER, "more")
        sb.inbound(nums[2], SENDER, "Thanks!")
        sb.inbound(nums[3], SENDER, "help")
        first = pipeline.sync()
        assert first.execution_ids == [1]
        truth = {m["sid"]: m for m in sb.messages(direction="outbound-api")}
        rows = state_rows(db, 1)
        by_contact: dict[int, dict[str, tuple]] = {}
        for _, rid, state, event, ts in rows:
            by_contact.setdefault(rid, {})[state if state != "Replied" else f"Replied:{event}"] = (event, ts)
        ledger = db.tables.ledger
        with db.connect() as conn:
            sid_of = dict(conn.execute(sa.select(ledger.c.RPContactID, ledger.c.MessageSID)).all())
        for rid, states in by_contact.items():
            msg = truth[sid_of[rid]]
            final = msg["status"].capitalize()
            assert "Queued" in states and final in states, (rid, states, msg["status"])
            if final in ("Failed", "Undelivered"):
                assert states[final][0] == str(msg["error_code"])
            else:
                assert states[final][0] is None
        assert by_contact[1]["Replied:STOP"][0] == "STOP"
        assert by_contact[2]["Replied:MORE"][0] == "MORE"
        assert by_contact[4]["Replied:HELP"][0] == "HELP"
        assert not any(k.startswith("Replied") for k in by_contact[3])
        results = db.read_results(1)
        statuses = {k: v for k, v in results.items() if k.startswith("Status:")}
        assert sum(statuses.values()) == results["Sent"] == 40
        expected = {}
        for m in truth.values():
            expected[f"Status:{m['status']}"] = expected.get(f"Status:{m['status']}", 0) + 1
        assert statuses == expected and len(expected) >= 2
        assert (results["Reply:STOP"], results["Reply:MORE"], results["Reply:HELP"], results["Expired"]) == (1, 1, 1, 0)
        assert suppressed(db, channel) == {nums[0]}
        assert count(db, db.tables.message_ids) == 0
        assert count(db, db.tables.pending_states) == 0
        assert db.staging_tables() == []
        # A second sync adds nothing and costs one listing of inbound replies.
        before = (rows, inbound_results(db, 1))
        second = pipeline.sync()
        assert second.execution_ids == [] and second.api_calls == 1
        assert (state_rows(db, 1), inbound_results(db, 1)) == before
        # Recomputing the results gives the same rows.
        aggregate_results(db, [1], log=log)
        assert inbound_results(db, 1) == before[1]
    assert_unique_states(db)


def _sync_until_load(db, client, channel, log, now):
    refresh_inbound(db, client, channel, log=log, now=now)
    parse_keywords(db, channel, log=log, now=now)
    ids = eligible_executions(db, channel)
    fetch_statuses(db, client, channel, ids, log=log, now=now)
    return ids


def test_failure_between_load_and_retirement_loses_and_duplicates_nothing(db, sb, client, log, monkeypatch,
                                                                          make_pipeline):
    channel = make_channel()
    nums = numbers(10)
    send_execution(db, client, channel, 1, nums)
    sb.advance_clock(5)
    sb.inbound(nums[0], SENDER, "STOP")
    now = sandbox_now(sb)
    ids = _sync_until_load(db, client, channel, log, now)
    before = state_rows(db)
    pending = count(db, db.tables.pending_states)
    assert pending == 11

    def crash(*args, **kwargs):
        raise RuntimeError("killed between the insert and the retirement")

    monkeypatch.setattr(state_load_module, "retire_sids", crash)
    with pytest.raises(RuntimeError):
        load_states(db, log=log, execution_ids=ids)
    assert state_rows(db) == before
    assert count(db, db.tables.message_ids) == 10
    assert count(db, db.tables.pending_states) == pending
    monkeypatch.undo()
    # The next sync re-observes (more pending rows for the same states) and loads each state once.
    make_pipeline(db, sb, channel).sync()
    assert count(db, db.tables.message_ids) == 0
    assert count(db, db.tables.pending_states) == 0
    assert len(state_rows(db)) == 10 * 2 + 1
    assert_unique_states(db)
    assert inbound_results(db, 1) == {"Status:delivered": 10, "Reply:STOP": 1, "Expired": 0}


def test_killed_process_during_load_loses_and_duplicates_nothing(db, sb, client, log):
    channel = make_channel()
    nums = numbers(6)
    send_execution(db, client, channel, 1, nums)
    sb.advance_clock(5)
    sb.inbound(nums[1], SENDER, "STOP")
    ids = _sync_until_load(db, client, channel, log, sandbox_now(sb))
    before = state_rows(db)
    script = textwrap.dedent(f"""
        import os, signal
        from twilio_pipeline.db import Database
        from twilio_pipeline.inbound import state_load
        from twilio_pipeline.logs import ListLog

        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        state_load.retire_sids = die
        db = Database({db.url.render_as_string(hide_password=False)!r}, prefix={db.prefix!r})
        state_load.load_states(db, log=ListLog(), execution_ids={ids!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert state_rows(db) == before
    assert count(db, db.tables.message_ids) == 6
    assert db.staging_tables() == []  # the load merges straight from the pending table: nothing to leave
    summary = load_states(db, log=log, execution_ids=ids)
    assert (summary.delivery_states, summary.replies, summary.retired) == (6, 1, 6)
    assert load_states(db, log=log, execution_ids=ids).pending == 0
    assert_unique_states(db)
    aggregate_results(db, ids, log=log)
    assert inbound_results(db, 1) == {"Status:delivered": 6, "Reply:STOP": 1, "Expired": 0}


@pytest.mark.parametrize("attribution", ["latest", "all"])
def test_stop_lands_on_latest_or_all_executions(db, sb, client, make_pipeline, attribution):
    channel = make_channel(reply_attribution=attribution)
    pipeline = make_pipeline(db, sb, channel)
    target = numbers(1, 900)[0]
    for eid in range(1, 6):
        send_execution(db, client, channel, eid, [target, *numbers(2, eid * 10)])
        sb.advance_clock(120)
    sb.inbound(target, SENDER, "STOP")
    pipeline.sync()
    st = db.tables.states
    with db.connect() as conn:
        replied = sorted(conn.execute(sa.select(st.c.ChannelExecutionID, st.c.RPContactID, st.c.EventName)
                                      .where(st.c.FulfillmentState == "Replied")).all())
    expected = [(5, 1, "STOP")] if attribution == "latest" else [(e, 1, "STOP") for e in range(1, 6)]
    assert replied == expected
    stops = {eid: db.read_results(eid).get("Reply:STOP", 0) for eid in range(1, 6)}
    assert stops == ({1: 0, 2: 0, 3: 0, 4: 0, 5: 1} if attribution == "latest" else dict.fromkeys(range(1, 6), 1))
    assert suppressed(db, channel) == {target}



def test_a_reply_to_a_shared_sender_goes_to_the_execution_that_messaged_the_number_last(db, sb, client,
                                                                                       make_pipeline):
    """Two channels send from one number. A person replies to the number, not to a channel: whichever
    channel's sync parses the reply attributes it to the latest execution that texted them (here the
    other channel's) and recognises the other channel's own keyword."""
    from twilio_pipeline.channels import ChannelFile

    promo, alerts = make_channel("Promo", keywords=["MORE"]), make_channel("Alerts", keywords=["DEAL"])
    channels = ChannelFile(channels=(promo, alerts))
    assert channels.sharing_sender(promo) == (alerts,) and channels.sharing_sender(alerts) == (promo,)
    pipeline = make_pipeline(db, sb, channels)
    target = numbers(1, 700)[0]
    send_execution(db, client, promo, 1, [target])
    sb.advance_clock(120)
    send_execution(db, client, alerts, 2, [target])
    sb.advance_clock(120)
    sb.inbound(target, SENDER, "deal")
    s = pipeline.sync("Promo")
    assert (s.keywords.parsed, s.keywords.free_text, s.keywords.replies_attributed) == (1, 0, 1)
    pipeline.sync("Alerts")
    st = db.tables.states
    with db.connect() as conn:
        replied = conn.execute(sa.select(st.c.ChannelExecutionID, st.c.EventName)
                               .where(st.c.FulfillmentState == "Replied")).all()
    assert replied == [(2, "DEAL")]
    assert db.read_results(2).get("Reply:DEAL") == 1 and "Reply:DEAL" not in db.read_results(1)

def test_free_text_is_kept_and_counted_but_not_a_keyword(sqlite_db, sb, client, make_pipeline):
    db = sqlite_db
    channel = make_channel(keywords=["MORE"])
    pipeline = make_pipeline(db, sb, channel)
    nums = numbers(4)
    send_execution(db, client, channel, 1, nums)
    for n, body in zip(nums, ["STOP PLEASE", "Thanks!", "more info", "Who is this?"], strict=True):
        sb.inbound(n, SENDER, body)
    s = pipeline.sync()
    assert (s.keywords.parsed, s.keywords.free_text, s.keywords.keywords) == (4, 4, 0)
    ib = db.tables.inbound
    with db.connect() as conn:
        rows = conn.execute(sa.select(ib.c.Keyword, ib.c.ParsedAt)).all()
    assert len(rows) == 4 and all(k is None and p is not None for k, p in rows)
    assert count(db, db.tables.states, db.tables.states.c.FulfillmentState == "Replied") == 0
    assert count(db, db.tables.suppression) == 0
    assert not any(k.startswith("Reply:") for k in db.read_results(1))


def test_stop_then_start_lifts_the_suppression_through_the_sync(db, sb, client, make_pipeline):
    channel = make_channel()
    pipeline = make_pipeline(db, sb, channel)
    nums = numbers(2)
    send_execution(db, client, channel, 1, nums)
    sb.inbound(nums[0], SENDER, "STOP")
    pipeline.sync()
    assert suppressed(db, channel) == {nums[0]}
    sb.advance_clock(30)
    sb.inbound(nums[0], SENDER, "Start")
    pipeline.sync()
    assert suppressed(db, channel) == set()
    results = db.read_results(1)
    assert (results["Reply:STOP"], results["Reply:START"]) == (1, 1)


def test_bulk_export_mode_loads_the_same_states_as_listing(db, other_db, lossy_server, make_pipeline):
    sb = lossy_server
    sb.reset()
    listing = make_channel()
    exporting = make_channel(status_sync="bulk_export", notification_email="ops@example.com")
    listing_pipeline, exporting_pipeline = make_pipeline(db, sb, listing), make_pipeline(other_db, sb, exporting)
    with make_client(sb) as client:
        nums = numbers(30)
        send_execution(db, client, listing, 1, nums, mirrors=[other_db])
        sb.advance_clock(3 * 86400)  # the send day becomes exportable (two days before Twilio's today)
        send_execution(db, client, listing, 2, numbers(5, 100), mirrors=[other_db])  # today: listed
        sb.advance_clock(5)
        sb.inbound(nums[0], SENDER, "STOP")
        now = listing_pipeline.sandbox_now()
        listed = listing_pipeline.sync(now=now)
        before = sb.stats()["requests_by_endpoint"]
        exported = exporting_pipeline.sync(now=now)
        after = sb.stats()["requests_by_endpoint"]
    used = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    assert any("Export" in k for k in used), used
    assert exported.fetch.exported > 0 and exported.fetch.fetched == 0
    assert listed.fetch.exported == 0
    assert state_rows(other_db) == state_rows(db)
    assert inbound_results(other_db, 1) == inbound_results(db, 1)
    assert inbound_results(other_db, 2) == inbound_results(db, 2)
    assert count(other_db, other_db.tables.message_ids) == 0


def test_backfill_of_three_executions_equals_three_syncs(db, other_db, lossy_server, make_pipeline):
    """A UI backfill of the sync assets (after the channel-level sync of the other database) loads what three
    scheduled syncs loaded."""
    sb = lossy_server
    sb.reset()
    channel = make_channel(keywords=["MORE"])
    pipeline, other = make_pipeline(db, sb, channel), make_pipeline(other_db, sb, channel)
    with make_client(sb) as client:
        for eid in (1, 2, 3):
            nums = numbers(8, eid * 100)
            send_execution(db, client, channel, eid, nums, mirrors=[other_db])
            sb.advance_clock(60)
            sb.inbound(nums[0], SENDER, "MORE")
            pipeline.sync()
        synced = (state_rows(db), [inbound_results(db, e) for e in (1, 2, 3)])
        other.sync_channels()
        backfill = other.backfill([1, 2, 3])
        assert backfill.fetch.full_window and backfill.fetch.tracked == 24
        assert (state_rows(other_db), [inbound_results(other_db, e) for e in (1, 2, 3)]) == synced
        # Backfilling the synced database re-reads retired SIDs and changes nothing.
        pipeline.sync_channels()
        again = pipeline.backfill([1, 2, 3])
        assert again.fetch.tracked == 24 and again.load.delivery_states == 0
        assert (state_rows(db), [inbound_results(db, e) for e in (1, 2, 3)]) == synced
    assert_unique_states(other_db)


def test_records_per_sync_bounds_a_sync_and_drops_nothing(sqlite_db, sb, client, make_pipeline):
    db = sqlite_db
    channel = make_channel(records_per_sync=5)
    pipeline = make_pipeline(db, sb, channel)
    send_execution(db, client, channel, 1, numbers(12))
    send_execution(db, client, channel, 2, numbers(3, 50), first_contact_id=1)
    sb.advance_clock(5)
    assert eligible_executions(db, channel, limit_records=5) == [1]
    assert eligible_executions(db, channel) == [1, 2]
    rounds = []
    while eligible_executions(db, channel):
        s = pipeline.sync()
        rounds.append((s.execution_ids, s.fetch.tracked))
        assert len(rounds) < 10
    assert all(tracked <= 5 for _, tracked in rounds)
    assert sum(tracked for _, tracked in rounds) == 15
    assert count(db, db.tables.states, db.tables.states.c.FulfillmentState == "Delivered") == 15
    assert db.read_results(1)["Status:delivered"] == 12 and db.read_results(2)["Status:delivered"] == 3


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A sandbox whose messages take ten simulated minutes per status step."""
    with SandboxProcess(tmp_path_factory.mktemp("slow"), status_delay_ms=600_000, access_log=False) as sb:
        yield sb


def test_each_observed_state_is_stored_once(sqlite_db, slow_server, make_pipeline):
    db = sqlite_db
    sb = slow_server
    sb.reset()
    with make_client(sb) as client:
        channel = make_channel()
        pipeline = make_pipeline(db, sb, channel)
        send_execution(db, client, channel, 1, numbers(3))
        seen = []
        for _ in range(4):
            s = pipeline.sync()
            seen.append((s.fetch.listed, s.fetch.fetched))
            sb.advance_clock(600)
        assert seen[0] == (0, 3)  # queued: no date_sent, so not listed; fetched one by one
        assert seen[2][0] == 3  # sent: the listing returns them
    states = [(rid, state) for _, rid, state, _, _ in state_rows(db, 1)]
    for rid in (1, 2, 3):
        assert sorted(st for r, st in states if r == rid) == ["Delivered", "Queued", "Sending", "Sent"]
    assert inbound_results(db, 1) == {"Status:delivered": 3, "Expired": 0}
    assert count(db, db.tables.message_ids) == 0


def test_expired_closes_sids_still_queued_an_hour_after_their_validity(db, slow_server, make_pipeline):
    sb = slow_server
    sb.reset()
    with make_client(sb) as client:
        channel = make_channel(validity_period_s=60)
        pipeline = make_pipeline(db, sb, channel)
        send_execution(db, client, channel, 1, numbers(5))
        now = sandbox_now(sb)
        early = pipeline.sync(now=now + timedelta(seconds=120))
        assert early.fetch.fetched == 5 and early.fetch.expired == 0  # past validity, within the hour
        assert count(db, db.tables.message_ids) == 5
        late = pipeline.sync(now=now + timedelta(seconds=60 + 3600 + 60))
        assert late.fetch.expired == 5
        assert count(db, db.tables.message_ids) == 0
        results = inbound_results(db, 1)
        assert results == {"Status:queued": 5, "Expired": 5}
        assert db.read_results(1)["Sent"] == 5
        later = now + timedelta(seconds=60 + 3600 + 120)
        assert pipeline.sync(now=later).execution_ids == []


def test_a_message_left_sent_is_read_until_the_horizon_and_stays_sent(db, tmp_path, make_pipeline):
    """Carriers often send no receipt: `sent` may be final, so it is never reported Expired."""
    with SandboxProcess(tmp_path / "sent-final", status_delay_ms=1000, sent_final_rate=1,
                        access_log=False) as sb, make_client(sb) as client:
        channel = make_channel(validity_period_s=60, status_horizon_hours=72)
        pipeline = make_pipeline(db, sb, channel)
        send_execution(db, client, channel, 1, numbers(4))
        sb.advance_clock(5)
        first = pipeline.sync()
        assert first.fetch.expired == 0 and inbound_results(db, 1) == {"Status:sent": 4, "Expired": 0}
        sb.advance_clock(11 * 3600)  # well past the validity period: still read, not Expired
        kept = pipeline.sync()
        assert kept.execution_ids == [1] and kept.fetch.expired == 0 and kept.fetch.closed_sent == 0
        assert count(db, db.tables.message_ids) == 4
        sb.advance_clock(72 * 3600)  # the horizon: closed as Sent, no longer read
        closed = pipeline.sync()
        assert closed.fetch.expired == 0 and closed.fetch.closed_sent == 4
        assert count(db, db.tables.message_ids) == 0
        assert inbound_results(db, 1) == {"Status:sent": 4, "Expired": 0}
        assert {state for _, _, state, _, _ in state_rows(db, 1)} == {"Queued", "Sent"}
        assert pipeline.sync().execution_ids == []


def test_closing_state_rules():
    from twilio_pipeline.rules.states import closing_state

    hour, validity, horizon = 3600, 36000, 72 * 3600
    assert closing_state("sent", validity + 2 * hour, validity, horizon) is None
    assert closing_state("sent", horizon, validity, horizon) == "Sent"
    for held in ("accepted", "scheduled", "queued", "sending", None):
        assert closing_state(held, validity + hour - 1, validity, horizon) is None
        assert closing_state(held, validity + hour, validity, horizon) == "Expired"
    assert closing_state("partially_delivered", horizon, validity, horizon) == "Expired"
    assert closing_state("delivered", horizon * 2, validity, horizon) is None


def test_messaging_service_sync_lists_the_pool(sqlite_db, sb, client, make_pipeline):
    db = sqlite_db
    channel = make_channel("Pool", messaging_service_sid=SANDBOX_MESSAGING_SERVICE_SID)
    pipeline = make_pipeline(db, sb, channel)
    nums = numbers(20)
    send_execution(db, client, channel, 1, nums)
    sb.advance_clock(5)
    s = pipeline.sync()
    assert s.fetch.fetched == 0 and s.fetch.matched == 20
    assert inbound_results(db, 1) == {"Status:delivered": 20, "Expired": 0}


def test_api_calls_scale_with_pages_not_messages(sqlite_db, sb, client, make_pipeline):
    db = sqlite_db
    channel = make_channel()
    pipeline = make_pipeline(db, sb, channel)
    n = 2000
    send_execution(db, client, channel, 1, numbers(n - 500), workers=16)
    send_execution(db, client, channel, 2, numbers(500, 5000), first_contact_id=1, workers=16)
    sb.advance_clock(5)
    before = sb.stats()["requests_total"]
    s = pipeline.sync()
    calls = sb.stats()["requests_total"] - before
    assert calls == s.api_calls
    assert calls <= n / 1000 + 2 + 5, calls
    assert sum(v for k, v in db.read_results(1).items() if k.startswith("Status:")) == n - 500
    assert db.read_results(2)["Status:delivered"] == 500


def test_real_outbound_send_then_sync(db, lossy_server, make_pipeline):
    """The outbound job's rows (ledger, SIDs, first states, Sent) are what the sync jobs build on."""
    from twilio_pipeline.audience import create_execution

    sb = lossy_server
    sb.reset()
    channel = make_channel("E2E", keywords=["MORE"], connectivity_test=False)
    pipeline = make_pipeline(db, sb, channel)
    nums = numbers(25)
    create_execution(db, 7, "E2E", "Hi {{FirstName}}", [(i + 1, n, {"FirstName": "Ada"}) for i, n in enumerate(nums)])
    pipeline.send(7)
    sent = db.read_results(7)["Sent"]
    sb.advance_clock(5)
    sb.inbound(nums[0], SENDER, "STOP")
    sb.inbound(nums[1], SENDER, "MORE")
    first = pipeline.sync()
    assert first.execution_ids == [7]
    results = db.read_results(7)
    assert sum(v for k, v in results.items() if k.startswith("Status:")) == sent == 25
    assert (results["Reply:STOP"], results["Reply:MORE"]) == (1, 1)
    assert suppressed(db, channel) == {nums[0]}
    rows = state_rows(db, 7)
    assert pipeline.sync().execution_ids == []
    assert state_rows(db, 7) == rows
    assert_unique_states(db)


def test_a_short_code_channel_sync_warns_that_short_codes_get_no_states(sqlite_db, tmp_path, make_pipeline):
    """The guide's limitation 7: no delivery states for short codes (beta) - said, not left silent."""
    with SandboxProcess(tmp_path / "short-code", pool_short_codes="24680", status_delay_ms=50,
                        access_log=False) as sb, make_client(sb) as client:
        channel = make_channel("Short", from_number="24680")
        send_execution(sqlite_db, client, channel, 1, numbers(2))
        synced = make_pipeline(sqlite_db, sb, channel).sync()
    assert any("short code 24680" in w and "limitation 7" in w for w in synced.report), synced.report


def test_the_past_validity_check_counts_only_what_twilio_still_holds(sqlite_db, sb, client):
    """A `sent` SID tracked past its validity is expected (read until the horizon); a queued one is not."""
    from twilio_pipeline import quality
    from twilio_pipeline.db import utcnow

    send_execution(sqlite_db, client, make_channel(validity_period_s=60), 1, numbers(2))
    ids = sqlite_db.tables.message_ids
    with sqlite_db.begin() as conn:
        conn.execute(ids.update().values(SentAt=utcnow() - timedelta(hours=2), LastStatus="queued"))
        conn.execute(ids.update().where(ids.c.RPContactID == 1).values(LastStatus="sent"))
    assert quality.tracked_past_validity(sqlite_db, 1, 60) == 1


def test_what_the_cli_prints_of_a_sync_is_what_the_steps_logged(sqlite_db, sb, client, make_pipeline):
    """`twilio-pipeline sync` prints `sync_report`: each step's own sentences, never figures added up across
    steps (the suppression refresh lists messages, the keyword parse parses replies: different counts)."""
    from twilio_pipeline_tests.pipeline_harness import run_log

    channel = make_channel(keywords=["MORE"])
    pipeline = make_pipeline(sqlite_db, sb, channel)
    nums = numbers(3)
    send_execution(sqlite_db, client, channel, 1, nums)
    sb.advance_clock(5)
    sb.inbound(nums[0], SENDER, "STOP")
    sb.inbound(nums[1], SENDER, "more please")
    synced = pipeline.sync()
    logged = {line for run in synced.runs for line in run_log(pipeline.instance, run).lines}
    step_lines = [line.strip() for line in synced.report if line.startswith("  ")]
    assert any(line.startswith("suppression refresh for ") for line in step_lines), synced.report
    assert any(line.startswith("keyword parse for ") for line in step_lines), synced.report
    assert any(line.startswith("status fetch (") for line in step_lines), synced.report
    assert any(line.startswith("state load: ") for line in step_lines), synced.report
    assert step_lines and all(line in logged for line in step_lines), (step_lines, logged)
    # The figures of each step stay its own: 2 replies listed by the refresh, 2 parsed by the keyword parse.
    assert synced.refresh.new_inbound == 2 and synced.keywords.parsed == 2
    assert "keywords=" not in "\n".join(synced.report)  # no "k=v" sums of the two steps
    assert synced.report[-1].startswith("Execution 1 (Inbound Test): loaded by run ")


def test_one_sync_run_covers_executions_of_two_channels_and_leaves_an_unsent_one_between_alone(
        sqlite_db, sb, client, make_pipeline):
    """`twilio-pipeline sync` batches the execution syncs as the chain does (up to 10 per run, whatever their
    channel); an execution the run's range covers that has nothing to sync (ready, no recipients yet) is
    left as it was: not synced, not marked failed."""
    from twilio_pipeline.audience import create_execution
    from twilio_pipeline.outbound import read_execution

    alpha, beta = make_channel("Alpha"), make_channel("Beta")
    pipeline = make_pipeline(sqlite_db, sb, [alpha, beta])
    send_execution(sqlite_db, client, alpha, 1, numbers(3, 100))
    create_execution(sqlite_db, 2, "Alpha", "Not sent yet", [])
    send_execution(sqlite_db, client, beta, 3, numbers(3, 300), first_contact_id=10)
    pipeline.instance.add_dynamic_partitions("channel_executions", ["1", "2", "3"])
    sb.advance_clock(3600)

    outcome = pipeline.sync()

    execution_runs = outcome.runs[1:]
    assert len(execution_runs) == 1 and outcome.execution_ids == [1, 3]
    assert outcome.load.delivery_states == 6
    assert any(line.startswith("Execution 1 (Alpha): loaded by") for line in outcome.report)
    assert any(line.startswith("Execution 3 (Beta): loaded by") for line in outcome.report)
    untouched = read_execution(sqlite_db, 2)
    assert untouched.status == "ready" and not untouched.status_reason
    assert inbound_results(sqlite_db, 2) == {}


@pytest.mark.parametrize("account_env, problem", [
    ({}, "TWILIO_ELSEWHERE_ACCOUNT_SID is not set"),  # (the CLI refuses this one before any run: exit 2)
    ({"ACCOUNT_SID": "sandbox", "AUTH_TOKEN": "not-the-auth-token"}, "not synced"),
], ids=["account-unset", "credentials-rejected"])
def test_a_channel_that_cannot_be_read_is_skipped_and_the_others_still_sync(
        sqlite_db, sb, client, make_pipeline, monkeypatch, account_env, problem):
    """One channel whose account is unset (TWILIO_<NAME>_* missing) or answers 401 must not stop the other
    channels' STOPs (a legal duty): they are read and their executions synced; the channel is logged, named in
    `channels_not_synced` and fails the `every_channel_synced` check (red in the UI); the sync's exit code is 1."""
    for suffix in ("ACCOUNT_SID", "AUTH_TOKEN", "API_KEY_SID", "API_KEY_SECRET"):
        monkeypatch.delenv(f"TWILIO_ELSEWHERE_{suffix}", raising=False)
    for suffix, value in account_env.items():
        monkeypatch.setenv(f"TWILIO_ELSEWHERE_{suffix}", sb.account_sid if value == "sandbox" else value)
    house = make_channel("House")
    elsewhere = make_channel("Elsewhere", from_number="+15005550007", account="elsewhere")
    pipeline = make_pipeline(sqlite_db, sb, [elsewhere, house])
    nums = numbers(2)
    send_execution(sqlite_db, client, house, 1, nums)
    sb.inbound(nums[0], SENDER, "STOP")

    synced = pipeline.sync()

    channel_run = synced.runs[0]
    parse = channel_run.metadata("keyword_parse")
    assert parse["channels_not_synced"] == "Elsewhere" and parse["channels"] == 1
    check = next(e for e in channel_run.result.get_asset_check_evaluations()
                 if e.check_name == "every_channel_synced")
    assert not check.passed and "Elsewhere" in check.metadata["not_synced"].value
    assert any("channel 'Elsewhere' not synced" in line and problem in line for line in synced.report), synced.report
    assert synced.exit_code == 1
    assert suppressed(sqlite_db, house) == {nums[0]}
    assert synced.execution_ids == [1] and sqlite_db.read_results(1)["Reply:STOP"] == 1


def test_when_no_channel_can_be_read_the_channel_sync_fails(sqlite_db, sb, make_pipeline):
    """Rejected credentials on the only channel fail the step in one line (nothing was synced)."""
    pipeline = make_pipeline(sqlite_db, sb, make_channel("House"), auth_token="not-the-auth-token")
    synced = pipeline.sync(check=False)
    assert synced.runs[0].failure is not None and synced.runs[0].failure.step == "keyword_parse"
