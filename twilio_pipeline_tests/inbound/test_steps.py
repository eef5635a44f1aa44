"""Step-level behaviour that the sandbox cannot produce on demand, with a scripted Twilio client."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta

import sqlalchemy as sa

from twilio_pipeline.dates import format_rfc3339, twilio_time
from twilio_pipeline.inbound import fetch_statuses, load_states, sync_channel
from twilio_pipeline.inbound.bulk_export import plan_days
from twilio_pipeline.logs import ListLog
from twilio_pipeline_tests.inbound.helpers import (
    SENDER,
    count,
    make_channel,
    numbers,
    sandbox_now,
    send_execution,
    state_rows,
    suppressed,
)

T0 = datetime(2026, 3, 2, 12, 0, 0)


def rfc2822(dt: datetime) -> str:
    return dt.strftime("%a, %d %b %Y %H:%M:%S +0000")


class ScriptedClient:
    """The parts of TwilioClient the status fetch uses, answering from a dict of messages."""

    def __init__(self, messages: dict[str, dict], *, export_job: dict | None = None):
        self.messages = messages
        self.request_count = 0
        self.export_job = export_job
        self.calls: list[str] = []

    def iter_message_pages(self, **filters):
        self.request_count += 1
        self.calls.append("list")
        yield [m for m in self.messages.values() if m.get("date_sent")]

    def fetch_message(self, sid):
        self.request_count += 1
        self.calls.append("get")
        return self.messages.get(sid)

    def list_export_days(self):
        self.request_count += 1
        self.calls.append("days")
        return []

    def create_export_job(self, **kw):
        self.request_count += 1
        self.calls.append("job")
        return self.export_job

    def fetch_export_job(self, sid):
        self.request_count += 1
        return self.export_job


def message(sid: str, to: str, status: str, error_code=None, at: datetime = T0) -> dict:
    return {"sid": sid, "to": to, "from": SENDER, "direction": "outbound-api", "status": status,
            "error_code": error_code, "date_sent": rfc2822(at), "date_updated": rfc2822(at + timedelta(seconds=5))}


def track(db, rows: list[tuple[str, int, str, str]], eid: int = 1) -> None:
    """Tracked SIDs (sid, contact, to, last status) of an execution, with their ledger rows."""
    from twilio_pipeline.audience import create_execution

    create_execution(db, eid, make_channel().name, "hi", [(rid, to, None) for _, rid, to, _ in rows], status="sent")
    t = db.tables
    with db.begin() as conn:
        db.bulk_insert(conn, t.message_ids, [
            {"MessageID": sid, "RPContactID": rid, "ChannelExecutionID": eid, "Sender": SENDER, "ToNumber": to,
             "SentAt": T0, "LastStatus": last} for sid, rid, to, last in rows])
        db.bulk_insert(conn, t.ledger, [
            {"ChannelExecutionID": eid, "RPContactID": rid, "IsSeed": False, "ToNumber": to, "Outcome": "sent",
             "MessageSID": sid, "StatusAt": T0, "AttemptedAt": T0} for sid, rid, to, _ in rows])


def test_failed_21610_becomes_a_stop_and_statuses_never_move_back(db):
    a, b, c = numbers(3)
    track(db, [("SM1", 1, a, "queued"), ("SM2", 2, b, "delivered"), ("SM3", 3, c, "queued")])
    client = ScriptedClient({
        "SM1": message("SM1", a, "failed", 21610),
        "SM2": message("SM2", b, "sent"),  # a late, lower status: dropped
        "SM3": message("SM3", c, "sent"),
    })
    channel = make_channel()
    s = fetch_statuses(db, client, channel, [1], log=ListLog(), now=T0 + timedelta(minutes=1))
    assert (s.matched, s.observed, s.terminal, s.opt_outs_21610, s.fetched) == (3, 2, 1, 1, 0)
    load_states(db, log=ListLog(), execution_ids=[1])
    assert [r[1:4] for r in state_rows(db, 1)] == [(1, "Failed", "21610"), (3, "Sent", None)]
    assert suppressed(db, channel) == {a}
    ids = db.tables.message_ids
    with db.connect() as conn:
        assert dict(conn.execute(sa.select(ids.c.MessageID, ids.c.LastStatus)).all()) == {
            "SM2": "delivered", "SM3": "sent"}


def test_unlisted_sids_are_fetched_one_by_one(db):
    a, b = numbers(2)
    track(db, [("SM1", 1, a, "queued"), ("SM2", 2, b, "queued")])
    queued = message("SM2", b, "queued")
    queued["date_sent"] = None
    client = ScriptedClient({"SM1": message("SM1", a, "delivered"), "SM2": queued})
    s = fetch_statuses(db, client, make_channel(), [1], log=ListLog(), now=T0 + timedelta(minutes=1))
    assert client.calls == ["list", "get"]
    assert (s.listed, s.fetched, s.terminal) == (1, 1, 1)


def test_failed_export_job_falls_back_to_the_listing(db):
    a = numbers(1)[0]
    track(db, [("SM1", 1, a, "queued")])
    job = {"job_sid": "JS1", "details": [{"status": "Failed", "count": 1, "days": [T0.date().isoformat()]}]}
    client = ScriptedClient({"SM1": message("SM1", a, "delivered")}, export_job=job)
    log = ListLog()
    channel = make_channel(status_sync="bulk_export")
    s = fetch_statuses(db, client, channel, [1], log=log, now=T0 + timedelta(days=5))
    assert client.calls == ["days", "job", "list"]
    assert s.matched == 1 and s.exported == 0
    assert any("Failed" in line for line in log.warnings)


def test_plan_days_exports_whole_days_two_days_back():
    now = datetime(2026, 3, 10, 9, 30)
    plan = plan_days(datetime(2026, 3, 5, 23, 0), None, now)
    assert plan.days == [date(2026, 3, d) for d in (5, 6, 7, 8)]
    assert plan.listing_from == datetime(2026, 3, 9)
    assert plan_days(datetime(2026, 3, 9, 1, 0), None, now).days == []
    closed = plan_days(datetime(2026, 3, 1), datetime(2026, 3, 3, 5), now)
    assert closed.days == [date(2026, 3, d) for d in (1, 2, 3)] and closed.listing_from is None


def test_twilio_time_reads_both_formats():
    assert twilio_time("Fri, 09 Jul 2021 15:58:57 +0000") == datetime(2021, 7, 9, 15, 58, 57)
    assert twilio_time("2021-07-09T15:58:57Z") == datetime(2021, 7, 9, 15, 58, 57)
    assert twilio_time("Fri, 09 Jul 2021 17:58:57 +0200") == datetime(2021, 7, 9, 15, 58, 57)
    assert twilio_time(None) is None and twilio_time("garbage") is None
    assert format_rfc3339(twilio_time("Fri, 09 Jul 2021 15:58:57 +0000")) == "2021-07-09T15:58:57Z"


def test_overlapping_syncs_store_each_state_once(db, sb, client):
    channel = make_channel()
    nums = numbers(30)
    send_execution(db, client, channel, 1, nums)
    sb.advance_clock(5)
    for n in nums[:5]:
        sb.inbound(n, SENDER, "STOP")
    now = sandbox_now(sb)
    errors: list[BaseException] = []

    def run():
        try:
            sync_channel(db, client, channel, log=ListLog(), now=now)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rows = state_rows(db, 1)
    assert len(rows) == len(set((r[1], r[2], r[3]) for r in rows)) == 30 * 2 + 5
    assert count(db, db.tables.inbound) == 5 and count(db, db.tables.suppression) == 5
    assert db.read_results(1)["Status:delivered"] == 30


def test_a_batch_of_a_backfill_size_is_loaded_once_and_its_sids_retired(db):
    """Past BIG_BATCH pending rows the load refreshes the planner's statistics inside its transaction
    (PostgreSQL); the outcome is the same: every state once, every terminal SID retired, nothing pending."""
    from twilio_pipeline.db import utcnow
    from twilio_pipeline.inbound.state_load import BIG_BATCH

    n = BIG_BATCH + 500
    base, now = datetime(2026, 1, 1), utcnow()
    sid = [f"SM{i:032x}" for i in range(n)]
    t = db.tables
    with db.begin() as conn:
        db.bulk_insert(conn, t.message_ids, [{"MessageID": sid[i], "RPContactID": i + 1, "ChannelExecutionID": 7}
                                             for i in range(n)])
        observed = [{"ChannelExecutionID": 7, "RPContactID": i + 1, "FulfillmentState": "Delivered", "EventName": None,
                     "Timestamp": base + timedelta(seconds=i), "MessageID": sid[i], "Terminal": True,
                     "ObservedAt": now} for i in range(n)]
        db.bulk_insert(conn, t.pending_states, observed + observed[:1000])  # 1,000 observed twice
    summary = load_states(db, log=ListLog())
    assert (summary.pending, summary.delivery_states, summary.retired) == (n + 1000, n, n)
    with db.connect() as conn:
        counts = [conn.execute(sa.select(sa.func.count()).select_from(x)).scalar()
                  for x in (t.states, t.message_ids, t.pending_states)]
    assert counts == [n, 0, 0]
    assert db.read_results(7)["Status:delivered"] == n
