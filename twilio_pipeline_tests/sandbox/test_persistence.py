"""State on disk: restarts (clean and crash), the store lock, reset, admin dumps and bulk inbound."""

from __future__ import annotations

import time

import pytest

from twilio_pipeline.sandbox.process import SandboxError, SandboxProcess
from twilio_pipeline_tests.polling import wait_until

from .conftest import SENDER, TwilioHTTP


def test_state_survives_a_clean_restart(tmp_path):
    sandbox = SandboxProcess(tmp_path, status_delay_ms=1000, reply_rate=1.0).start()
    http = TwilioHTTP(sandbox)
    sids = [http.send(f"+1555600{i:04d}")["sid"] for i in range(5)]
    sandbox.inbound("+15556009999", SENDER, "STOP")
    offset = sandbox.advance_clock(100)["offset_s"]
    before = sorted(http.list_all(), key=lambda m: m["sid"])
    assert len(before) == 5 + 1 + 5  # five sends, one STOP, five replies (reply rate 1)
    assert sandbox.stop() == 0

    sandbox.start()
    http = TwilioHTTP(sandbox)
    after = sorted(http.list_all(), key=lambda m: m["sid"])
    assert after == before
    assert sandbox.clock()["offset_s"] == pytest.approx(offset)
    assert all(http.fetch(sid)["status"] == "delivered" for sid in sids)
    # the STOP still blocks, and the per-recipient counts still hold
    assert http.create(To="+15556009999", From=SENDER, Body="x").json()["code"] == 21610
    assert sandbox.stats()["messages_created_by_to"] == {f"+1555600{i:04d}": 1 for i in range(5)}
    sandbox.stop()


def test_write_behind_is_flushed_within_a_second(tmp_path):
    sandbox = SandboxProcess(tmp_path, status_delay_ms=0).start()
    http = TwilioHTTP(sandbox)
    sids = {http.send(f"+1555610{i:04d}")["sid"] for i in range(20)}
    journal = sandbox.store / "journal.jsonl"

    def flushed() -> bool:
        text = journal.read_text(encoding="utf-8") if journal.exists() else ""
        return text.endswith("\n") and all(sid in text for sid in sids)

    wait_until(flushed, 1.0, "the write-behind journal to hold every message")
    sandbox.kill()  # no chance to flush at shutdown
    sandbox.start()
    assert {m["sid"] for m in sandbox.messages()} == sids
    sandbox.stop()


def test_two_sandboxes_never_share_a_store(tmp_path):
    first = SandboxProcess(tmp_path / "a", status_delay_ms=0).start()
    second = SandboxProcess(tmp_path / "b", store=first.store, status_delay_ms=0)
    with pytest.raises(SandboxError, match="in use by another sandbox"):
        second.start()
    assert second.proc.returncode == 2
    errors = [line for line in second.log_tail().splitlines() if "in use" in line]
    assert len(errors) == 1 and str(first.pid) in errors[0]
    first.stop()
    second.start()  # free again once the first has stopped
    second.stop()


def test_reset_empties_and_persists(tmp_path):
    sandbox = SandboxProcess(tmp_path, status_delay_ms=0).start()
    http = TwilioHTTP(sandbox)
    http.send("+15556200001")
    sandbox.advance_clock(50)
    sandbox.reset()
    assert sandbox.messages() == []
    assert sandbox.stats()["requests_total"] == 0
    assert sandbox.clock()["offset_s"] == 0
    http.send("+15556200002")
    sandbox.stop()
    sandbox.start()
    assert [m["to"] for m in sandbox.messages()] == ["+15556200002"]
    sandbox.stop()


def test_admin_dump_and_stats(api: TwilioHTTP):
    sent = api.send("+15556300001", "hello")
    api.sandbox.inbound("+15556300001", SENDER, "HELP")
    api.get(api.messages_path)
    dump = api.sandbox.messages()
    assert [m["direction"] for m in dump] == ["outbound-api", "inbound"]
    assert dump[0]["sid"] == sent["sid"] and dump[0]["status"] == "delivered" and dump[0]["body"] == "hello"
    assert set(dump[0]) >= {"sid", "to", "from", "status", "body", "direction", "date_created"}
    assert api.sandbox.messages(to="+15556300001") == dump[:1]
    assert api.sandbox.messages(direction="inbound") == dump[1:]
    stats = api.sandbox.stats()
    assert stats["requests_total"] == 2
    assert stats["requests_by_endpoint"] == {"POST Messages": 1, "GET Messages": 1}
    assert stats["throttled_429"] == 0
    assert stats["messages_created_by_to"] == {"+15556300001": 1}


@pytest.mark.slow
def test_bulk_inbound_of_100000_is_quick(api: TwilioHTTP):
    items = [{"From": f"+1555{i:07d}", "To": SENDER, "Body": "STOP" if i % 10 == 0 else "hi",
              "DateSent": "2026-01-01T00:00:00Z"} for i in range(100_000)]
    started = time.monotonic()
    result = api.sandbox.inbound_bulk(items)
    assert time.monotonic() - started < 15
    assert result["created"] == 100_000 and len(set(result["sids"])) == 100_000
    assert api.sandbox.stats()["messages_inbound"] == 100_000
    page = api.list_page(PageSize=1000, To=SENDER)
    assert len(page["messages"]) == 1000 and page["next_page_uri"]
    # the STOPs in the batch block their senders
    assert api.create(To="+15550000010", From=SENDER, Body="x").json()["code"] == 21610
    api.send("+15550000011")
