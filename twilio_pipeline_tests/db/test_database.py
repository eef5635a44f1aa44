"""The database layer on SQLite and on the real PostgreSQL and MariaDB servers: DDL, bulk loads, merges, staging, leases."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql
from sqlalchemy.schema import CreateIndex, CreateTable

from twilio_pipeline.db import Database, build_tables, utcnow
from twilio_pipeline.db.database import engine_options

CONTRACT_COLUMNS = {
    "SMS_ChannelExecutions": ["ChannelExecutionID", "ChannelName", "MessageBody", "MediaUrl", "Status",
                              "StatusReason", "CreatedAt", "SendAfter"],
    "OfferHistorySG": ["RPContactID", "ChannelExecutionID", "AddressKey", "Attributes"],
    "Twilio_MessageIDs": ["MessageID", "RPContactID", "ChannelExecutionID"],
    "TwilioSMS_Inbound": ["MessageSID", "FromNumber", "ToNumber", "MessagingServiceID", "Body", "Keyword", "DateSent"],
    "TwilioSMS_Suppression": ["PhoneNumber", "ActivityDate", "MessagingServiceID", "TwilioNumber", "Activity"],
    "OfferHistorySG_States": ["RPContactID", "ChannelExecutionID", "FulfillmentState", "EventName", "Timestamp"],
    "op_ChannelExecutionResults": ["ChannelExecutionID", "ResultName", "ResultValue", "UpdatedAt"],
}


def test_contract_tables_exist_with_their_columns_and_create_is_idempotent(db):
    db._created = False
    db.create_all()  # second time: no error
    insp = sa.inspect(db.engine)
    names = set(insp.get_table_names())
    for table, columns in CONTRACT_COLUMNS.items():
        full = db.prefix + table
        assert full in names
        have = [c["name"] for c in insp.get_columns(full)]
        assert set(columns) <= set(have), (table, have)



def test_tables_of_an_earlier_release_get_the_columns_and_indexes_they_lack(db):
    """An upgrade keeps the data: opening the database adds the nullable columns and the indexes that a
    table created by an earlier release lacks (here the ledger without StatusAt and its index)."""
    led = db.tables.ledger
    preparer = db.engine.dialect.identifier_preparer
    with db.begin() as conn:
        conn.execute(led.insert().values(ChannelExecutionID=1, RPContactID=7, IsSeed=False, ToNumber="+14155550100",
                                         Outcome="planned", UpdatedAt=utcnow()))
        for index in list(led.indexes):
            conn.execute(sa.schema.DropIndex(index))
        conn.execute(sa.text(f"ALTER TABLE {preparer.format_table(led)} DROP COLUMN {preparer.quote('StatusAt')}"))
    again = Database(str(db.engine.url.render_as_string(hide_password=False)), prefix=db.prefix)
    try:
        assert f"column {led.fullname}.StatusAt" in again.upgraded
        assert {f"index {i.name}" for i in led.indexes} <= set(again.upgraded)
        insp = sa.inspect(again.engine)
        assert "StatusAt" in {c["name"] for c in insp.get_columns(led.name)}
        assert {i.name for i in led.indexes} <= {i["name"] for i in insp.get_indexes(led.name)}
        with again.connect() as conn:
            assert conn.execute(sa.select(led.c.RPContactID, led.c.StatusAt)).all() == [(7, None)]
        assert Database(str(again.engine.url.render_as_string(hide_password=False)), prefix=db.prefix).upgraded == []
    finally:
        again.dispose()


def test_a_missing_column_that_cannot_be_added_is_one_clear_error(tmp_path):
    from twilio_pipeline.db.database import SchemaOutdated

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Database(url)
    ex = old.tables.executions
    with old.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE "{ex.name}"'))
        conn.execute(sa.text(f'CREATE TABLE "{ex.name}" ("ChannelExecutionID" INTEGER PRIMARY KEY)'))
    old.dispose()
    with pytest.raises(SchemaOutdated, match="has no column ChannelName .*init-db"):
        Database(url)

def test_bulk_insert_then_merge_inserts_each_row_once(db):
    t = db.tables.suppression
    now = utcnow().replace(microsecond=0)
    rows = [dict(PhoneNumber=f"+1415555{i:04d}", ActivityDate=now, MessagingServiceID=None,
                 TwilioNumber="+15005550006", Activity="STOP") for i in range(5000)]
    cols = [sa.Column(c.name, c.type) for c in t.columns]
    for _ in range(2):  # the second merge of the same rows adds nothing
        with db.staging_table("sup", cols) as stg, db.begin() as conn:
            assert db.bulk_insert(conn, stg, rows) == 5000
            db.insert_missing(conn, t, sa.select(stg), match=["PhoneNumber", "ActivityDate",
                                                                 "MessagingServiceID", "TwilioNumber", "Activity"])
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() == 5000
        # NULL MessagingServiceID matched NULL-safely: no duplicates.
        assert conn.execute(sa.select(sa.func.count(sa.distinct(t.c.PhoneNumber))).select_from(t)).scalar() == 5000


def test_bulk_insert_keeps_awkward_text_intact(db):
    t = db.tables.inbound
    body = "tab\there\nnew line \\N back\\slash ' \" 😀 ünï"
    with db.begin() as conn:
        db.bulk_insert(conn, t, [dict(MessageSID="SM1", FromNumber="+1", ToNumber=None, MessagingServiceID=None,
                                      Body=body, Keyword=None, DateSent=utcnow(), ParsedAt=None, FetchedAt=None),
                                 dict(MessageSID="SM2", FromNumber="", ToNumber=None, MessagingServiceID=None,
                                      Body="", Keyword=None, DateSent=None, ParsedAt=None, FetchedAt=None)])
    with db.connect() as conn:
        rows = dict(conn.execute(sa.select(t.c.MessageSID, t.c.Body)).all())
        empty = conn.execute(sa.select(t.c.FromNumber, t.c.ToNumber).where(t.c.MessageSID == "SM2")).one()
    assert rows["SM1"] == body
    assert rows["SM2"] == ""  # empty string stays empty, not NULL
    assert empty == ("", None)


def test_staging_table_is_dropped_after_success_and_after_failure(db):
    cols = [sa.Column("x", sa.Integer)]
    with db.staging_table("ok", cols) as stg:
        assert stg.name in sa.inspect(db.engine).get_table_names()
    with pytest.raises(RuntimeError), db.staging_table("fail", cols) as stg2:
        raise RuntimeError("boom")
    names = sa.inspect(db.engine).get_table_names()
    assert stg.name not in names and stg2.name not in names
    assert db.staging_tables() == []


def test_orphan_staging_of_a_killed_process_is_dropped(db):
    reg = db.tables.staging_registry
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = sa.Table(f"{db.prefix}stg_orphan_x", sa.MetaData(), sa.Column("x", sa.Integer))
    live = sa.Table(f"{db.prefix}stg_live_x", sa.MetaData(), sa.Column("x", sa.Integer))
    with db.begin() as conn:
        for table, pid in ((orphan, dead.pid), (live, os.getpid())):
            conn.execute(reg.insert().values(TableName=table.name, Host=socket.gethostname(), Pid=pid,
                                             CreatedAt=utcnow()))
            table.create(conn)
    assert db.drop_orphan_staging() == [orphan.name]
    names = sa.inspect(db.engine).get_table_names()
    assert orphan.name not in names and live.name in names


def test_lease_is_exclusive_and_a_dead_or_expired_holder_is_replaced(db):
    assert db.acquire_lease("send:1", "run-a") is None
    holder = db.acquire_lease("send:1", "run-b")
    assert holder is not None and holder.owner == "run-a"
    assert db.acquire_lease("send:1", "run-a") is None  # re-entrant for its owner
    db.release_lease("send:1", "run-a")
    assert db.acquire_lease("send:1", "run-b") is None
    # expired: on another host (a live holder on this host is never taken over: see test_lease.py)
    leases = db.tables.leases
    with db.begin() as conn:
        conn.execute(leases.update().values(Host="another-host", ExpiresAt=utcnow() - timedelta(seconds=1)))
    assert db.acquire_lease("send:1", "run-c") is None
    # dead process on this host
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with db.begin() as conn:
        conn.execute(leases.update().values(Pid=dead.pid, ExpiresAt=utcnow() + timedelta(hours=1)))
    assert db.acquire_lease("send:1", "run-d") is None
    assert db.renew_lease("send:1", "run-d") and not db.renew_lease("send:1", "run-c")


def test_watermark_never_moves_back(db):
    t0 = utcnow().replace(microsecond=0)
    with db.begin() as conn:
        db.set_watermark(conn, "+15005550006", t0)
        db.set_watermark(conn, "+15005550006", t0 - timedelta(days=1))
        assert db.get_watermark(conn, "+15005550006") == t0
        db.set_watermark(conn, "+15005550006", t0 + timedelta(seconds=5))
        assert db.get_watermark(conn, "+15005550006") == t0 + timedelta(seconds=5)


def test_results_are_replaced_not_duplicated(db):
    with db.begin() as conn:
        db.write_results(conn, 7, {"Sent": 3, "Status:delivered": 2})
        db.write_results(conn, 7, {"Status:sent": 1}, replace_prefixes=["Status:"])
        db.write_results(conn, 7, {"Sent": 4})
    assert db.read_results(7) == {"Sent": 4, "Status:sent": 1}


def test_every_table_and_merge_compiles_on_sql_server():
    tables = build_tables(schema="dbo", prefix="x_")
    dialect = mssql.dialect()
    for table in tables.metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        assert "NVARCHAR" in ddl or "BIGINT" in ddl or "INTEGER" in ddl
        for index in table.indexes:
            str(CreateIndex(index).compile(dialect=dialect))
    db = Database.__new__(Database)
    db.tables, db.schema, db.prefix = tables, "dbo", "x_"
    src = sa.select(tables.suppression).subquery("src")
    exists = sa.select(sa.literal(1)).where(tables.suppression.c.PhoneNumber == src.c.PhoneNumber)
    stmt = tables.suppression.insert().from_select([c.name for c in src.columns], sa.select(src).where(~exists.exists()))
    sql = str(stmt.compile(dialect=dialect))
    assert "dbo.[x_TwilioSMS_Suppression]" in sql and "NOT (EXISTS" in sql
    assert engine_options("mssql")["fast_executemany"] is True


def test_table_names_are_quoted_not_pasted():
    tables = build_tables(prefix="weird_")
    sql = str(sa.select(tables.states).compile(dialect=mssql.dialect()))
    assert "[weird_OfferHistorySG_States]" in sql


AWKWARD_TEXTS = ["plain", "", "tab\there", "line\nbreak", "cr\rreturn", "back\\slash", "\\N", "\\\\N", "NULL",
                 "emoji 😀 and ünïcödé", "100% %s", "%(x)s {0}", "'quote\" double", "a,b;c|d", " lead and trail ", "\t\n\r\\", "x" * 5000]


def test_bulk_insert_keeps_every_value_exactly(db):
    """Whatever a reply body holds (tabs, newlines, backslashes, the text \\N, emoji) comes back exactly
    as inserted, NULL stays NULL and the empty string stays empty (PostgreSQL COPY; executemany on SQLite)."""
    from datetime import datetime

    ib = db.tables.inbound
    naive = datetime(2026, 3, 4, 5, 6, 7, 890123)
    rows = [{"MessageSID": f"SM{i:032x}", "FromNumber": "+14155550100", "ToNumber": None, "MessagingServiceID": None,
             "Body": body, "Keyword": None if i % 2 else body[:50], "DateSent": naive if i % 3 else None,
             "ParsedAt": None, "FetchedAt": naive.replace(microsecond=0),
             "Account": None if i % 2 else "ACME"}
            for i, body in enumerate(AWKWARD_TEXTS + [None])]
    with db.begin() as conn:
        assert db.bulk_insert(conn, ib, rows) == len(rows)
    with db.connect() as conn:
        got = {r["MessageSID"]: dict(r) for r in conn.execute(sa.select(ib)).mappings()}
    for row in rows:
        assert got[row["MessageSID"]] == row, (row["Body"], got[row["MessageSID"]])


def test_keys_differing_only_in_case_or_accent_stay_apart(db):
    """Two different SIDs, numbers or keywords are never one key: MariaDB's default collation is case- and
    accent-insensitive, so its tables compare text as binary (the test database keeps the server default)."""
    ib, states = db.tables.inbound, db.tables.states
    sids = ["SMabc", "SMABC", "SMábc"]
    with db.begin() as conn:
        db.bulk_insert(conn, ib, [{"MessageSID": s, "Keyword": s[2:]} for s in sids])
        inserted = db.insert_missing(conn, states, sa.select(
            sa.literal(1, sa.BigInteger).label("RPContactID"), sa.literal(5, sa.Integer).label("ChannelExecutionID"),
            ib.c.Keyword.label("FulfillmentState"), ib.c.Keyword.label("EventName"),
            ib.c.DateSent.label("Timestamp")),
            match=("ChannelExecutionID", "RPContactID", "FulfillmentState", "EventName"))
    assert inserted == 3
    with db.connect() as conn:
        assert sorted(conn.execute(sa.select(ib.c.MessageSID)).scalars()) == sorted(sids)
        assert conn.execute(sa.select(sa.func.count()).select_from(ib).where(ib.c.Keyword == "abc")).scalar() == 1


def test_the_database_clock_is_utc_with_microseconds(db):
    """Lease expiry and server defaults are naive UTC, whatever the server's time zone."""
    with db.connect() as conn:
        first = conn.execute(sa.select(db.clock())).scalar()
        later = conn.execute(sa.select(db.clock(30))).scalar()
    assert abs(first - utcnow()) < timedelta(seconds=5)
    assert timedelta(seconds=29) < later - first < timedelta(seconds=31)
    ex = db.tables.executions
    with db.begin() as conn:
        conn.execute(ex.insert().values(ChannelExecutionID=1, ChannelName="c"))
        created = conn.execute(sa.select(ex.c.CreatedAt)).scalar()
    assert abs(created - utcnow()) < timedelta(seconds=5)


def test_a_bulk_insert_of_a_duplicate_key_fails_and_stores_nothing(db):
    """The bulk path is a plain INSERT on every backend (MariaDB's too): a duplicate SID is an error that
    rolls the batch back, never a silently skipped row."""
    ib = db.tables.inbound
    rows = [{"MessageSID": f"SM{i}", "Body": "x"} for i in range(3)] + [{"MessageSID": "SM1", "Body": "again"}]
    # COPY raises the driver's own IntegrityError
    with pytest.raises((sa.exc.IntegrityError, db.engine.dialect.dbapi.IntegrityError)), db.begin() as conn:
        db.bulk_insert(conn, ib, rows)
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ib)).scalar() == 0


def test_two_runs_taking_a_free_lease_at_once_one_gets_it_and_neither_fails(db):
    """On MariaDB both takers lock the same gap and InnoDB kills one as a deadlock victim: that run must
    read again and see the holder, not fail the send."""
    import threading

    for attempt in range(20):
        key, barrier, tokens, errors = f"outbound:{attempt}", threading.Barrier(2), [], []

        def take(owner, key=key, barrier=barrier, tokens=tokens, errors=errors):
            barrier.wait()
            try:
                tokens.append(db.take_lease(key, owner, 60)[0])
            except Exception as exc:  # noqa: BLE001 - the assertion shows it
                errors.append(exc)

        threads = [threading.Thread(target=take, args=(f"run-{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and sorted(t is None for t in tokens) == [False, True], (errors, tokens)
