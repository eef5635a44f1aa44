"""The message lifecycle on the simulated clock, outcomes by seed, validity, scheduling,
STOP/START blocks and simulated replies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from twilio_pipeline.sandbox.credentials import SANDBOX_MESSAGING_SERVICE_SID, SANDBOX_POOL_NUMBERS

from .conftest import SENDER, TwilioHTTP, rfc2822_ts
from .test_messages import assert_error

UNDELIVERED = {30003, 30005, 30006, 30007, 30008}
FAILED = {30007, 30008}


def test_lifecycle_without_a_service(stepped: TwilioHTTP):
    sid = stepped.send("+15554000001")["sid"]
    seen = []
    for _ in range(4):
        m = stepped.fetch(sid)
        seen.append((m["status"], m["date_sent"] is not None, m["price"] is not None))
        stepped.sandbox.advance_clock(1.0)
    assert seen == [("queued", False, False), ("sending", False, False), ("sent", True, True), ("delivered", True, True)]
    m = stepped.fetch(sid)
    assert m["error_code"] is None
    assert rfc2822_ts(m["date_updated"]) >= rfc2822_ts(m["date_sent"]) >= rfc2822_ts(m["date_created"])


def test_lifecycle_through_the_service(stepped: TwilioHTTP):
    sid = stepped.send("+15554000002", frm=None, MessagingServiceSid=SANDBOX_MESSAGING_SERVICE_SID)["sid"]
    seen = []
    for _ in range(5):
        m = stepped.fetch(sid)
        seen.append((m["status"], m["from"] in SANDBOX_POOL_NUMBERS, m["num_segments"]))
        stepped.sandbox.advance_clock(1.0)
    assert seen == [("accepted", False, "0"), ("queued", True, "1"), ("sending", True, "1"),
                    ("sent", True, "1"), ("delivered", True, "1")]


def test_outcomes_follow_the_rates_and_the_seed(make_sandbox):
    sandbox = make_sandbox("seed7", status_delay_ms=0, failed_rate=0.3, undelivered_rate=0.3, seed=7)
    http = TwilioHTTP(sandbox)
    recipients = [f"+15554100{i:03d}" for i in range(60)]

    def outcomes() -> list[tuple[str, int | None]]:
        sids = [http.send(to)["sid"] for to in recipients]
        return [(m["status"], m["error_code"]) for m in map(http.fetch, sids)]

    first = outcomes()
    statuses = [s for s, _ in first]
    assert {"delivered", "failed", "undelivered"} <= set(statuses)
    for status, code in first:
        assert (status, code is None) in {("delivered", True), ("failed", False), ("undelivered", False)}
        if status == "failed":
            assert code in FAILED
        if status == "undelivered":
            assert code in UNDELIVERED
    sandbox.reset()
    assert outcomes() == first  # same seed, same sends: same outcomes

    other = make_sandbox("seed8", status_delay_ms=0, failed_rate=0.3, undelivered_rate=0.3, seed=8)
    http = TwilioHTTP(other)
    assert outcomes() != first


def test_undelivered_and_failed_steps(make_sandbox):
    undelivered = TwilioHTTP(make_sandbox("u", status_delay_ms=1000, undelivered_rate=1.0))
    sid = undelivered.send("+15554200001")["sid"]
    undelivered.sandbox.advance_clock(2.5)
    assert undelivered.fetch(sid)["status"] == "sent"
    undelivered.sandbox.advance_clock(1.0)
    m = undelivered.fetch(sid)
    assert m["status"] == "undelivered" and m["error_code"] in UNDELIVERED and m["error_message"]
    assert m["date_sent"] is not None

    failed = TwilioHTTP(make_sandbox("f", status_delay_ms=1000, failed_rate=1.0))
    sid = failed.send("+15554200002")["sid"]
    failed.sandbox.advance_clock(1.5)
    assert failed.fetch(sid)["status"] == "sending"
    failed.sandbox.advance_clock(1.0)
    m = failed.fetch(sid)
    assert m["status"] == "failed" and m["error_code"] in FAILED and m["price"] is None


def test_validity_period_expires_a_waiting_message(stepped: TwilioHTTP):
    # through the service a message waits two steps (accepted, queued) before sending
    sid = stepped.send("+15554300001", frm=None, MessagingServiceSid=SANDBOX_MESSAGING_SERVICE_SID,
                       ValidityPeriod="1")["sid"]
    assert stepped.fetch(sid)["status"] == "accepted"
    stepped.sandbox.advance_clock(1.5)
    m = stepped.fetch(sid)
    assert (m["status"], m["error_code"]) == ("failed", 30001)
    # long enough: delivered as usual
    ok = stepped.send("+15554300002", ValidityPeriod="60")["sid"]
    stepped.sandbox.advance_clock(5)
    assert stepped.fetch(ok)["status"] == "delivered"


def test_scheduled_messages(stepped: TwilioHTTP):
    now = datetime.fromtimestamp(stepped.sandbox.clock()["now_epoch"], UTC)
    send_at = (now + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    service = {"MessagingServiceSid": SANDBOX_MESSAGING_SERVICE_SID}
    created = stepped.send("+15554400001", frm=None, ScheduleType="fixed", SendAt=send_at, **service)
    assert created["status"] == "scheduled"
    stepped.sandbox.advance_clock(598)
    assert stepped.fetch(created["sid"])["status"] == "scheduled"
    stepped.sandbox.advance_clock(3)
    assert stepped.fetch(created["sid"])["status"] in ("queued", "sending", "sent")
    stepped.sandbox.advance_clock(5)
    assert stepped.fetch(created["sid"])["status"] == "delivered"

    too_soon = (now + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert_error(stepped.create(To="+15554400002", Body="x", ScheduleType="fixed", SendAt=too_soon, **service), 400, 35114)
    assert_error(stepped.create(To="+15554400002", From=SENDER, Body="x", ScheduleType="fixed", SendAt=send_at), 400, 35118)
    assert_error(stepped.create(To="+15554400002", Body="x", ScheduleType="fixed", **service), 400, 35111)


def test_stop_blocks_the_sender_until_start(api: TwilioHTTP):
    recipient = "+15554500001"
    api.send(recipient)
    api.sandbox.inbound(recipient, SENDER, " Stop\n")  # the whole body, trimmed, any case
    assert_error(api.create(To=recipient, From=SENDER, Body="x"), 400, 21610)
    # only for that sender
    api.send(recipient, frm=SANDBOX_POOL_NUMBERS[0])
    # a multi-word message is not a keyword, nor one with punctuation (Twilio documents no stripping)
    for text in ("STOP please", "please cancel", "stop."):
        api.sandbox.inbound("+15554500002", SENDER, text)
        api.send("+15554500002")
    api.sandbox.inbound(recipient, SENDER, "start")
    api.send(recipient)
    for word in ("unsubscribe", "CANCEL", "end", "quit", "Revoke", "OPTOUT", "stopall"):
        api.sandbox.inbound(recipient, SENDER, word)
        assert_error(api.create(To=recipient, From=SENDER, Body="x"), 400, 21610)
        api.sandbox.inbound(recipient, SENDER, "YES" if word != "end" else "unstop")
        api.send(recipient)


def test_stop_to_a_pool_number_blocks_the_whole_service(api: TwilioHTTP):
    recipient = "+15554600001"
    api.sandbox.inbound(recipient, SANDBOX_POOL_NUMBERS[2], "STOP")
    assert_error(api.create(To=recipient, MessagingServiceSid=SANDBOX_MESSAGING_SERVICE_SID, Body="x"), 400, 21610)
    assert_error(api.create(To=recipient, From=SANDBOX_POOL_NUMBERS[0], Body="x"), 400, 21610)
    api.send(recipient)  # a sender outside the service is not blocked
    api.sandbox.inbound(recipient, SANDBOX_POOL_NUMBERS[1], "START")
    api.send(recipient, frm=None, MessagingServiceSid=SANDBOX_MESSAGING_SERVICE_SID)


def test_a_back_dated_stop_older_than_a_start_does_not_block(api: TwilioHTTP):
    recipient = "+15554700001"
    now = datetime.fromtimestamp(api.sandbox.clock()["now_epoch"], UTC)
    api.sandbox.inbound(recipient, SENDER, "START")
    api.sandbox.inbound(recipient, SENDER, "STOP", date_sent=(now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    api.send(recipient)
    listed = api.list_all(From=recipient)
    assert [m["body"] for m in listed] == ["START", "STOP"]


def test_inbound_rejects_future_dates(api: TwilioHTTP):
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = api.post("/_sandbox/inbound", data={"From": "+15554800001", "To": SENDER, "Body": "x", "DateSent": future})
    assert response.status_code == 400


def test_simulated_replies(make_sandbox):
    sandbox = make_sandbox("replies", status_delay_ms=1000, reply_rate=1.0, reply_keywords="MORE,DEALS", seed=3)
    http = TwilioHTTP(sandbox)
    recipients = [f"+15554900{i:03d}" for i in range(40)]
    sent = {to: http.send(to)["sid"] for to in recipients}
    assert [m for m in http.list_all() if m["direction"] == "inbound"] == []
    sandbox.advance_clock(3.5)  # delivered now; replies come a few steps later
    assert [m for m in http.list_all() if m["direction"] == "inbound"] == []
    now = sandbox.advance_clock(10)["now_epoch"]
    replies = [m for m in http.list_all() if m["direction"] == "inbound"]
    assert len(replies) == len(recipients)
    assert {m["from"] for m in replies} == set(recipients)
    assert {m["to"] for m in replies} == {SENDER}
    assert all(m["status"] == "received" and rfc2822_ts(m["date_sent"]) <= now for m in replies)
    bodies = {m["body"] for m in replies}
    assert {"STOP", "START", "HELP", "MORE", "DEALS"} & bodies
    assert bodies - {"STOP", "START", "HELP", "MORE", "DEALS"}  # some free text too
    stopped = [m["from"] for m in replies if m["body"] == "STOP"]
    assert stopped, "seed 3 gives some STOP replies"
    assert_error(http.create(To=stopped[0], From=SENDER, Body="x"), 400, 21610)
    # replies are listed like Twilio lists inbound messages: To = our number
    assert len(http.list_all(To=SENDER)) == len(recipients)
    assert len(sent) == len(recipients)
