"""Listing Messages: paging by next_page_uri, newest date_sent first, and every filter."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from twilio_pipeline.sandbox.credentials import SANDBOX_POOL_NUMBERS

from .conftest import SENDER, TwilioHTTP, rfc2822_ts


def _send_many(api: TwilioHTTP, recipients: list[str]) -> list[str]:
    local = threading.local()

    def send(to: str) -> str:
        if not hasattr(local, "http"):
            local.http = TwilioHTTP(api.sandbox)
        return local.http.send(to, "paging test")["sid"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(send, recipients))


def test_paging_1205_messages(api: TwilioHTTP):
    sids = _send_many(api, [f"+1555300{i:04d}" for i in range(1205)])
    assert len(set(sids)) == 1205

    first = api.list_page(PageSize=500)
    assert first["page"] == 0 and first["page_size"] == 500 and first["start"] == 0 and first["end"] == 499
    assert first["previous_page_uri"] is None
    assert "PageToken=PA" in first["next_page_uri"] and "Page=1" in first["next_page_uri"]
    assert first["first_page_uri"].endswith("PageSize=500&Page=0")
    # messages arriving while a client pages must not shift the pages it has not read yet
    late = _send_many(api, [f"+1555301{i:04d}" for i in range(10)])
    pages = [first]
    while pages[-1]["next_page_uri"]:
        response = api.get(pages[-1]["next_page_uri"])
        assert response.status_code == 200, response.text
        pages.append(response.json())
    assert [len(p["messages"]) for p in pages] == [500, 500, 205]
    assert [p["page"] for p in pages] == [0, 1, 2]
    assert pages[1]["start"] == 500 and pages[2]["end"] == 1204
    listed = [m["sid"] for p in pages for m in p["messages"]]
    assert len(listed) == len(set(listed)) == 1205
    assert set(listed) == set(sids)
    assert not set(late) & set(listed)
    stamps = [rfc2822_ts(m["date_sent"]) for p in pages for m in p["messages"]]
    assert stamps == sorted(stamps, reverse=True)

    # a fresh pass sees the same order, with the late ones first
    again = [m["sid"] for m in api.list_all(PageSize=1000)]
    assert again == [s for s in again if s in set(late)] + listed

    # previous_page_uri leads back to the same page
    back = api.get(pages[2]["previous_page_uri"]).json()
    assert [m["sid"] for m in back["messages"]] == [m["sid"] for m in pages[1]["messages"]]


def test_page_size_bounds(api: TwilioHTTP):
    api.send("+15553100001")
    assert api.list_page()["page_size"] == 50
    assert api.list_page(PageSize=1000)["page_size"] == 1000
    for bad in (0, 1001, "x"):
        response = api.get(api.messages_path, params={"PageSize": bad})
        assert response.status_code == 400, response.text
    assert api.get(api.messages_path, params={"PageToken": "PAnothing"}).status_code == 400


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def dated(api: TwilioHTTP):
    """Inbound messages back-dated over three days, from two numbers to two pool numbers."""
    clock = api.sandbox.clock()
    now = datetime.fromtimestamp(clock["now_epoch"], UTC).replace(microsecond=0)
    today = now.replace(hour=0, minute=0, second=0)
    items = []
    for day in (3, 2, 1):
        for hour in (1, 12, 23):
            for frm, to in (("+15553200001", SANDBOX_POOL_NUMBERS[0]), ("+15553200002", SANDBOX_POOL_NUMBERS[1])):
                at = today - timedelta(days=day) + timedelta(hours=hour, minutes=30)
                items.append({"From": frm, "To": to, "Body": f"d{day}h{hour}", "DateSent": _iso(at)})
    api.sandbox.inbound_bulk(items)
    return today, items


def _bodies(messages) -> list[tuple[str, str]]:
    return [(m["from"], m["body"]) for m in messages]


def test_filters_to_and_from(api: TwilioHTTP, dated):
    _, items = dated
    by_to = api.list_all(To=SANDBOX_POOL_NUMBERS[0])
    assert len(by_to) == 9 and {m["to"] for m in by_to} == {SANDBOX_POOL_NUMBERS[0]}
    by_from = api.list_all(From="+15553200002")
    assert len(by_from) == 9 and {m["from"] for m in by_from} == {"+15553200002"}
    both = api.list_all(To=SANDBOX_POOL_NUMBERS[0], From="+15553200002")
    assert both == []
    assert all(m["direction"] == "inbound" and m["status"] == "received" for m in by_to)
    assert len(api.list_all()) == len(items)


def test_filter_date_sent_day(api: TwilioHTTP, dated):
    today, _ = dated
    day = (today - timedelta(days=2)).strftime("%Y-%m-%d")
    listed = api.list_all(DateSent=day)
    assert sorted(m["body"] for m in listed) == sorted(["d2h1", "d2h12", "d2h23"] * 2)


def test_filter_date_sent_inequalities_with_dates(api: TwilioHTTP, dated):
    today, _ = dated
    d2 = (today - timedelta(days=2)).strftime("%Y-%m-%d")
    on_or_after = api.list_all(**{"DateSent>": d2})
    assert {m["body"][:2] for m in on_or_after} == {"d2", "d1"}
    on_or_before = api.list_all(**{"DateSent<": d2})
    assert {m["body"][:2] for m in on_or_before} == {"d3", "d2"}
    # the older spelling with the operator in the value
    assert len(api.list_all(DateSent=f">={d2}")) == len(on_or_after)


def test_filter_date_sent_with_rfc3339_date_times(api: TwilioHTTP, dated):
    today, _ = dated
    at = today - timedelta(days=2) + timedelta(hours=12, minutes=30)  # exactly the d2h12 messages
    after = api.list_all(**{"DateSent>": _iso(at)})
    assert sorted(m["body"] for m in after) == sorted(["d2h12", "d2h23", "d1h1", "d1h12", "d1h23"] * 2)
    before = api.list_all(**{"DateSent<": _iso(at)})
    assert sorted(m["body"] for m in before) == sorted(["d3h1", "d3h12", "d3h23", "d2h1", "d2h12"] * 2)
    window = api.list_all(**{"DateSent>": _iso(at - timedelta(hours=12)), "DateSent<": _iso(at)}, To=SANDBOX_POOL_NUMBERS[1])
    assert sorted(m["body"] for m in window) == ["d2h1", "d2h12"]
    # the raw spelling of the functional guide, '>' unencoded in the URL
    raw = api.get(f"{api.messages_path}?DateSent>={_iso(at)}&PageSize=1000").json()
    assert len(raw["messages"]) == 10
    assert "DateSent%3E=" in raw["uri"]
    # other spellings the spec's examples show
    spaced = api.list_all(**{"DateSent>": (at.strftime("%Y-%m-%d %H:%M:%S.000"))})
    assert len(spaced) == 10
    rfc = api.list_all(**{"DateSent>": at.strftime("%a, %d %b %Y %H:%M:%S -0000")})
    assert len(rfc) == 10
    assert api.get(api.messages_path, params={"DateSent>": "yesterday"}).status_code == 400


def test_date_sent_filters_skip_messages_not_yet_sent(stepped: TwilioHTTP):
    queued = stepped.send("+15553300001")
    assert queued["date_sent"] is None
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert [m["sid"] for m in stepped.list_all()] == [queued["sid"]]
    assert stepped.list_all(DateSent=today) == []
    assert stepped.list_all(**{"DateSent>": today}) == []
    stepped.sandbox.advance_clock(2.5)
    sent = stepped.list_all(**{"DateSent>": today})
    assert [m["sid"] for m in sent] == [queued["sid"]]
    assert sent[0]["status"] == "sent"


def test_newest_first_mixes_directions(api: TwilioHTTP):
    out = api.send("+15553400001", "first")
    api.sandbox.inbound("+15553400001", SENDER, "reply")
    later = api.send("+15553400001", "second")
    listed = api.list_all(PageSize=2)
    assert [m["body"] for m in listed] == ["second", "reply", "first"]
    assert listed[0]["sid"] == later["sid"] and listed[2]["sid"] == out["sid"]
