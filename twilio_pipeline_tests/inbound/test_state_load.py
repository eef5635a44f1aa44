"""How a state load drains TwilioSMS_PendingStates: all of it at once when the batch is the whole table,
only the batch when the load is scoped to some executions, on every backend."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.inbound import load_states
from twilio_pipeline.logs import ListLog
from twilio_pipeline_tests.polling import wait_until

T0 = datetime(2026, 2, 1, 9, 0, 0, 123456)


def observe(db: Database, eid: int, contacts: range, *, state: str = "Delivered") -> None:
    """Tracked SIDs of execution `eid` and a terminal observation of each (twice for the first contact),
    as the status fetch leaves them."""
    t = db.tables
    sid = {c: f"SM{eid:08x}{c:024x}" for c in contacts}
    now = utcnow()
    with db.begin() as conn:
        db.bulk_insert(conn, t.message_ids, [{"MessageID": sid[c], "RPContactID": c, "ChannelExecutionID": eid}
                                             for c in contacts])
        rows = [{"ChannelExecutionID": eid, "RPContactID": c, "FulfillmentState": state,
                 "EventName": "30003" if state == "Undelivered" else None,
                 "Timestamp": T0 + timedelta(seconds=c, microseconds=c), "MessageID": sid[c], "Terminal": True,
                 "ObservedAt": now} for c in contacts]
        db.bulk_insert(conn, t.pending_states, rows + rows[:1])


def stored(db: Database) -> list[tuple]:
    st = db.tables.states
    with db.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(
            sa.select(st.c.ChannelExecutionID, st.c.RPContactID, st.c.FulfillmentState, st.c.EventName,
                      st.c.Timestamp)))


def pending(db: Database) -> list[tuple]:
    p = db.tables.pending_states
    with db.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(p.c.ChannelExecutionID, p.c.RPContactID)))


def tracked(db: Database) -> set[int]:
    ids_t = db.tables.message_ids
    with db.connect() as conn:
        return set(conn.execute(sa.select(ids_t.c.ChannelExecutionID).distinct()).scalars())


def expected(eid: int, contacts: range, state: str = "Delivered") -> list[tuple]:
    return [(eid, c, state, "30003" if state == "Undelivered" else None, T0 + timedelta(seconds=c, microseconds=c))
            for c in contacts]


def test_a_scoped_load_keeps_the_other_executions_pending_rows_and_a_full_drain_empties_the_table(db):
    observe(db, 1, range(1, 41))
    observe(db, 2, range(1, 31), state="Undelivered")
    observe(db, 3, range(5, 16))
    summary = load_states(db, log=ListLog(), execution_ids=[1, 3])
    assert (summary.pending, summary.delivery_states, summary.retired) == (41 + 12, 40 + 11, 40 + 11)
    assert pending(db) == sorted([(2, c) for c in range(1, 31)] + [(2, 1)])
    assert tracked(db) == {2}
    assert stored(db) == sorted(expected(1, range(1, 41)) + expected(3, range(5, 16)))

    summary = load_states(db, log=ListLog())  # the whole table: drained at once
    assert (summary.pending, summary.delivery_states, summary.retired, summary.executions) == (31, 30, 30, [2])
    assert pending(db) == [] and tracked(db) == set()
    assert stored(db) == sorted(expected(1, range(1, 41)) + expected(3, range(5, 16))
                                + expected(2, range(1, 31), "Undelivered"))
    assert db.read_results(2)["Status:undelivered"] == 30


def test_a_load_scoped_to_every_pending_execution_drains_the_table_and_the_next_batch_loads_too(db):
    observe(db, 4, range(1, 21))
    observe(db, 5, range(1, 11))
    assert load_states(db, log=ListLog(), execution_ids=[4, 5, 6]).delivery_states == 30
    assert pending(db) == [] and tracked(db) == set()
    # Rows written after a drain (on SQLite the emptied table may hand out PendingIDs again) load as usual.
    observe(db, 6, range(1, 8))
    summary = load_states(db, log=ListLog())
    assert (summary.pending, summary.delivery_states, summary.retired) == (8, 7, 7)
    assert pending(db) == [] and tracked(db) == set()
    assert stored(db) == sorted(expected(4, range(1, 21)) + expected(5, range(1, 11)) + expected(6, range(1, 8)))
    assert load_states(db, log=ListLog()).pending == 0


@pytest.mark.slow
def test_a_postgres_role_without_truncate_still_drains_the_whole_table(postgres_url):
    """A deployment's role may hold SELECT, INSERT, UPDATE and DELETE but not TRUNCATE: the full drain
    then deletes the rows in the same transaction, and the load still succeeds exactly."""
    owner = Database(postgres_url, prefix=f"t{uuid.uuid4().hex[:6]}_")
    role = f"tp_limited_{uuid.uuid4().hex[:8]}"
    with owner.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        for table in owner.tables.metadata.sorted_tables:
            conn.exec_driver_sql(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {owner._quoted_name(table)} TO "{role}"')
        conn.exec_driver_sql(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    limited = Database(sa.engine.make_url(postgres_url).set(username=role).render_as_string(hide_password=False),
                       prefix=owner.prefix, create=False)
    try:
        observe(limited, 7, range(1, 26))
        summary = load_states(limited, log=ListLog())
        assert (summary.pending, summary.delivery_states, summary.retired) == (26, 25, 25)
        assert pending(limited) == [] and tracked(limited) == set()
        assert stored(owner) == expected(7, range(1, 26))
    finally:
        limited.dispose()
        with owner.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
        owner.dispose()


def test_replies_with_and_without_keyword_or_moment_are_stored_once_across_loads(db):
    """A reply's key holds EventName and Timestamp, which may be NULL: a NULL matches a NULL, so loading
    the same replies again (re-observed after a crash) adds nothing."""
    p = db.tables.pending_states
    replies = [{"ChannelExecutionID": 8, "RPContactID": c, "FulfillmentState": "Replied",
                "EventName": None if c % 2 else "STOP", "Timestamp": None if c % 3 == 0 else T0 + timedelta(seconds=c),
                "ObservedAt": utcnow()} for c in range(1, 13)]
    for _ in range(2):
        with db.begin() as conn:
            db.bulk_insert(conn, p, replies + replies[:4])
        load_states(db, log=ListLog())
    assert pending(db) == []
    assert stored(db) == sorted((8, r["RPContactID"], "Replied", r["EventName"], r["Timestamp"]) for r in replies)


# ---- MariaDB/MySQL: TRUNCATE commits the load first, then empties the pending table ---------------
def statements(db: Database) -> list[str]:
    """Every statement `db` sends from now on (its first words), to see which drain ran."""
    seen: list[str] = []
    sa.event.listen(db.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *a: seen.append(" ".join(statement.split()[:3])))
    return seen


@pytest.mark.slow
def test_a_mariadb_whole_table_drain_truncates_and_a_user_without_drop_deletes_instead(mysql_url):
    """MariaDB empties the pending table with TRUNCATE (which needs the DROP privilege). A deployment's
    user may hold SELECT, INSERT, UPDATE and DELETE only: the drain then deletes the rows, and the load
    is exact either way."""
    owner = Database(mysql_url, prefix=f"t{uuid.uuid4().hex[:6]}_")
    user = f"tp_limited_{uuid.uuid4().hex[:8]}"
    url = sa.engine.make_url(mysql_url)
    hosts = ("localhost", "127.0.0.1", "%%")  # "%" (any host), escaped for the driver's paramstyle
    with owner.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for host in hosts:
            conn.exec_driver_sql(f"CREATE USER '{user}'@'{host}'")
            conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{url.database}`.* TO '{user}'@'{host}'")
    limited = Database(url.set(username=user).render_as_string(hide_password=False), prefix=owner.prefix,
                       create=False)
    try:
        seen = statements(owner)
        observe(owner, 11, range(1, 31))
        assert load_states(owner, log=ListLog()).delivery_states == 30
        assert any(s.startswith("TRUNCATE TABLE") and "PendingStates" in s for s in seen)

        seen = statements(limited)
        observe(limited, 12, range(1, 26))
        summary = load_states(limited, log=ListLog())
        assert (summary.pending, summary.delivery_states, summary.retired) == (26, 25, 25)
        assert any(s.startswith("DELETE FROM") and "PendingStates" in s for s in seen)
        assert pending(owner) == [] and tracked(owner) == set()
        assert stored(owner) == sorted(expected(11, range(1, 31)) + expected(12, range(1, 26)))
    finally:
        limited.dispose()
        with owner.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for host in hosts:
                conn.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'{host}'")
        owner.dispose()


@pytest.mark.slow
def test_a_mariadb_reader_holding_the_pending_table_delays_the_drain_by_the_lock_wait_only(mysql_url):
    """A session in an open transaction that has read the pending table (a sensor counting eligible
    executions, a DBA's console) holds it against TRUNCATE: the load waits the short lock wait, then
    deletes the rows instead, and stores everything once."""
    db = Database(mysql_url, prefix=f"t{uuid.uuid4().hex[:6]}_")
    try:
        observe(db, 13, range(1, 21))
        with db.engine.connect() as reader:
            reader.execute(sa.select(sa.func.count()).select_from(db.tables.pending_states)).scalar()
            started = time.monotonic()
            summary = load_states(db, log=ListLog())
            waited = time.monotonic() - started
            reader.rollback()
        assert (summary.delivery_states, summary.retired) == (20, 20)
        assert waited < 15, waited
        assert pending(db) == [] and tracked(db) == set()
        assert stored(db) == expected(13, range(1, 21))
    finally:
        db.dispose()


def draining_session(conn, table: str) -> int | None:
    """The id of a session of this database waiting to empty `table` (its TRUNCATE, or the DELETE after a
    TRUNCATE that waited past its lock wait), if any. (PROCESSLIST shows every session of the server: the
    database and the table's own prefixed name keep other tests' loads out.)"""
    return conn.execute(sa.text(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID() "
        "AND (INFO LIKE :truncate OR INFO LIKE :delete)"),
        {"truncate": f"TRUNCATE TABLE `{table}`%", "delete": f"DELETE FROM `{table}`%"}).scalar()


LOAD_IN_CHILD = """
import sys
from twilio_pipeline.db import Database
from twilio_pipeline.inbound import load_states
from twilio_pipeline.logs import ListLog
load_states(Database(sys.argv[1], prefix=sys.argv[2], create=False), log=ListLog())
"""


@pytest.mark.slow
def test_a_mariadb_load_killed_between_its_commit_and_its_truncate_is_loaded_again_adding_nothing(mysql_url):
    """TRUNCATE commits the load's transaction before it empties the table. A load killed (SIGKILL) in
    between leaves its batch pending with the states stored, the SIDs retired and the results written:
    the next load stores none of it twice and leaves the results as they were."""
    db = Database(mysql_url, prefix=f"t{uuid.uuid4().hex[:6]}_")
    try:
        observe(db, 14, range(1, 41), state="Undelivered")
        # The reader holds the pending table (the child's TRUNCATE waits for it) and share-locks its rows
        # (were the TRUNCATE to give up first on a slow machine, the DELETE after it waits for them).
        with db.engine.connect() as reader:
            reader.execute(sa.select(db.tables.pending_states.c.PendingID).with_for_update(read=True)).all()
            child = subprocess.Popen([sys.executable, "-c", LOAD_IN_CHILD, mysql_url, db.prefix])
            try:
                table = db.tables.pending_states.name
                session = wait_until(lambda: draining_session(reader, table), timeout=60, what="the child's drain",
                                     alive=lambda: child.poll() is None)
                # The process dies and its session with it (the server would otherwise finish the
                # statement on its own once the table is free).
                child.kill()
                reader.exec_driver_sql(f"KILL CONNECTION {int(session)}")
            finally:
                child.wait(timeout=30)
            reader.rollback()
        assert child.returncode == -signal.SIGKILL
        assert len(pending(db)) == 41 and tracked(db) == set()  # committed, not drained
        results = db.read_results(14)
        assert results["Status:undelivered"] == 40

        summary = load_states(db, log=ListLog())
        assert (summary.pending, summary.delivery_states, summary.retired) == (41, 0, 0)
        assert pending(db) == []
        assert stored(db) == expected(14, range(1, 41), "Undelivered")
        assert db.read_results(14) == results
    finally:
        db.dispose()
