"""Bad input: every case has its expected outcome - a clear one-line error naming the problem (CLI exit
2, no traceback), or a counted and recorded per-recipient outcome - and no other recipient is affected.

* phone numbers and bodies: one execution mixing every bad case with good recipients, sent in full
  by the outbound job (connectivity, refresh, plan, send, commit) against the sandbox, on SQLite and PostgreSQL;
* the channel file and the execution: the real CLI, one line on stderr, exit 2;
* Twilio's answers: a scripted local server answering creates and listings with HTML error pages,
  truncated JSON, JSON without `sid`, unknown statuses, 200s carrying an error, unreadable dates.
"""

from __future__ import annotations

import json
import re
import threading
import time
import tracemalloc
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import sqlalchemy as sa

from twilio_pipeline.audience import create_execution
from twilio_pipeline.channels import ChannelConfigError, load_channels, parse_channels
from twilio_pipeline.dates import to_naive_utc
from twilio_pipeline.inbound import fetch_statuses, load_states, parse_keywords, refresh_inbound, suppressed_numbers
from twilio_pipeline.logs import ListLog
from twilio_pipeline.outbound import (
    commit_execution,
    plan_execution,
    send_execution,
)
from twilio_pipeline.twilio import Endpoints, RetrySettings, TwilioClient, TwilioCredentials, parse_twilio_date
from twilio_pipeline.twilio.channel_client import client_for_channel
from twilio_pipeline_tests.pipeline_harness import StepFailed
from twilio_pipeline_tests.reliability.conftest import (
    SENDER,
    assert_identities,
    assert_no_traceback,
    channel,
    ledger,
    tracked_sids,
)
from twilio_pipeline_tests.twilio.fake_server import Answer, FakeTwilio, reply, twilio_error


@dataclass(frozen=True)
class Case:
    what: str
    address: str | None
    attributes: str | None  # OfferHistorySG.Attributes as stored (JSON text or NULL)
    outcome: str            # the ledger Outcome the recipient must end with
    detail: str             # the E.164 it is sent to (sent), else a fragment of the recorded reason
    body: str | None = None  # the exact text the phone must get (sent cases that check it)
    sqlite_only: bool = False  # a value PostgreSQL cannot even store (a NUL in text): the upstream never has it


def _msg(text: str) -> str:
    return json.dumps({"Msg": text})


OK = _msg("Hello there")
PLAIN = [
    Case("NULL number", None, OK, "invalid", "no phone number (NULL)"),
    Case("empty number", "", OK, "invalid", "empty phone number"),
    Case("only spaces", "   ", OK, "invalid", "empty phone number"),
    Case("spaces, dashes, parentheses", "+1 (415) 555-0101", OK, "sent", "+14155550101"),
    Case("dots and a no-break space", " +1.415.555.0102\u00a0", OK, "sent", "+14155550102"),
    Case("letters", "+1 415 CALL NOW", OK, "invalid", "contains letters"),
    Case("too short", "+1234", OK, "invalid", "too short"),
    Case("too long", "+1415555010312345", OK, "invalid", "too long"),
    Case("no country code", "4155550104", OK, "invalid", "no country code"),
    Case("national format without default_region", "(415) 555-0105", OK, "invalid", "no country code"),
    Case("leading 00", "0044 20 7946 0958", OK, "sent", "+442079460958"),
    Case("emoji", "\U0001F4DE +1 415 555 0106", OK, "invalid", "not digits"),
    Case("zero-width space", "+1\u200b4155550110", OK, "invalid", "not digits"),
    Case("SQL text", "'; DROP TABLE OfferHistorySG; --", OK, "invalid", "contains letters"),
    Case("10,000 characters", "1" * 10_000, OK, "invalid", "10000 characters"),
    Case("unknown country code", "+99912345678", OK, "invalid", "invalid country code"),
    Case("possible, but shorter than any E.164 number", "+49 1000", OK, "invalid", "at least 7 digits"),
    Case("duplicate of a formatted number", "+14155550101", OK, "duplicate", "duplicate of RPContactID"),
    Case("empty body", "+14155550111", _msg(""), "not_rendered", "body is empty"),
    Case("1,601-character body", "+14155550112", _msg("x" * 1601), "not_rendered", "1601 characters"),
    Case("1,600-character body", "+14155550113", _msg("x" * 1600), "sent", "+14155550113"),
    Case("UCS-2 only body", "+14155550114", _msg("Привет, мир! Скидка для вас"), "sent", "+14155550114"),
    Case("lone surrogate", "+14155550115", '{"Msg": "Hi \\ud83d there"}', "not_rendered", "lone surrogates"),
    Case("missing merge field", "+14155550116", json.dumps({"Other": "x"}), "not_rendered", "Msg is missing"),
    Case("NULL merge value", "+14155550117", json.dumps({"Msg": None}), "not_rendered", "Msg is NULL"),
    Case("NULL Attributes", "+14155550118", None, "not_rendered", "Msg is missing"),
    Case("Attributes not JSON", "+14155550119", "{Msg: hi", "not_rendered", "not valid JSON"),
    Case("Attributes a JSON list", "+14155550120", '["Hello"]', "not_rendered", "not a JSON object"),
    Case("merge syntax inside a value", "+14155550121", _msg("{{Msg}} stays as typed"), "sent", "+14155550121"),
    Case("SQL text in a value", "+14155550122", _msg("'); DELETE FROM TwilioSMS_SendLedger; --"), "sent",
         "+14155550122"),
]
REGION = [
    Case("national format with default_region", "(415) 555-0105", OK, "sent", "+14155550105"),
    Case("national with dots and default_region", "415.555.0108", OK, "sent", "+14155550108"),
    Case("another country's national format", "020 7946 0958", OK, "invalid", "too long"),
    Case("international number with default_region", "+44 20 7946 0959", OK, "sent", "+442079460959"),
]
# Issue 13: hostile recipients for the template "{{Msg}}" - each a counted, recorded outcome, never a
# crashed execution, never a NUL texted.
HOSTILE = [
    Case("NUL escaped in a value (PostgreSQL COPY aborted the execution)", "+14155550151",
         '{"Msg": "Hi\\u0000there"}', "not_rendered", "contains a NUL character"),
    Case("NUL stored in Attributes", "+14155550152", '{"Msg": "Hi\x00there"}', "not_rendered",
         "Attributes contains a NUL character", sqlite_only=True),
    Case("NUL stored in AddressKey", "+1415555\x000153", OK, "invalid", "contains a NUL character", sqlite_only=True),
    Case("bell character in a value", "+14155550154", '{"Msg": "Ding\\u0007"}', "not_rendered",
         "control character U+0007"),
    Case("bell character in AddressKey", "+1415555\x070155", OK, "invalid", "control character U+0007",
         sqlite_only=True),
    Case("Attributes a JSON string", "+14155550156", '"Hello"', "not_rendered", "not a JSON object"),
    Case("Attributes a JSON number", "+14155550157", "42", "not_rendered", "not a JSON object"),
    Case("Attributes 100,000 arrays deep", "+14155550158", '{"Msg": ' + "[" * 100_000 + "]" * 100_000 + "}",
         "not_rendered", "nested too deeply"),
    Case("Attributes of 1.2 MB", "+14155550159", _msg("x" * 1_200_000), "not_rendered",
         "Attributes is 1200011 characters, over 1000000"),
    Case("NaN is not JSON", "+14155550160", '{"Msg": NaN}', "not_rendered", "not valid JSON"),
    Case("2,000 emoji", "+14155550161", _msg("\U0001F600" * 2000), "not_rendered", "2000 characters"),
    Case("a value of only whitespace", "+14155550162", _msg(" \t \n "), "not_rendered", "body is empty"),
    Case("CRLF in a value", "+14155550163", _msg("Line one\r\nLine two"), "sent", "+14155550163",
         body="Line one\r\nLine two"),
    Case("RTL text with a right-to-left mark", "+14155550164", _msg("\u200fمرحبا بكم"), "sent", "+14155550164",
         body="\u200fمرحبا بكم"),
    Case("backslash-N text is not NULL", "+14155550165", _msg("\\N"), "sent", "+14155550165", body="\\N"),
    Case("right-to-left mark in AddressKey", "\u200f+14155550166", OK, "invalid", "not digits"),
    Case("full-width digits", "+１４１５５５５０１６７", OK, "sent", "+14155550167"),
    Case("Arabic-Indic digits", "+١٤١٥٥٥٥٠١٦٨", OK, "sent", "+14155550168"),
    Case("full-width duplicate of an ASCII number", "+１４１５５５５０１６３", OK, "duplicate", "duplicate of RPContactID"),
    Case("tel: URI", "tel:+1-415-555-0169", OK, "invalid", "contains letters"),
    Case("40 digits", "1" * 40, OK, "invalid", "too long"),
    Case("CRLF around AddressKey", "+14155550170\r\n", OK, "sent", "+14155550170"),
    Case("an extension", "+1 415 555 0171;ext=12", OK, "invalid", "contains letters"),
    Case("SQL in a value, quoted and commented", "+14155550172", _msg("x' OR '1'='1'; --\t\\"), "sent",
         "+14155550172", body="x' OR '1'='1'; --\t\\"),
]
# Merge-field names of Unicode letters, digits and _ . - ; values rendered as the person wrote them.
MERGE_TEMPLATE = "Bonjour {{Prénom}} ({{ 1st }}, {{first.name}}, {{first-name}}): {{Amount}} {{Flag}}"


def _merge(amount: str = "10.50", flag: str = "true", prenom: str = '"Ada"', key: str = "Prénom") -> str:
    return (f'{{"{key}": {prenom}, "1st": "A", "first.name": "Lovelace", "first-name": "L", '
            f'"Amount": {amount}, "Flag": {flag}}}')


def _said(amount: str = "10.50", flag: str = "true", prenom: str = "Ada") -> str:
    return f"Bonjour {prenom} (A, Lovelace, L): {amount} {flag}"


MERGE = [
    Case("a JSON number keeps its digits", "+14155550181", _merge(), "sent", "+14155550181", body=_said()),
    Case("an integer beyond a float", "+14155550182", _merge("12345678901234567890"), "sent", "+14155550182",
         body=_said("12345678901234567890")),
    Case("an exponent", "+14155550183", _merge("1.5E3"), "sent", "+14155550183", body=_said("1.5E3")),
    Case("negative zero", "+14155550184", _merge("-0.0", "false"), "sent", "+14155550184",
         body=_said("-0.0", "false")),
    Case("a number written as a string", "+14155550185", _merge('"0010.50"'), "sent", "+14155550185",
         body=_said("0010.50")),
    Case("a decomposed é in the key", "+14155550186", _merge(key="Pre\u0301nom"), "sent", "+14155550186",
         body=_said()),
    Case("a value holding another merge field", "+14155550187", _merge(prenom='"{{Amount}}"'), "sent",
         "+14155550187", body=_said(prenom="{{Amount}}")),
    Case("an object", "+14155550188", _merge('{"a": 1}'), "not_rendered", "merge field Amount is a JSON object"),
    Case("an array", "+14155550189", _merge("[1, 2]"), "not_rendered", "merge field Amount is a JSON array"),
    Case("null", "+14155550190", _merge("null"), "not_rendered", "merge field Amount is NULL"),
    Case("a lone surrogate escape", "+14155550191", _merge(prenom='"\\udc80"'), "not_rendered",
         "invalid Unicode"),
]
GOOD = 10  # ordinary recipients between the bad ones: none of them may be affected


def _create(db, execution_id: int, channel_name: str, cases: list[Case], good_start: int,
            template: str = "{{Msg}}", good_attributes: str = _msg("Your offer")) -> dict[int, Case]:
    """The execution with each case and GOOD ordinary recipients interleaved; RPContactID -> Case."""
    create_execution(db, execution_id, channel_name, template, [])
    rows, by_id, rid = [], {}, 0
    good = iter(range(good_start, good_start + GOOD * 10))
    for i, case in enumerate(cases):
        rid += 1
        by_id[rid] = case
        rows.append({"RPContactID": rid, "ChannelExecutionID": execution_id, "AddressKey": case.address,
                     "Attributes": case.attributes})
        if i % 3 == 0 and len([c for c in by_id.values() if c.what == "good"]) < GOOD:
            rid += 1
            number = f"+1628555{next(good):04d}"
            by_id[rid] = Case("good", number, good_attributes, "sent", number)
            rows.append({"RPContactID": rid, "ChannelExecutionID": execution_id, "AddressKey": number,
                         "Attributes": good_attributes})
    with db.begin() as conn:
        db.bulk_insert(conn, db.tables.offer_history, rows)
    return by_id


def _client(sb, chans, name: str):
    return client_for_channel(TwilioCredentials(sb.account_sid, sb.auth_token), chans.get(name),
                              Endpoints(sb.base_url, sb.base_url, sb.base_url))


def _send_and_check(pipeline, eid: int, expected: dict[int, Case], texted: dict[str, int]) -> None:
    """Send the execution the way production does (the outbound job: connectivity, refresh, plan, send,
    commit); every case ends with its outcome and reason (or exact text at the sandbox), and the results add up."""
    db, sb = pipeline.db, pipeline.sandbox
    run = pipeline.send(eid)
    rows = {r["RPContactID"]: r for r in ledger(db, eid)}
    bodies = {m["sid"]: m["body"] for m in sb.messages(direction="outbound-api")}
    for rid, case in expected.items():
        row = rows[rid]
        assert row["Outcome"] == case.outcome, (case.what, row["Outcome"], row["Reason"])
        if case.outcome == "sent":
            assert row["ToNumber"] == case.detail and row["MessageSID"], (case.what, row)
            texted[case.detail] = texted.get(case.detail, 0) + 1
            if case.body is not None:
                assert bodies[row["MessageSID"]] == case.body, (case.what, bodies[row["MessageSID"]])
        else:
            assert case.detail in (row["Reason"] or ""), (case.what, row["Reason"])
            assert row["MessageSID"] is None
    assert not any("\x00" in (b or "") for b in bodies.values()), "a NUL was texted"
    r = run.results
    assert_identities(r)
    outcomes = [c.outcome for c in expected.values()]
    assert (r["CountBeforeDedup"], r["InvalidNumbers"], r["NotRendered"], r["Duplicates"], r["Sent"],
            r["SendFailed"]) == (len(outcomes), outcomes.count("invalid"), outcomes.count("not_rendered"),
                                 outcomes.count("duplicate"), outcomes.count("sent"), 0)
    assert run.status == "sent"


def test_bad_numbers_and_bodies_are_recorded_per_recipient_and_affect_nobody_else(db, make_sandbox, make_pipeline):
    sb = make_sandbox()
    specs = [channel("Plain SMS", max_concurrency=8), channel("US Region SMS", max_concurrency=8, default_region="US")]
    chans = parse_channels({"channels": specs})
    expected = {10: _create(db, 10, "Plain SMS", PLAIN, 100), 11: _create(db, 11, "US Region SMS", REGION, 200)}
    texted: dict[str, int] = {}
    pipeline = make_pipeline(db, sb, chans)
    for eid in (10, 11):
        _send_and_check(pipeline, eid, expected[eid], texted)
    ucs2 = next(r for r in ledger(db, 10) if r["ToNumber"] == "+14155550114")
    assert ucs2["Encoding"] == "UCS-2" and ucs2["Segments"] == 1
    long_body = next(r for r in ledger(db, 10) if r["ToNumber"] == "+14155550113")
    assert long_body["Segments"] == 11
    # The sandbox got exactly one message per sendable recipient (the two executions share no number
    # except +14155550105, which only the US channel could read), and nothing else.
    assert sb.stats()["messages_created_by_to"] == texted
    assert all(n == 1 for n in texted.values())
    bodies = {m["to"]: m["body"] for m in sb.messages(direction="outbound-api")}
    assert bodies["+14155550121"] == "{{Msg}} stays as typed"
    assert bodies["+14155550122"] == "'); DELETE FROM TwilioSMS_SendLedger; --"
    with db.connect() as conn:  # the SQL text did nothing but travel as data
        assert conn.execute(sa.select(sa.func.count()).select_from(db.tables.offer_history)).scalar() > 0


def test_hostile_recipients_are_refused_or_texted_as_written_and_affect_nobody_else(db, make_sandbox, make_pipeline):
    """NUL, control characters and invalid Unicode anywhere in a recipient's row, odd Attributes, odd
    numbers, and merge fields of Unicode names with JSON values: each recipient gets its own counted,
    recorded outcome (or exactly the text a person would expect), the execution is sent for everyone
    else, and no NUL reaches Twilio - on SQLite and PostgreSQL alike."""
    sb = make_sandbox()
    chans = parse_channels({"channels": [channel("Hostile SMS", max_concurrency=8)]})
    hostile = [c for c in HOSTILE if db.dialect == "sqlite" or not c.sqlite_only]
    expected = {
        30: _create(db, 30, "Hostile SMS", hostile, 300),
        31: _create(db, 31, "Hostile SMS", MERGE, 400, template=MERGE_TEMPLATE, good_attributes=_merge()),
    }
    texted: dict[str, int] = {}
    pipeline = make_pipeline(db, sb, chans)
    for eid in (30, 31):
        _send_and_check(pipeline, eid, expected[eid], texted)
    assert sb.stats()["messages_created_by_to"] == texted
    assert all(n == 1 for n in texted.values())


# Rows of one execution, in the order the upstream wrote them: (RPContactID, AddressKey).
REPEATED = [
    (1, "+14155550302"), (1, "+14155550301"),       # same contact, two numbers: the lowest AddressKey is kept
    (2, "not a number"), (2, "+14155550303"),       # a valid number is kept before an invalid one
    (3, "+14155550304"), (3, "+14155550304"),       # the same row twice
    (4, "+1 415 555 0301"),                         # contact 1's kept number: a Duplicate of contact 1
    (5, "+14155550302"),                            # contact 1's other number: not a duplicate, sent
    (6, None), (6, None),                           # an invalid contact, twice
    (0, "+14155550306"), (-7, "+14155550307"), (2**63 - 1, "+14155550308"),  # any BIGINT is a contact key
    (-1, "+14155550309"),                           # -1 (an upstream's "unknown") next to the channel's seed
]
KEPT = {1: "+14155550301", 2: "+14155550303", 3: "+14155550304", 5: "+14155550302", 0: "+14155550306",
        -7: "+14155550307", 2**63 - 1: "+14155550308", -1: "+14155550309"}


def test_a_repeated_contact_counts_once_per_row_and_keeps_the_same_row_whatever_the_order(db, make_sandbox,
                                                                                         make_pipeline):
    """Dedupe on RPContactID first, then on the number: every OfferHistorySG row counts once in
    CountBeforeDedup; a second row of a contact is a Duplicate whatever its number; the row kept does not
    depend on the order rows were written or where a read chunk ends (README "Dedupe")."""
    sb = make_sandbox()
    chans = parse_channels({"channels": [channel("Dedupe SMS", max_concurrency=8, seeds=["+14155550399"])]})
    orders = {40: REPEATED, 41: REPEATED[::-1], 42: REPEATED[3:] + REPEATED[:3]}
    for eid, rows in orders.items():
        create_execution(db, eid, "Dedupe SMS", "Hi {{Name}}", [])
        with db.begin() as conn:
            db.bulk_insert(conn, db.tables.offer_history, [
                {"RPContactID": rid, "ChannelExecutionID": eid, "AddressKey": a, "Attributes": json.dumps({"Name": "x"})}
                for rid, a in rows])
    # One execution planned a row at a time: contacts straddle every chunk boundary.
    plan_execution(db, chans.get("Dedupe SMS"), 42, run_id="plan-1-row", log=ListLog(), chunk_rows=1)
    pipeline = make_pipeline(db, sb, chans)
    for eid in orders:
        run = pipeline.send(eid)
        rows = {r["RPContactID"]: r for r in ledger(db, eid)}
        assert {rid: r["ToNumber"] for rid, r in rows.items() if r["Outcome"] == "sent" and not r["IsSeed"]} == KEPT
        assert [r["ToNumber"] for r in rows.values() if r["IsSeed"] and r["Outcome"] == "sent"] == ["+14155550399"]
        assert rows[4]["Outcome"] == "duplicate" and rows[4]["Reason"] == "duplicate of RPContactID 1"
        assert rows[6]["Outcome"] == "invalid"
        r = run.results
        assert_identities(r)
        assert (r["CountBeforeDedup"], r["Duplicates"], r["InvalidNumbers"], r["Sent"], r["SeedsSent"]) == (
            14, 5, 1, 8, 1), (eid, r)
        assert run.plan.count_before_dedup == 14 and run.plan.duplicates == 5
    again = plan_execution(db, chans.get("Dedupe SMS"), 40, run_id="replan", log=ListLog())
    assert (again.count_before_dedup, again.duplicates, again.newly_planned, again.seeds) == (14, 5, 0, 1)


EXECUTION_LEVEL = [
    # (what, MessageBody, MediaUrl, fragment of the one-line StatusReason, PostgreSQL can store it)
    ("unbalanced merge braces", "Hi {{Name}, your offer", None, "{{ that is not a merge field", True),
    ("empty merge field", "Hi {{ }}", None, "{{ that is not a merge field", True),
    ("merge field of punctuation", "Hi {{Na@me}}", None, "{{ that is not a merge field", True),
    ("stray closing braces", "Hi }} there", None, "}} that is not a merge field", True),
    ("NUL in MessageBody", "Hi\x00 there", None, "MessageBody contains a NUL character", False),
    ("escape character in MessageBody", "Hi \x1b[31mred", None, "control character U+001B", False),
    ("MessageBody of only whitespace", " \t\r\n ", None, "MessageBody cannot be texted to anyone: body is empty",
     True),
    ("MessageBody NULL without media", None, None, "body is empty", True),
    ("MessageBody of 2,000 emoji", "\U0001F600" * 2000, None, "body is 2000 characters, over Twilio's 1600", True),
    ("javascript: MediaUrl", "Hi", "javascript:alert(1)", "not an http(s) URL", True),
    ("ftp MediaUrl", "Hi", "ftp://example.com/a.png", "not an http(s) URL", True),
    ("MediaUrl with a space", "Hi", "https://example.com/a b.png", "not an http(s) URL", True),
    ("MediaUrl of 10 KB", "Hi", "https://example.com/" + "a" * 10_000, "over 1000", False),
]


def test_a_bad_message_body_or_media_url_fails_the_execution_in_one_line(db, make_sandbox, make_pipeline):
    """A MessageBody or MediaUrl nobody could sensibly get: the execution is `failed` with one line saying
    why, nobody is planned and nothing is sent (a `{{Name}` used to be texted literally to everyone)."""
    sb = make_sandbox()
    chans = parse_channels({"channels": [channel("Exec SMS")]})
    cases = [c for c in EXECUTION_LEVEL if db.dialect == "sqlite" or c[4]]
    pipeline = make_pipeline(db, sb, chans)
    for eid, (what, body, media, fragment, _) in enumerate(cases, start=50):
        create_execution(db, eid, "Exec SMS", body, [(1, "+14155550401", {"Name": "Ada"})], media_url=media)
        with pytest.raises(StepFailed) as err:
            pipeline.send(eid)
        message = err.value.message
        assert fragment in message and "\n" not in message and len(message) <= 300, (what, message)
        ex = db.tables.executions
        with db.connect() as conn:
            status, reason = conn.execute(sa.select(ex.c.Status, ex.c.StatusReason)
                                          .where(ex.c.ChannelExecutionID == eid)).one()
        assert (status, reason) == ("failed", message), what
        assert ledger(db, eid) == [], what
    assert sb.stats()["messages_outbound"] == 0


def test_the_copy_encoder_refuses_a_nul_in_one_line(db):
    """PostgreSQL text cannot hold a NUL: should one ever reach the bulk load, the error names the table and
    column in one line instead of the driver's "invalid byte sequence"; SQLite stores it as given."""
    oh = db.tables.offer_history
    row = {"RPContactID": 1, "ChannelExecutionID": 1, "AddressKey": "+1415\x00", "Attributes": None}
    with db.begin() as conn:
        if db.dialect == "postgresql":
            with pytest.raises(ValueError, match=r"cannot store a NUL character in \S*OfferHistorySG\.AddressKey"):
                db.bulk_insert(conn, oh, [row])
        else:
            assert db.bulk_insert(conn, oh, [row]) == 1


def test_invalid_utf8_stored_in_sqlite_is_refused_per_recipient(sqlite_db, make_sandbox, make_pipeline):
    """Bytes that are not UTF-8 in a recipient's AddressKey or Attributes (another tool wrote them into
    SQLite; PostgreSQL refuses them on insert) make that recipient invalid / NotRendered instead of
    failing the whole audience read."""
    db = sqlite_db
    sb = make_sandbox()
    chans = parse_channels({"channels": [channel("Bytes SMS")]})
    create_execution(db, 60, "Bytes SMS", "Hi {{Name}}", [
        (1, "+14155550501", {"Name": "Ada"}), (2, "+14155550502", {"Name": "Bob"}),
        (3, "+14155550503", {"Name": "Cy"})])
    oh = db.tables.offer_history
    with db.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {oh.name} SET AddressKey = CAST(X'2B31343135FF' AS TEXT) WHERE RPContactID = 2")
        conn.exec_driver_sql(f"UPDATE {oh.name} SET Attributes = CAST(X'7B224E616D65223A2022C3227D' AS TEXT) "
                             "WHERE RPContactID = 3")
    pipeline = make_pipeline(db, sb, chans)
    run = pipeline.send(60)
    rows = {r["RPContactID"]: r for r in ledger(db, 60)}
    assert rows[1]["Outcome"] == "sent"
    assert rows[2]["Outcome"] == "invalid" and "invalid Unicode" in rows[2]["Reason"], rows[2]
    assert rows[2]["AddressKey"] == "+1415\ufffd"
    assert rows[3]["Outcome"] == "not_rendered" and "invalid Unicode" in rows[3]["Reason"], rows[3]
    assert_identities(run.results)
    # The same in the execution's own fields: the execution fails in one line, nobody is texted.
    ex = db.tables.executions
    for eid, column, fragment in ((61, "MessageBody", "MessageBody contains invalid Unicode"),
                                  (62, "ChannelName", "names channel 'Bytes SMS\\udcff', which is not in")):
        create_execution(db, eid, "Bytes SMS", "Hi", [(1, "+14155550511", None)])
        with db.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {ex.name} SET {column} = CAST(X'427974657320534D53FF' AS TEXT) "
                                 f"WHERE ChannelExecutionID = {eid}")
        with pytest.raises(StepFailed, match=re.escape(fragment)):
            pipeline.send(eid)
        assert ledger(db, eid) == []
    assert sb.stats()["messages_created_by_to"] == {"+14155550501": 1}


def test_a_reply_holding_a_nul_or_a_broken_surrogate_stops_no_sync_and_loses_no_stop(db, make_sandbox):
    """A reply body is kept as seen, but PostgreSQL cannot hold a NUL and no UTF-8 encoder takes a lone
    surrogate: those become U+FFFD, so one odd reply does not fail every sync (and the STOPs with it)."""
    sb = make_sandbox()
    chan = parse_channels({"channels": [channel("Reply SMS")]}).channels[0]
    now = sb.clock()["now_epoch"]
    sent_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 600))
    sb.inbound_bulk([{"From": "+14155550601", "To": SENDER, "Body": "Hi\x00there", "DateSent": sent_at},
                     {"From": "+14155550602", "To": SENDER, "Body": "bad \ud83d half", "DateSent": sent_at},
                     {"From": "+14155550603", "To": SENDER, "Body": "STOP", "DateSent": sent_at}])
    with _client(sb, parse_channels({"channels": [channel("Reply SMS")]}), "Reply SMS") as client:
        refresh_inbound(db, client, chan, log=ListLog())
    ib = db.tables.inbound
    with db.connect() as conn:
        bodies = {r[0]: r[1] for r in conn.execute(sa.select(ib.c.FromNumber, ib.c.Body))}
        suppressed = {r[0] for r in conn.execute(suppressed_numbers(db, chan))}
    assert bodies == {"+14155550601": "Hi\ufffdthere", "+14155550602": "bad \ufffd half", "+14155550603": "STOP"}
    assert "+14155550603" in suppressed


# ---- channel file and execution errors through the real CLI -------------------------------------------

GOOD_CHANNEL = '  - name: Demo\n    from_number: "+15005550006"\n'
CHANNEL_FILES = [
    ("unknown key", GOOD_CHANNEL + "    colour: blue\n", "channel 'Demo': key 'colour': unknown key"),
    ("no sender", "  - name: Demo\n", "exactly one of from_number and messaging_service_sid is required"),
    ("both senders", GOOD_CHANNEL + "    messaging_service_sid: MG" + "0" * 32 + "\n",
     "exactly one of from_number and messaging_service_sid is required"),
    ("malformed service SID", "  - name: Demo\n    messaging_service_sid: MG1234\n",
     "key 'messaging_service_sid': must be 'MG' followed by 32 hex characters"),
    ("malformed from_number", "  - name: Demo\n    from_number: 555-CALL-NOW\n", "key 'from_number'"),
    ("negative retries", GOOD_CHANNEL + "    retry: {max_attempts: -1}\n",
     "key 'retry.max_attempts': Input should be greater than or equal to 1"),
    ("zero concurrency", GOOD_CHANNEL + "    max_concurrency: 0\n", "key 'max_concurrency'"),
    ("duplicate names", GOOD_CHANNEL + GOOD_CHANNEL, "channel name 'Demo' is used twice"),
    ("Twilio keyword as channel keyword", GOOD_CHANNEL + "    keywords: [STOP]\n", "one of Twilio's own keywords"),
    ("follow-up on an opt-out", GOOD_CHANNEL + "    follow_ups: {STOP: {body: hi}}\n", "STOP is an opt-out"),
    ("unknown attribution", GOOD_CHANNEL + "    reply_attribution: first\n", "key 'reply_attribution'"),
    ("unknown region", GOOD_CHANNEL + "    default_region: XX\n", "key 'default_region'"),
    ("no channels key", None, "needs a top-level key 'channels' holding a list of channels"),
    ("empty channel list", "", "key 'channels'"),
    # issue 13: hostile channel files
    ("repeated key", GOOD_CHANNEL + "    name: Other\n", "key 'name' is repeated at line 4"),
    ("tab indentation", "  - name: Demo\n\tfrom_number: '+15005550006'\n", "is not valid YAML at line 3"),
    ("NUL in a name", '  - name: "De\\0mo"\n    from_number: "+15005550006"\n', "contains a NUL character"),
    ("escape character in a seed", GOOD_CHANNEL + '    seeds: ["+1415555\\e0100"]\n', "control character U+001B"),
    ("names differing in case", GOOD_CHANNEL + GOOD_CHANNEL.replace("Demo", "DEMO"),
     "channel names 'Demo' and 'DEMO' differ only in case or Unicode form"),
    ("names differing in Unicode form", GOOD_CHANNEL.replace("Demo", "Caf\u00e9") +
     GOOD_CHANNEL.replace("Demo", "Cafe\u0301"), "differ only in case or Unicode form"),
    ("a 10,000-character name", GOOD_CHANNEL.replace("Demo", "N" * 10_000), "at most 200 characters"),
    ("200 unknown keys", GOOD_CHANNEL + "".join(f"    key_{i}: {i}\n" for i in range(200)), "more problem(s)"),
    ("300 channels with a 300-character keyword each", "".join(
        GOOD_CHANNEL.replace("Demo", f"D{i}") + f"    keywords: [{'K' * 300}]\n" for i in range(300)),
     "must be one word of letters or digits"),
    ("javascript: media in a follow-up", GOOD_CHANNEL + "    keywords: [OFFER]\n"
     "    follow_ups: {OFFER: {body: hi, media_url: 'javascript:alert(1)'}}\n", "not an http(s) URL"),
    ("a follow-up body with a broken merge field", GOOD_CHANNEL + "    keywords: [OFFER]\n"
     "    follow_ups: {OFFER: {body: 'Hi {{Name}'}}\n", "the body has {{ that is not a merge field"),
    ("a YAML bomb", "".join(f"  - &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
     .replace("  - &b", "  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n  - &b", 1) + "  - *i\n",
     "expands to more than 100000 values (YAML aliases); refused"),
]


def _one_line_error(result, fragment: str) -> None:
    assert result.returncode == 2, result.describe()
    assert_no_traceback(result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.describe()
    assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def in_process_cli(make_cli, monkeypatch, capsys):
    """The CLI's main() in this process (Dagster already imported: milliseconds per case), with the
    environment of a PipelineCli. main() lets anything but a clean input error escape as an exception,
    so a case that would print a traceback fails here too. Returns run(args) -> (code, stderr lines)."""
    from twilio_pipeline.cli import main

    cli = make_cli(None, [channel("Demo")], name="inproc")
    for key, value in cli.env.items():
        monkeypatch.setenv(key, value)

    def run(*args: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        code = main(list(args))
        return code, capsys.readouterr().err.strip().splitlines()

    run.cli = cli
    return run


@pytest.mark.parametrize("what, body, fragment", CHANNEL_FILES, ids=[c[0] for c in CHANNEL_FILES])
def test_bad_channel_file_is_one_clear_line(in_process_cli, what, body, fragment):
    in_process_cli.cli.write_channels("- just a list\n" if body is None else "channels:\n" + body if body else
                                      "channels: []\n")
    started = time.monotonic()
    code, err = in_process_cli("send", "1")
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (what, code, err)
    assert fragment in err[0], (fragment, err[0])
    assert "; channel file: key 'channels'" not in err[0], f"a second, misleading problem reported: {err[0]}"
    assert len(err[0]) <= len("error: ") + 300, (what, len(err[0]), err[0][:400])
    assert time.monotonic() - started < 5, f"{what}: {time.monotonic() - started:.1f} s"


def _write_bytes(cli, data: bytes) -> None:
    cli.channels_path.write_bytes(data)


def test_channel_file_bytes_size_and_expansion_are_bounded(in_process_cli):
    """A byte-order mark is fine; bytes that are not UTF-8 and a file over 1 MiB are one clear line; a
    YAML bomb is refused in milliseconds with bounded memory (it took 18 s, 1.6 GB and a 312 MB line)."""
    cli = in_process_cli.cli
    good = ("channels:\n" + GOOD_CHANNEL).encode()
    _write_bytes(cli, b"\xef\xbb\xbf" + good)
    code, err = in_process_cli("send", "1")
    assert code == 2 and err == ["error: execution 1 does not exist in SMS_ChannelExecutions"], err
    for data, fragment in ((good.replace(b"Demo", b"D\xe9mo"), "is not UTF-8 text (byte 0xe9 at offset 21)"),
                           (good + b"# " + b"x" * (1 << 20) + b"\n", "is over 1024 KiB; refused")):
        _write_bytes(cli, data)
        code, err = in_process_cli("send", "1")
        assert code == 2 and len(err) == 1 and fragment in err[0] and len(err[0]) <= 307, err
    bomb = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n" + "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefghijkl", "bcdefghijklm", strict=True))
    cli.write_channels(bomb + "channels:\n  - name: *m\n    from_number: '+15005550006'\n")
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ChannelConfigError) as err:
            load_channels(cli.channels_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 1 and peak < 20 * 2**20, (time.monotonic() - started, peak)
    assert "expands to more than 100000 values" in str(err.value) and len(str(err.value)) <= 300


def test_execution_without_recipients_is_one_clear_line(in_process_cli):
    """(Unknown executions and channels are covered by test_cli.py.) No OfferHistorySG rows: exit 2, no run."""
    create_execution(in_process_cli.cli.db, 6, "Demo", "Hi", [])
    code, err = in_process_cli("send", "6")
    assert code == 2 and len(err) == 1 and "execution 6 has no recipients" in err[0], (code, err)
    assert not (in_process_cli.cli.home / "storage").exists(), "no Dagster run may start for bad input"


def _status_of(db, execution_id: int) -> tuple[str, str | None]:
    ex = db.tables.executions
    with db.connect() as conn:
        return tuple(conn.execute(sa.select(ex.c.Status, ex.c.StatusReason)
                                  .where(ex.c.ChannelExecutionID == execution_id)).one())


def test_cli_send_of_an_unsendable_execution_is_exit_2_and_records_why(in_process_cli):
    """A MessageBody nobody can get ({{Name} unbalanced) or no recipients: exit 2 with one line before any run,
    and the execution is `failed` with that line as its reason (no exception class name), as from any launch."""
    db = in_process_cli.cli.db
    create_execution(db, 7, "Demo", "Hi {{Name}", [(1, "+14155550100", {"Name": "Ada"})])
    create_execution(db, 8, "Demo", "Hi", [])
    for eid, fragment in ((7, "{{Name}"), (8, "has no recipients")):
        code, err = in_process_cli("send", str(eid))
        assert code == 2 and len(err) == 1 and fragment in err[0], (eid, code, err)
        status, reason = _status_of(db, eid)
        assert status == "failed" and fragment in reason and "Error:" not in reason, (eid, status, reason)
        assert err[0] == f"error: {reason}"
    assert not (in_process_cli.cli.home / "storage").exists(), "no Dagster run may start for bad input"


@pytest.mark.slow
def test_real_cli_prints_one_line_without_traceback(make_cli):
    """The same through a real process: what a user's shell sees."""
    cli = make_cli(None, "channels: [\n  - name: x\n", name="yaml")
    _one_line_error(cli.run("send", "1", timeout=120), "is not valid YAML at line")
    cli.write_channels("channels:\n" + CHANNEL_FILES[1][1])
    _one_line_error(cli.run("sync", timeout=120), CHANNEL_FILES[1][2])
    result = cli.run("send", str(2**31), timeout=120)
    assert result.returncode == 2 and "out of the INT range" in result.stderr
    assert_no_traceback(result.output)



@pytest.mark.slow
def test_a_failed_run_is_one_line_without_a_stack(make_sandbox, make_cli):
    """A run that fails for an explained reason (here Twilio rejects the token) exits 1 with one line
    naming the cause; Dagster's console log shows the step's error as `Class: message`, not its stack
    (the stack stays in the run's event log, for the UI)."""
    sb = make_sandbox(seed=1)
    cli = make_cli(sb, [channel("Demo")], name="rejected", env={"TWILIO_AUTH_TOKEN": "not-the-token"})
    create_execution(cli.db, 1, "Demo", "Hi", [(1, "+14155550100", None)])
    result = cli.run("send", "1", timeout=120)
    assert result.returncode == 1, result.describe()
    assert_no_traceback(result.output)
    line = [x for x in result.stdout.splitlines() if x.startswith("Send of execution 1 failed")]
    assert len(line) == 1 and "20003" in line[0], result.describe()
    assert "STEP_FAILURE" in result.stderr and "20003" in result.stderr, result.describe()
    assert sb.stats()["messages_outbound"] == 0

# ---- Twilio's answers ----------------------------------------------------------------------------

ACCOUNT = "AC" + "ab" * 16
TOKEN = "bad-input-token"


def _rfc2822(dt: datetime) -> str:
    return format_datetime(dt.astimezone(UTC), usegmt=False).replace("-0000", "+0000")


class FakeAccount:
    """A scripted Twilio account: creates answer per recipient, listings come from what was created."""

    def __init__(self):
        self.server = FakeTwilio()
        self.lock = threading.Lock()
        self.messages: dict[str, dict] = {}
        self.inbound: list[dict] = []
        self.posts: dict[str, int] = {}
        self.create_answers: dict[str, Answer] = {}
        path = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
        self.server.script("POST", path, self._create)
        self.server.script("GET", path, self._list)
        self.server.script("GET", f"/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json",
                           reply(200, {"incoming_phone_numbers": [{"phone_number": SENDER}]}))

    def message(self, to: str, body: str, **fields) -> dict:
        now = _rfc2822(datetime.now(UTC))
        msg = {"sid": "SM" + uuid.uuid4().hex, "to": to, "from": SENDER, "body": body, "status": "queued",
               "direction": "outbound-api", "date_created": now, "date_updated": now, "date_sent": None,
               "num_segments": "1", "error_code": None, "messaging_service_sid": None}
        msg.update(fields)
        return msg

    def _create(self, seen) -> Answer:
        form = {k: v[0] for k, v in seen.form.items()}
        to = form["To"]
        with self.lock:
            self.posts[to] = self.posts.get(to, 0) + 1
            answer = self.create_answers.get(to)
            if answer is None:
                msg = self.message(to, form.get("Body", ""))
                self.messages[msg["sid"]] = msg
                return reply(201, msg)
            if answer.status == 201 and isinstance(answer.json, dict) and answer.json.get("sid"):
                self.messages[answer.json["sid"]] = dict(answer.json, to=to)
            return answer

    def _list(self, seen) -> Answer:
        q = {k: v[0] for k, v in seen.query.items()}
        with self.lock:
            if "To" in q and q["To"] == SENDER:
                items = list(self.inbound)
            elif "To" in q:
                items = [m for m in self.messages.values() if m["to"] == q["To"]]
            else:
                items = [m for m in self.messages.values() if m["from"] == q.get("From")]
        return reply(200, {"messages": items, "next_page_uri": None, "page_size": 1000})

    def client(self) -> TwilioClient:
        url = self.server.url
        return TwilioClient(TwilioCredentials(ACCOUNT, TOKEN), endpoints=Endpoints(url, url, url),
                            retry=RetrySettings(3, 0.01, 0.05, 5), max_concurrency=4)

    def close(self):
        self.server.close()


@pytest.fixture
def account():
    acc = FakeAccount()
    yield acc
    acc.close()


HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>"
ANSWERS = {
    # To: (answer to its create, expected Outcome, fragment of the recorded reason or None)
    "+14155550201": (Answer(status=502, body=HTML, headers={"Content-Type": "text/html"}), "ambiguous", "HTTP 502"),
    "+14155550202": (Answer(status=400, body=HTML, headers={"Content-Type": "text/html"}), "refused", "HTTP 400"),
    "+14155550203": (Answer(status=201, body=b'{"sid": "SM12', headers={"Content-Type": "application/json"}),
                     "ambiguous", "not valid JSON"),
    "+14155550204": (reply(201, {"status": "queued", "to": "+14155550204"}), "ambiguous", "without a message sid"),
    "+14155550205": (reply(201, {"sid": "SM" + "5" * 32, "status": "teleported", "from": SENDER, "body": "Hi",
                                 "direction": "outbound-api", "num_segments": "1"}), "sent", None),
    "+14155550206": (reply(200, {"code": 20500, "message": "Internal Server Error", "status": 500}), "ambiguous",
                     "without a message sid"),
    "+14155550207": (reply(201, {"sid": "SM" + "7" * 32, "status": "queued", "from": SENDER, "body": "Hi",
                                 "direction": "outbound-api", "date_created": "yesterday",
                                 "date_updated": "31/02/2026 25:61", "num_segments": "many"}), "sent", None),
    "+14155550208": (twilio_error(400, 21211, "The 'To' number +14155550208 is not a valid phone number."),
                     "refused", "not a valid phone number"),
}


def test_odd_create_answers_are_recorded_per_recipient(db, account):
    chans = parse_channels({"channels": [channel("Odd SMS", max_concurrency=4)]})
    chan = chans.channels[0]
    numbers = list(ANSWERS) + [f"+1628555{i:04d}" for i in range(12)]
    create_execution(db, 20, "Odd SMS", "Hi", [(i + 1, n, None) for i, n in enumerate(numbers)])
    for to, (answer, _, _) in ANSWERS.items():
        account.create_answers[to] = answer
    log = ListLog()
    with account.client() as client:
        plan_execution(db, chan, 20, run_id="plan", log=log)
        summary = send_execution(db, client, chan, 20, run_id="send", log=log, settle_s=0.01, reconcile_rounds=2)
    res = commit_execution(db, chan, 20, run_id="commit", log=log)
    rows = {r["ToNumber"]: r for r in ledger(db, 20)}
    for to, (_, outcome, fragment) in ANSWERS.items():
        row = rows[to]
        assert row["Outcome"] == outcome, (to, row)
        if fragment:
            assert fragment in (row["Reason"] or ""), (to, row["Reason"])
    assert rows["+14155550208"]["ErrorCode"] == 21211
    assert rows["+14155550205"]["MessageSID"] == "SM" + "5" * 32
    assert rows["+14155550207"]["MessageSID"] == "SM" + "7" * 32 and rows["+14155550207"]["StatusAt"] is not None
    for n in numbers[len(ANSWERS):]:  # nobody else affected: one request, one SID
        assert rows[n]["Outcome"] == "sent" and account.posts[n] == 1, (n, rows[n])
    ambiguous = sum(1 for _, o, _ in ANSWERS.values() if o == "ambiguous")
    r = res.results
    assert_identities(r)
    assert (r["Unresolved"], r["SendFailed"], r["Sent"]) == (ambiguous, 2, len(numbers) - ambiguous - 2)
    assert res.status == "failed" and "unresolved" in res.status_reason
    assert summary.unresolved == ambiguous
    assert set(tracked_sids(db, 20)) == {rows[n]["MessageSID"] for n in rows if rows[n]["Outcome"] == "sent"}


def test_odd_listing_answers_lose_no_state_and_no_stop(db, account):
    """Statuses with an unknown name or an unreadable date, and a STOP whose date_sent is unreadable."""
    chans = parse_channels({"channels": [channel("Odd Sync", max_concurrency=4)]})
    chan = chans.channels[0]
    numbers = [f"+1628556{i:04d}" for i in range(6)]
    create_execution(db, 21, "Odd Sync", "Hi", [(i + 1, n, None) for i, n in enumerate(numbers)])
    log = ListLog()
    with account.client() as client:
        plan_execution(db, chan, 21, run_id="plan", log=log)
        send_execution(db, client, chan, 21, run_id="send", log=log, settle_s=0.01)
        commit_execution(db, chan, 21, run_id="commit", log=log)
        later = _rfc2822(datetime.now(UTC) + timedelta(seconds=5))
        by_to = {m["to"]: m for m in account.messages.values()}
        for n in numbers:
            by_to[n].update(status="delivered", date_sent=later, date_updated=later)
        by_to[numbers[0]].update(status="teleported")                        # a status Twilio may add one day
        by_to[numbers[1]].update(date_updated="not a date", date_sent="32 Foo")  # unreadable dates
        by_to[numbers[2]].update(status="undelivered", error_code=30003, date_updated="")
        account.inbound = [
            account.message(SENDER, "STOP", sid="SM" + "a" * 32, **{"from": numbers[3]},
                            direction="inbound", date_sent="garbage", date_created="also garbage",
                            date_updated="31/02/2026"),
            account.message(SENDER, "HELP", sid="SM" + "b" * 32, **{"from": numbers[4]},
                            direction="inbound", date_sent=None, date_created=later, date_updated=later),
        ]
        refresh_inbound(db, client, chan, log=log)
        parse_keywords(db, chan, log=log)
        fetch_statuses(db, client, chan, [21], log=log)
    load_states(db, log=log, execution_ids=[21])
    st = db.tables.states
    with db.connect() as conn:
        states = {(r[0], r[1]): r[2] for r in conn.execute(
            sa.select(st.c.RPContactID, st.c.FulfillmentState, st.c.EventName).where(st.c.ChannelExecutionID == 21))}
        suppressed = {r[0] for r in conn.execute(suppressed_numbers(db, chan))}
    for rid in (2, 4, 5, 6):
        assert (rid, "Delivered") in states, (rid, states)
    assert states[(3, "Undelivered")] == "30003"
    assert not any(k[0] == 1 and k[1] not in ("Queued",) for k in states), "an unknown status became a state"
    tracked = set(tracked_sids(db, 21).values())
    assert tracked == {1}, "only the message with the unknown status stays tracked"
    assert numbers[3] in suppressed, "a STOP with an unreadable date_sent was lost"
    assert (4, "Replied") in states and states[(4, "Replied")] == "STOP"
    assert (5, "Replied") in states and states[(5, "Replied")] == "HELP"
    wm = db.tables.watermarks
    with db.connect() as conn:
        watermark = conn.execute(sa.select(wm.c.LastDateSent).where(wm.c.Sender == SENDER)).scalar()
    assert watermark == to_naive_utc(parse_twilio_date(later)), "a stand-in date must not move the watermark"
