"""MariaDB/MySQL bulk loads: LOAD DATA LOCAL INFILE where the server and the connection allow it, the
multi-row INSERTs otherwise; both store exactly the rows given, and both fail the same way on bad rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from twilio_pipeline.db import Database

pytestmark = pytest.mark.slow

TEXTS = ["plain", "", "tab\there", "line\nbreak", "cr\rreturn", "back\\slash", "\\N", "\\\\N", "NULL", "\\0",
         "nul\x00inside", "emoji 😀🎉 and ünïcödé 中文", "'quote\" double", "%s %(x)s {0}", " lead and trail ",
         "\t\n\r\\", "ends with backslash\\", "x" * 5000]
MOMENT = datetime(2026, 3, 4, 5, 6, 7, 890123)


@pytest.fixture(params=["load_data", "insert"])
def mysql_db(request, mysql_url):
    """A database on the MariaDB server through each bulk path: the default connection (LOAD DATA LOCAL),
    and one whose URL turns local_infile off (the multi-row INSERTs)."""
    url = mysql_url if request.param == "load_data" else without_local_infile(mysql_url)
    database = Database(url, prefix=f"t{uuid.uuid4().hex[:6]}_")
    database.path = request.param
    yield database
    database.dispose()


def without_local_infile(url: str) -> str:
    """The URL with `local_infile=0` added to whatever query it has (`?charset=utf8mb4` in CI)."""
    return sa.make_url(url).update_query_dict({"local_infile": "0"}).render_as_string(hide_password=False)


def inbound_rows() -> list[dict]:
    rows = []
    for i, body in enumerate([*TEXTS, None]):
        rows.append({"MessageSID": f"SM{i:032x}", "FromNumber": "+14155550100" if i % 2 else None, "ToNumber": None,
                     "MessagingServiceID": None, "Body": body, "Keyword": None if i % 3 else (body or "")[:50],
                     "DateSent": MOMENT + timedelta(microseconds=i) if i % 4 else None,
                     "ParsedAt": MOMENT.replace(microsecond=0), "FetchedAt": None, "Account": "ACME" if i % 2 else None})
    return rows


def read_all(db: Database, table: sa.Table, key: str) -> dict:
    with db.connect() as conn:
        return {r[key]: dict(r) for r in conn.execute(sa.select(table)).mappings()}


def test_both_paths_store_every_value_exactly(mysql_db):
    """Tabs, newlines, backslashes, NUL, the texts \\N and NULL, emoji (utf8mb4), NULLs and microseconds
    come back as written, through LOAD DATA and through the INSERT fallback alike."""
    ib = mysql_db.tables.inbound
    rows = inbound_rows()
    with mysql_db.begin() as conn:
        assert mysql_db.bulk_insert(conn, ib, rows) == len(rows)
    assert mysql_db._load_data is (mysql_db.path == "load_data")
    got = read_all(mysql_db, ib, "MessageSID")
    for row in rows:
        assert got[row["MessageSID"]] == row, (row["Body"], got[row["MessageSID"]]["Body"])


def test_both_paths_store_pending_states_with_booleans_and_aware_datetimes_as_naive_utc(mysql_db):
    p = mysql_db.tables.pending_states
    plus2 = timezone(timedelta(hours=2))
    rows = [{"ChannelExecutionID": 3, "RPContactID": 10**12 + i, "FulfillmentState": "Delivered",
             "EventName": None if i % 2 else "30003 😀", "Timestamp": (MOMENT + timedelta(microseconds=i)).replace(
                 tzinfo=plus2 if i % 3 else UTC),
             "MessageID": f"SM{i:032x}", "Terminal": bool(i % 2), "ObservedAt": MOMENT} for i in range(2000)]
    with mysql_db.begin() as conn:
        assert mysql_db.bulk_insert(conn, p, rows) == len(rows)
    got = read_all(mysql_db, p, "RPContactID")
    for row in rows:
        stored = got[row["RPContactID"]]
        assert {k: stored[k] for k in row} == {**row, "Timestamp": row["Timestamp"].astimezone(UTC).replace(tzinfo=None)}


def test_a_load_of_several_chunks_stores_every_row_once_and_a_bad_row_in_a_later_chunk_stores_nothing(
        mysql_db, monkeypatch):
    """LOAD DATA goes in chunks (the next one encoded while the server loads the last): all of them land,
    and a duplicate in the last chunk rolls back the chunks loaded before it."""
    from twilio_pipeline.db import bulk

    monkeypatch.setattr(bulk, "LOAD_CHUNK_ROWS", 300)
    ib = mysql_db.tables.inbound
    rows = [{"MessageSID": f"SM{i:032x}", "Body": f"body {i}\t😀", "DateSent": MOMENT + timedelta(microseconds=i)}
            for i in range(1000)]
    with pytest.raises(sa.exc.IntegrityError), mysql_db.begin() as conn:
        mysql_db.bulk_insert(conn, ib, [*rows, rows[5]])
    with mysql_db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ib)).scalar() == 0
    with mysql_db.begin() as conn:
        assert mysql_db.bulk_insert(conn, ib, rows) == len(rows)
    got = read_all(mysql_db, ib, "MessageSID")
    assert [{k: got[r["MessageSID"]][k] for k in r} for r in rows] == rows


def test_a_duplicate_key_or_a_value_too_long_fails_on_both_paths_and_stores_nothing(mysql_db):
    """LOAD DATA LOCAL would skip a duplicate or cut a long value with only a warning: the bulk path
    turns that into the error a plain INSERT gives, and the transaction stores nothing."""
    ib = mysql_db.tables.inbound
    duplicate = [{"MessageSID": f"SM{i}", "Body": "x"} for i in range(3)] + [{"MessageSID": "SM1", "Body": "again"}]
    too_long = [{"MessageSID": "SM9", "Keyword": "k" * 51}]
    for rows, error in ((duplicate, sa.exc.IntegrityError), (too_long, sa.exc.DataError)):
        with pytest.raises(error), mysql_db.begin() as conn:
            mysql_db.bulk_insert(conn, ib, rows)
        with mysql_db.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(ib)).scalar() == 0


def test_a_server_asking_for_a_file_outside_a_bulk_load_gets_nothing(mysql_url):
    """The connections may LOAD DATA LOCAL, but the client sends a file only for the bulk path's own
    statement: any other request for a local file is refused."""
    db = Database(mysql_url, prefix=f"t{uuid.uuid4().hex[:6]}_")
    raw = db.engine.raw_connection()
    try:
        with pytest.raises(RuntimeError, match="local_infile option is false"), raw.cursor() as cur:
            cur.execute(f"LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE {db._quoted_name(db.tables.inbound)} "
                        "(MessageSID)")
    finally:
        raw.invalidate()  # the refusal leaves the protocol mid-exchange: this connection is not reused
        raw.close()
    ib = db.tables.inbound
    try:
        with db.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(ib)).scalar() == 0
    finally:
        db.dispose()


def test_a_server_asking_for_another_file_during_a_bulk_load_gets_nothing(mysql_url, tmp_path):
    """During the bulk path's own LOAD DATA the client sends the file that statement names and no other: a
    server that asks for another client file (here the statement names one the load did not write, as a
    hostile server would answer) is refused, nothing is sent or stored, and the load fails."""
    from twilio_pipeline.db.bulk import ForeignFileRequested, _load_file

    ours = tmp_path / "ours.tsv"
    ours.write_text("SM1\n")
    secret = tmp_path / "secret.tsv"
    secret.write_text("SMsecret\n")
    db = Database(mysql_url, prefix=f"t{uuid.uuid4().hex[:6]}_")
    ib = db.tables.inbound
    raw = db.engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        sql = f"LOAD DATA LOCAL INFILE {dbapi.escape(str(secret))} INTO TABLE {db._quoted_name(ib)} (MessageSID)"
        with pytest.raises(ForeignFileRequested, match="secret.tsv"):
            _load_file(dbapi, str(ours), sql, 1, first=True)
        raw.rollback()
    finally:
        raw.invalidate()
        raw.close()
    try:
        with db.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(ib)).scalar() == 0
    finally:
        db.dispose()


def test_a_load_data_the_server_refuses_falls_back_to_inserts_in_the_same_transaction(mysql_url):
    """The server answers LOAD DATA LOCAL with an error (4166 on MariaDB 10.11) when the connection did not
    ask for LOCAL files (forced here: the URL turns local_infile off, and the Database is told LOCAL works): the rows are
    INSERTed instead, in the same transaction, and the next loads go straight to the INSERTs."""
    db = Database(without_local_infile(mysql_url), prefix=f"t{uuid.uuid4().hex[:6]}_")
    try:
        db._load_data = True
        ib = db.tables.inbound
        rows = inbound_rows()
        with db.begin() as conn:
            conn.execute(ib.insert().values(MessageSID="SMfirst", Body="before"))
            assert db.bulk_insert(conn, ib, rows) == len(rows)
        assert db._load_data is False
        got = read_all(db, ib, "MessageSID")
        assert got.pop("SMfirst")["Body"] == "before"
        assert got == {r["MessageSID"]: r for r in rows}
    finally:
        db.dispose()


def test_without_a_writable_temporary_folder_the_rows_are_inserted(mysql_db, monkeypatch, tmp_path):
    """LOAD DATA needs a temporary file: where none can be written, the INSERTs store the same rows."""
    import tempfile

    locked = tmp_path / "no-write"
    locked.mkdir(mode=0o500)
    monkeypatch.setattr(tempfile, "tempdir", str(locked / "missing"))
    ib = mysql_db.tables.inbound
    rows = inbound_rows()
    with mysql_db.begin() as conn:
        assert mysql_db.bulk_insert(conn, ib, rows) == len(rows)
    got = read_all(mysql_db, ib, "MessageSID")
    assert got == {r["MessageSID"]: r for r in rows}
