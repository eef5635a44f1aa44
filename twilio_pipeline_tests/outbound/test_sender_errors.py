"""Refusals that blame the sender or the account (21606 From not owned, 21212 ...) stop the send and leave
the recipients unsent - never SendFailed, never "nothing new to send" once the channel is fixed."""

from __future__ import annotations

import pytest

from twilio_pipeline.audience import create_execution
from twilio_pipeline.channels import ChannelConfigError
from twilio_pipeline.logs import ListLog
from twilio_pipeline.outbound import commit_execution, plan_execution, send_execution
from twilio_pipeline.outbound.execution import read_execution
from twilio_pipeline.twilio import SenderRejected
from twilio_pipeline_tests.outbound.conftest import (
    SENDER,
    assert_exactly_once,
    channels,
    client_for,
    identities,
    ledger_rows,
    run_id,
)

BODY = "Hello {{FirstName}}: new offer inside"
NOT_OWNED = "+14155550100"  # a valid number the sandbox account does not own -> 21606


def _plan(db, n: int, execution_id: int = 30, **overrides):
    channel = channels(**overrides).channels[0]
    create_execution(db, execution_id, channel.name, BODY,
                     [(i, f"+1415{i:07d}", {"FirstName": f"P{i}"}) for i in range(1, n + 1)])
    plan_execution(db, channel, execution_id, run_id=run_id(), log=ListLog())
    return channel


def _posts(sb) -> int:
    return sb.stats()["requests_by_endpoint"].get("POST Messages", 0)


@pytest.mark.parametrize("from_number, code", [(NOT_OWNED, 21606), ("+15005550001", 21212)])
def test_a_sender_twilio_refuses_stops_the_send_and_a_fixed_channel_sends_everyone(db, sandbox, log, from_number,
                                                                                     code):
    bad = _plan(db, 20, from_number=from_number, max_concurrency=1, sender_error_limit=3)
    with pytest.raises(SenderRejected) as caught:
        send_execution(db, client_for(sandbox, bad), bad, 30, run_id=run_id(), log=log, settle_s=0.1)
    assert str(code) in str(caught.value) and "\n" not in str(caught.value)
    assert _posts(sandbox) == 3, "no request after sender_error_limit refusals in a row"
    rows = ledger_rows(db, 30)
    assert {r["Outcome"] for r in rows} == {"planned"}, "nobody recorded as refused"
    assert sum(1 for r in rows if r["ErrorCode"] == code) == 3
    execution = read_execution(db, 30)
    assert execution.status == "failed" and str(code) in execution.status_reason

    fixed = channels(from_number=SENDER, max_concurrency=1).channels[0]
    summary = send_execution(db, client_for(sandbox, fixed), fixed, 30, run_id=run_id(), log=log, settle_s=0.1)
    assert summary.sent == 20 and not summary.nothing_to_send
    res = commit_execution(db, fixed, 30, run_id=run_id(), log=log)
    assert res.status == "sent" and res.results["Sent"] == 20 and res.results["SendFailed"] == 0
    identities(res.results)
    assert_exactly_once(db, sandbox, 30)


def test_results_count_the_held_back_recipients_as_pending(db, sandbox, log):
    bad = _plan(db, 12, from_number=NOT_OWNED, max_concurrency=2, sender_error_limit=2)
    with pytest.raises(SenderRejected):
        send_execution(db, client_for(sandbox, bad), bad, 30, run_id=run_id(), log=log, settle_s=0.1)
    res = commit_execution(db, bad, 30, run_id=run_id(), log=log)
    assert res.results["Pending"] == 12 and res.results["SendFailed"] == 0 and res.results["Targeted"] == 0
    identities(res.results)
    assert res.status == "failed" and "21606" in res.status_reason
    assert sandbox.stats()["messages_created_by_to"] == {}


def _number_sid(sb, number: str) -> str:
    listing = sb.request("GET", f"/2010-04-01/Accounts/{sb.account_sid}/IncomingPhoneNumbers.json")
    return next(n["sid"] for n in listing["incoming_phone_numbers"] if n["phone_number"] == number)


def _release(sb, number: str) -> None:
    sb.request("DELETE", f"/2010-04-01/Accounts/{sb.account_sid}/IncomingPhoneNumbers/{_number_sid(sb, number)}.json")


def _buy(sb, number: str) -> None:
    sb.request("POST", f"/2010-04-01/Accounts/{sb.account_sid}/IncomingPhoneNumbers.json", form={"PhoneNumber": number})


@pytest.mark.slow
def test_a_number_released_mid_send_stops_it_and_the_rest_is_sent_once_it_is_back(db, make_sandbox, log):
    sb = make_sandbox(latency_ms=20)
    channel = _plan(db, 80, max_concurrency=1, sender_error_limit=4)
    released = []

    def progress(done: int, total: int, rate: float) -> None:
        if done and not released:
            _release(sb, SENDER)
            released.append(done)

    with pytest.raises(SenderRejected) as caught:
        send_execution(db, client_for(sb, channel), channel, 30, run_id=run_id(), log=log, settle_s=0.1,
                       progress=progress)
    assert "21606" in str(caught.value)
    rows = ledger_rows(db, 30)
    sent = [r for r in rows if r["Outcome"] == "sent"]
    assert released and 0 < len(sent) < 80
    assert not [r for r in rows if r["Outcome"] not in ("sent", "planned")], "no refusal, nothing in doubt"
    assert _posts(sb) == len(sent) + 4
    assert "21606" in read_execution(db, 30).status_reason

    _buy(sb, SENDER)
    summary = send_execution(db, client_for(sb, channel), channel, 30, run_id=run_id(), log=log, settle_s=0.1)
    assert summary.sent == 80 - len(sent), "only the recipients not sent before"
    res = commit_execution(db, channel, 30, run_id=run_id(), log=log)
    assert res.status == "sent" and res.results["Sent"] == 80
    assert_exactly_once(db, sb, 30)


def test_fewer_sender_errors_than_the_limit_leave_their_recipients_for_a_later_send(db, make_sandbox, log):
    """A hiccup (the number gone for a moment) does not stop the send; its recipients are not SendFailed:
    the execution ends failed naming the code, with them Pending, and the next send sends only them."""
    sb = make_sandbox(latency_ms=20)
    channel = _plan(db, 80, max_concurrency=1, sender_error_limit=1000)
    ticks = []

    def progress(done: int, total: int, rate: float) -> None:
        ticks.append(done)
        if len(ticks) == 1 and done:
            _release(sb, SENDER)
        elif len(ticks) == 2:
            _buy(sb, SENDER)

    summary = send_execution(db, client_for(sb, channel), channel, 30, run_id=run_id(), log=log, settle_s=0.1,
                             progress=progress)
    assert summary.held_back > 0 and summary.refused == 0
    assert summary.sent + summary.held_back == 80
    assert any("stay unsent (Pending)" in line for line in log.lines)
    res = commit_execution(db, channel, 30, run_id=run_id(), log=log)
    assert res.results["Pending"] == summary.held_back and res.results["SendFailed"] == 0
    assert res.status == "failed" and "21606" in res.status_reason
    identities(res.results)

    again = send_execution(db, client_for(sb, channel), channel, 30, run_id=run_id(), log=log, settle_s=0.1)
    assert again.sent == summary.held_back and again.held_back == 0
    res = commit_execution(db, channel, 30, run_id=run_id(), log=log)
    assert res.status == "sent" and res.results["Sent"] == 80
    assert_exactly_once(db, sb, 30)


def test_a_recipient_refusal_is_still_final_and_does_not_count_as_a_sender_error(db, sandbox, log):
    channel = _plan(db, 3, max_concurrency=1, sender_error_limit=1)
    led = db.tables.ledger
    with db.begin() as conn:  # 21610 (unsubscribed) blames the recipient, not the sender
        conn.execute(led.update().where(led.c.ChannelExecutionID == 30, led.c.RPContactID == 2)
                     .values(ToNumber="+15005550004"))
    summary = send_execution(db, client_for(sandbox, channel), channel, 30, run_id=run_id(), log=log, settle_s=0.1)
    assert summary.sent == 2 and summary.refused == 1 and summary.held_back == 0


@pytest.mark.parametrize("spec, key", [
    ({"sender_error_limit": 0}, "sender_error_limit"),
    ({"sender_error_limit": "many"}, "sender_error_limit"),
    ({"reconcile": {"settle_s": -1}}, "reconcile.settle_s"),
    ({"reconcile": {"resend_unconfirmed": "maybe"}}, "reconcile.resend_unconfirmed"),
    ({"reconcile": {"settle": 5}}, "reconcile.settle"),
])
def test_channel_file_rejects_bad_sender_error_limit_and_reconcile_keys(spec, key):
    with pytest.raises(ChannelConfigError) as caught:
        channels(**spec)
    assert f"'{key}'" in str(caught.value) and "\n" not in str(caught.value)


def test_channel_file_defaults():
    channel = channels().channels[0]
    assert channel.sender_error_limit == 5
    assert channel.reconcile.settle_s == 60 and channel.reconcile.resend_unconfirmed is True


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_send_stopped_by_sender_errors_exits_1_in_one_line_and_a_send_after_the_fix_sends_everyone(
        tmp_path, make_sandbox):
    from twilio_pipeline_tests.reliability.conftest import PipelineCli, assert_no_traceback
    from twilio_pipeline_tests.reliability.conftest import channel as cli_channel

    sb = make_sandbox()
    spec = cli_channel("Sender SMS", from_number=NOT_OWNED, connectivity_test=False, max_concurrency=1,
                       sender_error_limit=2)
    cli = PipelineCli(tmp_path / "cli", sb, [spec])
    try:
        create_execution(cli.db, 9, "Sender SMS", BODY, [(i, f"+1415{i:07d}", {"FirstName": "A"}) for i in range(1, 6)])
        result = cli.run("send", "9", timeout=180)
        assert result.returncode == 1, result.describe()
        assert_no_traceback(result.output)
        failed = [line for line in result.stdout.splitlines() if "failed" in line]
        assert len(failed) == 1 and "21606" in failed[0] and "stay unsent" in failed[0], result.describe()
        assert "nothing new to send" not in result.output
        assert _posts(sb) == 2
        execution = read_execution(cli.db, 9)
        assert execution.status == "failed" and "21606" in execution.status_reason
        assert cli.db.read_results(9)["Pending"] == 5

        _buy(sb, NOT_OWNED)  # the account fixed: the number is the account's again
        again = cli.run("send", "9", timeout=180)
        assert again.returncode == 0, again.describe()
        assert read_execution(cli.db, 9).status == "sent"
        assert sorted(sb.stats()["messages_created_by_to"].values()) == [1] * 5
    finally:
        cli.close()


def test_a_first_message_listed_late_is_found_after_a_refused_resend_not_sent_twice(db, make_sandbox, log,
                                                                                    monkeypatch):
    """Twilio created the first message but the answer was lost, and its listing lags. The resend, an hour
    later, is refused because the number was released meanwhile (21606), so the row is in doubt again. Once
    the number is back, the next send must look from the *first* request on, find that message and adopt
    it: a look-up starting at the refused resend would miss it and text the person a second time."""
    from datetime import timedelta

    from twilio_pipeline.outbound.ledger import Claims
    from twilio_pipeline_tests.polling import wait_until

    sb = make_sandbox(list_lag_ms=4000)
    channel = _plan(db, 1, reconcile={"settle_s": 0.1})
    client = client_for(sb, channel)
    first = Claims(db, 30, "run-lost").next_planned(1)[0]
    created = client.create_message({"To": first.to, "From": SENDER, "Body": first.body}).message
    led = db.tables.ledger
    with db.begin() as conn:  # its answer was a 5xx: the row is in doubt, its claim time kept
        conn.execute(led.update().where(led.c.ChannelExecutionID == 30).values(Outcome="ambiguous"))

    _release(sb, SENDER)
    an_hour_later = Claims._token
    monkeypatch.setattr(Claims, "_token", lambda self: an_hour_later(self) + timedelta(hours=1))
    refused = send_execution(db, client, channel, 30, run_id=run_id(), log=log, settle_s=0.1)
    assert refused.sent == 0 and [r["Outcome"] for r in ledger_rows(db, 30)] == ["ambiguous"]
    monkeypatch.setattr(Claims, "_token", an_hour_later)

    _buy(sb, SENDER)
    wait_until(lambda: any(m["sid"] == created["sid"] for m in client.iter_messages(to=first.to, from_=SENDER)),
               timeout=30, what="Twilio lists the first message")
    later = send_execution(db, client, channel, 30, run_id=run_id(), log=log, settle_s=0.1)
    assert later.adopted == 1 and later.resent == 0
    assert ledger_rows(db, 30)[0]["MessageSID"] == created["sid"]
    assert sb.stats()["messages_created_by_to"] == {first.to: 1}, "texted once"
