"""Exactly once when the database stalls (issue 13): a send whose lease or ledger table is locked by
another connection while a second send of the same execution starts texts nobody twice and loses no SID;
a run that lost its lease is fenced out of the ledger; an upstream cancel stops a running send.

Sends run in-process against the real sandbox process with a short lease TTL (2 s) so each stall lasts
seconds; a second Database object stands in for the second process. Stalls are real locks held by another
connection: PostgreSQL `LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`, MariaDB `LOCK TABLES ... WRITE`, SQLite a
`BEGIN IMMEDIATE` writer.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.logs import ListLog
from twilio_pipeline.outbound import ExecutionBusy, LeaseLost, commit_execution, plan_execution, send_execution
from twilio_pipeline.outbound.execution import execution_channel_sender, read_execution, set_status
from twilio_pipeline.outbound.lease import execution_lease
from twilio_pipeline.outbound.ledger import Claims, Item
from twilio_pipeline.outbound.outcomes import OutcomeWriter
from twilio_pipeline_tests.outbound.conftest import (
    assert_exactly_once,
    channels,
    client_for,
    ledger_rows,
    message_ids,
    outbound_created,
    run_id,
)
from twilio_pipeline_tests.polling import wait_until
from twilio_pipeline_tests.stalls import stalled

TTL_S = 2.0
EXECUTION = 7


def _planned(db, n: int, **overrides):
    channel = channels(**overrides).channels[0]
    contacts = [(i, f"+1415{i:07d}", {"FirstName": f"P{i}"}) for i in range(1, n + 1)]
    create_execution(db, EXECUTION, channel.name, "Hi {{FirstName}}", contacts)
    plan_execution(db, channel, EXECUTION, run_id=run_id(), log=ListLog())
    return channel


class _Run(threading.Thread):
    """One `send` of the execution, on its own Database (its own connections, as another process has)."""

    def __init__(self, db: Database, client, channel, **options):
        super().__init__(daemon=True)
        self.db, self.client, self.channel, self.options = db, client, channel, options
        self.run_id = run_id()
        self.log = ListLog()
        self.summary = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.summary = send_execution(self.db, self.client, self.channel, EXECUTION, run_id=self.run_id,
                                          log=self.log, lease_ttl_s=TTL_S, settle_s=0.2, **self.options)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    def finish(self, timeout_s: float = 60) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), f"run {self.run_id} did not finish within {timeout_s} s"
        if self.error is not None and not isinstance(self.error, (ExecutionBusy, LeaseLost)):
            raise self.error


def _second_send_during_a_stall(db: Database, make_sandbox, table: str, lease_stalls: bool) -> None:
    """Send A is under way (2 in flight, 100 ms per request) when `table` stalls for 2.5 TTLs; send B of
    the same execution starts 1.5 TTLs into the stall; then a last send finishes what is left.

    When the stall reaches the lease (`lease_stalls`), A makes no request from half a TTL after its last
    renewal on (checked from 0.75 TTL into the stall); otherwise A keeps its lease and B is refused.
    Either way every recipient is texted exactly once and every SID Twilio created is in the ledger and
    in Twilio_MessageIDs."""
    sb = make_sandbox(latency_ms=100)
    channel = _planned(db, 60, max_concurrency=2)
    client = client_for(sb, channel)
    count = lambda: sum(outbound_created(sb).values())  # noqa: E731
    url = db.url.render_as_string(hide_password=False)
    db_a, db_b = Database(url, prefix=db.prefix), Database(url, prefix=db.prefix)
    try:
        a = _Run(db_a, client, channel, claim_batch=20)
        a.start()
        try:
            wait_until(lambda: count() >= 6, 30, "the first send to be under way", alive=a.is_alive)
        except AssertionError as exc:  # say why: send A's error or where its log stopped
            raise AssertionError(f"{exc}; send A: error {a.error!r}, {count()} created, last log lines "
                                 f"{a.log.lines[-5:]}") from None
        b = _Run(db_b, client, channel, claim_batch=20)
        with stalled(db, getattr(db.tables, table)):
            time.sleep(TTL_S * 0.75)
            requested_early = count()
            time.sleep(TTL_S * 0.75)
            b.start()
            time.sleep(TTL_S)
            requested_late = count()
        a.finish()
        b.finish()
        if lease_stalls:
            assert requested_late == requested_early, (
                f"{requested_late - requested_early} request(s) made while the lease could not be renewed")
        else:
            assert isinstance(b.error, ExecutionBusy) and a.run_id in str(b.error), b.error
        last = _Run(db, client, channel)
        last.run()
        assert last.error is None, last.error
    finally:
        db_a.dispose()
        db_b.dispose()
    created = outbound_created(sb)
    twice = {to: n for to, n in created.items() if n != 1}
    assert not twice, f"texted more than once: {twice}"
    assert len(created) == 60
    sids = {m["sid"] for m in sb.messages(direction="outbound-api")}
    rows = ledger_rows(db, EXECUTION)
    assert sids == {r["MessageSID"] for r in rows if r["Outcome"] == "sent"}, "a SID is missing from the ledger"
    assert sids == {m["MessageID"] for m in message_ids(db, EXECUTION)}, "a SID is missing from Twilio_MessageIDs"
    assert_exactly_once(db, sb, EXECUTION)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_stalled_leases_table_while_a_second_send_starts_texts_nobody_twice(db, make_sandbox):
    _second_send_during_a_stall(db, make_sandbox, "leases", lease_stalls=True)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_stalled_ledger_while_a_second_send_starts_texts_nobody_twice(db, make_sandbox):
    # On SQLite a writer holds the whole database, the leases table with the ledger.
    _second_send_during_a_stall(db, make_sandbox, "ledger", lease_stalls=db.dialect == "sqlite")


def test_a_run_that_lost_its_lease_claims_nothing_and_keeps_every_sid_it_was_given(db, make_sandbox):
    """Run A's lease is taken over by run B on another host (A's row expired there): A can neither claim
    nor release nor orphan rows any more, while the SID of a request A had under way is still recorded -
    on the row B marked orphaned, and in Twilio_MessageIDs even when B already resolved that row."""
    channel = _planned(db, 10)
    client = client_for(make_sandbox(), channel)

    def create(item: Item):
        return client.create_message({**execution_channel_sender(channel), "To": item.to, "Body": item.body})

    run_a = run_id()
    with execution_lease(db, EXECUTION, run_a, ttl_s=60) as lease:
        claims_a = Claims(db, EXECUTION, run_a, lease=lease)
        items = claims_a.next_planned(4)
        assert [i.rpcontactid for i in items] == [1, 2, 3, 4]
        leases = db.tables.leases
        with db.begin() as conn:  # A's heartbeat stopped reaching the database long ago, on another host
            conn.execute(leases.update().values(Host="another-host", ExpiresAt=utcnow() - timedelta(hours=1)))
        token_b, holder = db.take_lease(lease.key, "run-B", 60)
        assert holder is None and token_b == lease.token + 1
        claims_b = Claims(db, EXECUTION, "run-B", lease=_Token(lease.key, token_b))
        assert claims_b.orphans_to_ambiguous() == 4  # B: A's claims are in doubt

        with pytest.raises(LeaseLost):
            claims_a.next_planned(4)
        with pytest.raises(LeaseLost):
            claims_a.orphans_to_ambiguous()
        assert claims_a.release(items) == 0
        outcomes = {r["RPContactID"]: r["Outcome"] for r in ledger_rows(db, EXECUTION)}
        assert [outcomes[i] for i in range(1, 11)] == ["ambiguous"] * 4 + ["planned"] * 6

        # B resolves row 2 with its own message; then A's answers for rows 1 and 2 arrive.
        b_items = claims_b.from_ambiguous([2])
        b_answer = create(b_items[0])
        with db.staging_table("send", OutcomeWriter.staging_columns()) as stg_b:
            writer_b = OutcomeWriter(db, channel, EXECUTION, "run-B", stg_b)
            writer_b.result(b_items[0], b_answer)
            writer_b.close()
        a_answers = [create(items[0]), create(items[1])]
        assert all(r.accepted for r in [b_answer, *a_answers])
        with db.staging_table("send", OutcomeWriter.staging_columns()) as stg_a:
            writer_a = OutcomeWriter(db, channel, EXECUTION, run_a, stg_a)
            for item, answer in zip(items[:2], a_answers, strict=True):
                writer_a.result(item, answer)
            writer_a.close()
    sid_a1, sid_a2, sid_b2 = a_answers[0].message["sid"], a_answers[1].message["sid"], b_answer.message["sid"]
    rows = {r["RPContactID"]: r for r in ledger_rows(db, EXECUTION)}
    assert (rows[1]["Outcome"], rows[1]["MessageSID"]) == ("sent", sid_a1)
    assert (rows[2]["Outcome"], rows[2]["MessageSID"]) == ("sent", sid_b2)
    assert writer_a.stats.unrecorded == 1
    tracked = {m["MessageID"]: m["RPContactID"] for m in message_ids(db, EXECUTION)}
    assert tracked == {sid_a1: 1, sid_a2: 2, sid_b2: 2}


class _Token:
    """Run B's side of the lease (key and token) as Claims reads it."""

    def __init__(self, key: str, token: int):
        self.key, self.token = key, token


@pytest.mark.timeout(120)
def test_cancel_stops_a_running_send_within_30_s_and_status_stays_cancelled(db, make_sandbox):
    sb = make_sandbox(latency_ms=200)
    channel = _planned(db, 200, max_concurrency=2)
    client = client_for(sb, channel)
    send = _Run(db, client, channel, claim_batch=20)
    send.start()
    wait_until(lambda: sum(outbound_created(sb).values()) >= 6, 30, "the send to be under way")
    set_status(db, EXECUTION, "cancelled")
    cancelled_at = time.monotonic()
    send.finish(60)
    stopped_after = time.monotonic() - cancelled_at
    assert send.error is None and send.summary.cancelled, (send.error, send.summary)
    assert stopped_after < 30, stopped_after
    requested = sum(outbound_created(sb).values())
    time.sleep(0.5)
    assert sum(outbound_created(sb).values()) == requested, "a request after the send stopped"
    assert requested < 200
    rows = ledger_rows(db, EXECUTION)
    outcomes = [r["Outcome"] for r in rows]
    assert outcomes.count("sent") == requested
    assert outcomes.count("planned") == 200 - requested, "what was not requested stays planned (Pending)"
    # The rest of the pipeline does not overwrite the upstream's cancel with `sent` / `failed`.
    assert commit_execution(db, channel, EXECUTION, run_id=run_id(), log=ListLog()).status == "cancelled"
    assert read_execution(db, EXECUTION).status == "cancelled"


@pytest.mark.timeout(120)
def test_cancel_also_stops_a_request_that_twilio_keeps_throttling(db, make_sandbox):
    """The lease gates every attempt, retries included: a send whose requests Twilio answers 429 stops at
    the cancel instead of retrying until the channel's 60 s throttle budget is spent."""
    sb = make_sandbox(fault_429_rate=1.0)
    channel = _planned(db, 20, max_concurrency=2)
    send = _Run(db, client_for(sb, channel), channel)
    started = time.monotonic()
    send.start()
    wait_until(lambda: sb.stats()["responses_by_status"].get("429", 0) >= 4, 30, "throttled requests")
    set_status(db, EXECUTION, "cancelled")
    send.finish(90)
    assert send.error is None and send.summary.cancelled, (send.error, send.summary)
    assert time.monotonic() - started < 15, "the throttled request was retried after the cancel"
    assert [r["Outcome"] for r in ledger_rows(db, EXECUTION)] == ["planned"] * 20
    assert sum(outbound_created(sb).values()) == 0
