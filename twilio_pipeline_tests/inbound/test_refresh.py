"""Suppression refresh against the sandbox, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from twilio_pipeline.inbound import record_refusals_as_stop, refresh_inbound
from twilio_pipeline.inbound import refresh as refresh_module
from twilio_pipeline.sandbox import SANDBOX_MESSAGING_SERVICE_SID, SANDBOX_POOL_NUMBERS
from twilio_pipeline_tests.inbound.helpers import SENDER, count, make_channel, numbers, sandbox_now, suppressed


def iso(dt) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_first_refresh_reads_back_the_retrieval_period(db, sb, client, log):
    now = sandbox_now(sb)
    a, b, c, d = numbers(4)
    sb.inbound_bulk([
        {"From": a, "To": SENDER, "Body": "STOP", "DateSent": iso(now - timedelta(days=10))},
        {"From": b, "To": SENDER, "Body": "quit", "DateSent": iso(now - timedelta(days=100))},
        {"From": c, "To": SENDER, "Body": "STOP", "DateSent": iso(now - timedelta(days=400))},  # too old
        {"From": d, "To": "+15005550099", "Body": "STOP", "DateSent": iso(now - timedelta(days=1))},  # other sender
    ])
    s = refresh_inbound(db, client, make_channel(), log=log, now=now)
    assert (s.listed, s.new_inbound, s.opt_outs, s.opt_ins) == (2, 2, 2, 0)
    assert s.api_calls == 1
    assert suppressed(db, make_channel()) == {a, b}
    ib = db.tables.inbound
    with db.connect() as conn:
        keywords = dict(conn.execute(sa.select(ib.c.FromNumber, ib.c.Keyword)).all())
    assert keywords == {a: "STOP", b: "QUIT"}
    # A shorter retrieval period on a fresh sender reads back less.
    other = make_channel("Short", from_number="+15005550010", retrieval_period_days=30)
    sb.inbound_bulk([{"From": a, "To": "+15005550010", "Body": "stop", "DateSent": iso(now - timedelta(days=20))},
                     {"From": b, "To": "+15005550010", "Body": "stop", "DateSent": iso(now - timedelta(days=40))}])
    assert refresh_inbound(db, client, other, log=log, now=now).listed == 1


def test_incremental_refresh_lists_only_newer(db, sb, client, log):
    now = sandbox_now(sb)
    channel = make_channel()
    old = [{"From": n, "To": SENDER, "Body": "hello", "DateSent": iso(now - timedelta(days=3, hours=i))}
           for i, n in enumerate(numbers(30))]
    sb.inbound_bulk(old)
    first = refresh_inbound(db, client, channel, log=log, now=now)
    assert first.new_inbound == 30 and first.free_text == 30
    wm = first.watermark
    assert wm is not None and abs((wm - (now - timedelta(days=3))).total_seconds()) < 2
    sb.advance_clock(60)
    sb.inbound(numbers(1, 100)[0], SENDER, "STOP")
    sb.inbound(numbers(1, 101)[0], SENDER, "Who is this?")
    second = refresh_inbound(db, client, channel, log=log, now=sandbox_now(sb))
    # Only the newest old message falls in the overlap before the watermark; the merge ignores it.
    assert (second.listed, second.new_inbound, second.opt_outs) == (3, 2, 1)
    assert second.since == wm - refresh_module.LISTING_OVERLAP
    assert second.watermark > wm
    assert count(db, db.tables.inbound) == 32


def test_stop_then_start_lifts_the_suppression(db, sb, client, log):
    channel = make_channel()
    a, b = numbers(2)
    sb.inbound(a, SENDER, "  Stop ")
    sb.inbound(b, SENDER, "STOP PLEASE")  # several words: free text, no opt-out
    refresh_inbound(db, client, channel, log=log)
    assert suppressed(db, channel) == {a}
    sb.advance_clock(5)
    sb.inbound(a, SENDER, "start")
    s = refresh_inbound(db, client, channel, log=log, now=sandbox_now(sb))
    assert s.opt_ins == 1
    assert suppressed(db, channel) == set()
    sb.advance_clock(5)
    sb.inbound(a, SENDER, "UNSUBSCRIBE")
    refresh_inbound(db, client, channel, log=log, now=sandbox_now(sb))
    assert suppressed(db, channel) == {a}
    # Another sender is not affected.
    assert suppressed(db, make_channel("Other", from_number="+15005550010")) == set()


def test_rerun_adds_nothing(db, sb, client, log):
    channel = make_channel()
    for n in numbers(5):
        sb.inbound(n, SENDER, "STOP")
    sb.inbound(numbers(1, 50)[0], SENDER, "HELP")
    first = refresh_inbound(db, client, channel, log=log)
    assert (first.new_inbound, first.opt_outs, first.helps) == (6, 5, 1)
    rows = count(db, db.tables.suppression)
    again = refresh_inbound(db, client, channel, log=log, overlap=timedelta(days=3650))
    assert again.listed == 6
    assert (again.new_inbound, again.opt_outs, again.opt_ins, again.helps) == (0, 0, 0, 0)
    assert count(db, db.tables.suppression) == rows == 6
    assert count(db, db.tables.inbound) == 6


def test_watermark_not_advanced_when_the_load_fails(db, sb, client, log, monkeypatch):
    channel = make_channel()
    sb.inbound(numbers(1)[0], SENDER, "STOP")

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(refresh_module, "merge_suppression_from", broken)
    with pytest.raises(RuntimeError):
        refresh_inbound(db, client, channel, log=log)
    with db.connect() as conn:
        assert db.get_watermark(conn, channel.sender) is None
    assert count(db, db.tables.inbound) == 0
    assert db.staging_tables() == []
    monkeypatch.undo()
    s = refresh_inbound(db, client, channel, log=log)
    assert (s.new_inbound, s.opt_outs) == (1, 1)
    assert s.watermark is not None


def test_messaging_service_lists_each_pool_number(db, sb, client, log):
    channel = make_channel("Pool", messaging_service_sid=SANDBOX_MESSAGING_SERVICE_SID)
    a, b, c = numbers(3)
    sb.inbound(a, SANDBOX_POOL_NUMBERS[0], "STOP")
    sb.inbound(b, SANDBOX_POOL_NUMBERS[2], "cancel")
    sb.inbound(c, SENDER, "STOP")  # not the service
    s = refresh_inbound(db, client, channel, log=log)
    assert s.pool_numbers == len(SANDBOX_POOL_NUMBERS)
    assert s.api_calls == 2 + len(SANDBOX_POOL_NUMBERS)  # PhoneNumbers, ShortCodes (none here), one list each
    assert (s.new_inbound, s.opt_outs) == (2, 2)
    assert suppressed(db, channel) == {a, b}
    assert suppressed(db, make_channel()) == set()  # the long code has not been refreshed


def test_refusals_recorded_as_stop(db, log):
    channel = make_channel()
    from twilio_pipeline.db import utcnow

    at = utcnow().replace(microsecond=0)
    rows = [{"ToNumber": n, "ActivityDate": at} for n in numbers(3)] + [{"ToNumber": None, "ActivityDate": at}]
    with db.begin() as conn:
        assert record_refusals_as_stop(db, conn, channel, rows) == 3
    with db.begin() as conn:
        assert record_refusals_as_stop(db, conn, channel, rows) == 0
    assert suppressed(db, channel) == set(numbers(3))


class PeakRss:
    """Samples this process's resident set size in a thread: the growth a call causes."""

    def __init__(self) -> None:
        import threading

        self.peak = self.base = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 1e6


@pytest.mark.slow
def test_100k_backdated_replies_stream_in_bounded_memory(sqlite_db, sb, client, log):
    now = sandbox_now(sb)
    n = 100_000
    for start in range(0, n, 25_000):
        sb.inbound_bulk([
            {"From": f"+1650{i:07d}", "To": SENDER, "Body": "STOP" if i % 10 == 0 else "hi there",
             "DateSent": iso(now - timedelta(days=300, seconds=i))}
            for i in range(start, start + 25_000)
        ])
    with PeakRss() as rss:
        s = refresh_inbound(sqlite_db, client, make_channel(), log=log, now=now)
    assert (s.listed, s.new_inbound, s.opt_outs) == (n, n, n // 10)
    assert s.api_calls == n // 1000
    # 100,000 messages held at once would take well over 100 MB; pages of 1,000 take a few.
    print(f"resident set growth {rss.growth_mb:.1f} MB")
    assert rss.growth_mb < 40, f"resident set grew by {rss.growth_mb:.0f} MB"
