"""Bulk loads at each database's speed: rows encoded column-wise in Python, sent in one stream.

* PostgreSQL: COPY ... FROM STDIN in the text format (psycopg2's copy_expert);
* MariaDB/MySQL (PyMySQL): LOAD DATA LOCAL INFILE of a temporary tab-separated file when the server and
  the connection allow it (200,000 state rows: ~0.9 s), else multi-row INSERTs of a few MB, the values
  escaped by the connection (~2.0 s);
* SQLite: the driver's own executemany with values the driver stores as they are (SQLAlchemy's
  per-value bind processing costs more than the insert);
* anything else (SQL Server's fast_executemany): SQLAlchemy's executemany.

Encoding is per column, not per value: a million-row load encodes millions of values, so each column
takes the fast path its SQL type implies (one `map` in C) when every value has the expected type, and
the general per-value encoder only for the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import chain, repeat
from operator import attrgetter

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from twilio_pipeline.dates import to_naive_utc

COPY_CHUNK_ROWS = 50_000  # rows encoded and sent at a time (~5 MB of COPY text for 8 columns)
_PG_SPECIAL = re.compile(r"[\\\t\n\r]")
_PG_CHARS = "\\\t\n\r"
_TZINFO = attrgetter("tzinfo")
# Values the SQLite driver stores exactly as SQLAlchemy would (datetimes are encoded first, see below).
_SQLITE_PLAIN = (type(None), str, int, float, bool, bytes)
_SQLITE_TYPES = (sa.Integer, sa.String, sa.Boolean, sa.DateTime, sa.Float)


def column_values(rows: Sequence[Mapping], columns: Sequence[str]) -> list[list]:
    """The rows as columns (a key a row lacks is NULL)."""
    return [[row.get(c) for row in rows] for c in columns]


def _holds(chars: str, text: str) -> bool:
    """Whether `text` holds any of `chars`: one C scan per character, ~10x faster than a regex
    character class over the megabytes of a joined column."""
    return any(c in text for c in chars)


def _naive_datetimes(values: list) -> bool:
    """Every value a naive datetime (the common case: one C pass each for type and zone)."""
    return set(map(type, values)) == {datetime} and not any(map(_TZINFO, values))


# ---- PostgreSQL ---------------------------------------------------------------------------------
def copy_postgres(conn: Connection, table: sa.Table, qualified: str, rows: Sequence[Mapping]) -> int:
    """COPY `rows` into `table` (named `qualified` in SQL), streamed in chunks of COPY_CHUNK_ROWS.

    Each chunk is encoded while the server still parses the one before (its backend is another process,
    so the two overlap on a second core), and no whole-batch text is held in memory. A NUL in text is
    refused in one line; the COPY then aborts and the caller's transaction rolls back what was sent."""
    columns = list(rows[0].keys())
    types = [table.c[c].type if c in table.c else None for c in columns]
    textual = [c for c, t in zip(columns, types, strict=True)
               if not isinstance(t, (sa.Integer, sa.DateTime, sa.Boolean))]

    def chunks() -> Iterator[str]:
        for start in range(0, len(rows), COPY_CHUNK_ROWS):
            part = rows[start:start + COPY_CHUNK_ROWS]
            encoded = [pg_column(t, values) for t, values in zip(types, column_values(part, columns), strict=True)]
            for name, values in zip(columns, encoded, strict=True):  # PostgreSQL text holds no NUL
                if name in textual and "\x00" in "".join(values):
                    raise ValueError(f"cannot store a NUL character in {table.name}.{name} (PostgreSQL text "
                                     "cannot hold one); the value must be refused before it is written")
            yield "\n".join(map("\t".join, zip(*encoded, strict=True))) + "\n"

    prep = conn.dialect.identifier_preparer
    cols = ", ".join(prep.quote(c) for c in columns)
    stream = _Stream(chunks())
    with conn.connection.dbapi_connection.cursor() as cur:
        try:
            cur.copy_expert(f"COPY {qualified} ({cols}) FROM STDIN WITH (FORMAT text)", stream)
        except Exception:
            if stream.failure is not None:  # the driver wraps it in "error in .read() call": ours, as raised
                raise stream.failure from None
            raise
    return len(rows)


class _Stream:
    """A read()-able view of an iterator of text chunks (what copy_expert reads; any length will do)."""

    def __init__(self, chunks: Iterator[str]):
        self._chunks = chunks
        self.failure: Exception | None = None

    def read(self, _size: int = -1) -> str:
        try:
            return next(self._chunks, "")
        except Exception as exc:
            self.failure = exc
            raise


def pg_column(col_type, values: list) -> list[str]:
    """One column in PostgreSQL's COPY text format."""
    text = pg_text
    if isinstance(col_type, sa.Boolean):
        return ["t" if v is True else "f" if v is False else text(v) for v in values]
    if isinstance(col_type, sa.Integer):
        if set(map(type, values)) == {int}:
            return list(map(str, values))
        return [str(v) if type(v) is int else text(v) for v in values]
    if isinstance(col_type, sa.DateTime):
        first = values[0] if values else None
        if type(first) is datetime and first.tzinfo is None and values.count(first) == len(values):
            return [first.isoformat(" ")] * len(values)  # one moment for the whole batch (ObservedAt, UpdatedAt)
        if _naive_datetimes(values):
            return list(map(datetime.isoformat, values, repeat(" ")))
        return [v.isoformat(" ") if type(v) is datetime and v.tzinfo is None else text(v) for v in values]
    if isinstance(col_type, sa.String):
        kinds = set(map(type, values))
        if kinds == {str} and not _holds(_PG_CHARS, "".join(values)):  # SIDs, states: as they are
            return values
        if kinds == {str, type(None)} and not _holds(_PG_CHARS, "".join(filter(None, values))):
            return ["\\N" if v is None else v for v in values]
        plain = [v for v in values if type(v) is str]
        if not _holds(_PG_CHARS, "".join(plain)):  # the usual case: nothing in the column to escape
            return [v if type(v) is str else text(v) for v in values]
        return [v if type(v) is str and not _PG_SPECIAL.search(v) else text(v) for v in values]
    return [text(v) for v in values]


def pg_text(value) -> str:
    """One field of PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return to_naive_utc(value).isoformat(sep=" ")
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


# ---- MariaDB / MySQL ----------------------------------------------------------------------------
def insert_mysql(conn: Connection, qualified: str, rows: Sequence[Mapping]) -> int:
    """Multi-row INSERTs of a few MB each, the values encoded column-wise.

    PyMySQL interpolates parameters on the client anyway, one Python call per value (50,000 rows: 3.3 s);
    encoding whole columns with the connection's own escaping and sending large statements is the
    same SQL at the server's speed (0.5 s). A plain INSERT: duplicate keys and bad values still fail."""
    dbapi = conn.connection.dbapi_connection
    columns = list(rows[0].keys())
    encoded = [mysql_column(dbapi, values) for values in column_values(rows, columns)]
    prep = conn.dialect.identifier_preparer
    head = f"INSERT INTO {qualified} ({', '.join(prep.quote(c) for c in columns)}) VALUES "
    limit = min(int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar()) // 2, 8 << 20)
    raw = conn.execution_options(no_parameters=True)  # the values are literals: no %-interpolation
    part: list[str] = []
    size = 0
    for values in zip(*encoded, strict=True):
        row = "(" + ",".join(values) + ")"
        if part and size + len(row) * 4 > limit:
            raw.exec_driver_sql(head + ",".join(part))
            part, size = [], 0
        part.append(row)
        size += len(row) * 4 + 1  # utf8mb4: at most 4 bytes a character
    if part:
        raw.exec_driver_sql(head + ",".join(part))
    return len(rows)


def mysql_column(dbapi, values: list) -> list[str]:
    """One column as MySQL literals, escaped by the connection (it knows NO_BACKSLASH_ESCAPES)."""
    kinds = set(map(type, values))
    if kinds == {int}:
        return list(map(str, values))
    if kinds == {datetime} and not any(map(_TZINFO, values)):
        return ["'" + v.isoformat(" ") + "'" for v in values]
    escape = dbapi.escape  # a str: quoted and escaped (NO_BACKSLASH_ESCAPES honoured)
    literal = dbapi.literal
    out = []
    for v in values:
        t = type(v)
        if v is None:
            out.append("NULL")
        elif t is str:
            out.append(escape(v))
        elif t is int:
            out.append(str(v))
        elif t is bool:
            out.append("1" if v else "0")
        elif t is datetime:
            out.append("'" + to_naive_utc(v).isoformat(" ") + "'")
        else:
            out.append(literal(v))
    return out


# LOAD DATA LOCAL refused: by the server (1148 MySQL 5 / older MariaDB, 4166 MariaDB 10.5+, 3948 MySQL 8)
# or the client library (2068).
LOAD_DATA_REFUSED = frozenset({1148, 4166, 3948, 2068})
LOAD_CHUNK_ROWS = 50_000  # rows per LOAD DATA statement (~5 MB of text for 8 columns)
_INFILE_TYPES = frozenset({int, str, bool, datetime, type(None)})
_INFILE_CHARS = "\\\t\n\r\x00"
_INFILE_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": "\\0"})


class LoadDataRefused(Exception):
    """The server or the connection does not allow LOAD DATA LOCAL INFILE (nothing was written)."""


def local_infile_allowed(conn: Connection) -> bool:
    """The connection was opened with LOCAL_FILES and the server has local_infile ON."""
    from pymysql.constants import CLIENT

    dbapi = conn.connection.dbapi_connection
    if not dbapi.client_flag & CLIENT.LOCAL_FILES:
        return False
    return bool(int(conn.exec_driver_sql("SELECT @@local_infile").scalar() or 0))


def load_data_mysql(conn: Connection, qualified: str, rows: Sequence[Mapping]) -> int | None:
    """LOAD DATA LOCAL INFILE of `rows`, in chunks of LOAD_CHUNK_ROWS written column-encoded to temporary
    files (a private folder, removed in `finally`).

    A worker thread encodes the next chunk while the server loads the one before (the client only waits
    on the socket then), as the streamed COPY does on PostgreSQL. None when a value has a type this
    encoder does not know (the caller then INSERTs). Raises LoadDataRefused when the server or the
    connection refuses the first statement (nothing loaded). A LOCAL load turns duplicate keys and bad
    values into warnings (the server cannot stop the client's stream); any warning or a row count short
    of the chunk is raised here as the error a plain INSERT gives, so the caller's transaction rolls back
    whatever was loaded. None as well when no temporary folder can be created."""
    if not set(map(type, chain.from_iterable(row.values() for row in rows))) <= _INFILE_TYPES:
        return None
    columns = list(rows[0].keys())
    dbapi = conn.connection.dbapi_connection
    prep = conn.dialect.identifier_preparer
    head = (f"INTO TABLE {qualified} CHARACTER SET utf8mb4 FIELDS TERMINATED BY {dbapi.escape(chr(9))} "
            f"ENCLOSED BY '' ESCAPED BY {dbapi.escape(chr(92))} LINES TERMINATED BY {dbapi.escape(chr(10))} "
            f"({', '.join(prep.quote(c) for c in columns)})")
    try:
        folder = tempfile.mkdtemp(prefix="tp_load_")  # private (0700): the rows hold phone numbers
    except OSError:  # no writable temporary folder: the caller INSERTs
        return None
    starts = range(0, len(rows), LOAD_CHUNK_ROWS)

    def write(start: int) -> tuple[str, int]:
        part = rows[start:start + LOAD_CHUNK_ROWS]
        encoded = [infile_column(values) for values in column_values(part, columns)]
        path = os.path.join(folder, f"{start}.tsv")
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write("\n".join(map("\t".join, zip(*encoded, strict=True))) + "\n")
        return path, len(part)

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="load-data") as pool:
            ahead = pool.submit(write, starts[0])
            for i, _start in enumerate(starts):
                path, count = ahead.result()
                if i + 1 < len(starts):
                    ahead = pool.submit(write, starts[i + 1])
                _load_file(dbapi, path, f"LOAD DATA LOCAL INFILE {dbapi.escape(path)} {head}", count, first=i == 0)
                os.unlink(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return len(rows)


def _load_file(dbapi, path: str, sql: str, count: int, first: bool) -> None:
    """Run one LOAD DATA LOCAL statement of `count` rows from `path`; its warnings are errors (see
    load_data_mysql). The client sends the server `path` and nothing else: PyMySQL answers a server's
    file request only while `_local_infile` is set, and reads whatever file the server names, so during
    the statement a request for any other file is refused (see _send_only_our_file)."""
    _install_file_guard()
    with dbapi.cursor() as cur:
        guard = dbapi._local_infile
        dbapi._local_infile = True
        dbapi._twilio_pipeline_infile = os.fsencode(path)
        try:
            cur.execute(sql)
        except (dbapi.OperationalError, dbapi.ProgrammingError) as exc:
            if first and exc.args and exc.args[0] in LOAD_DATA_REFUSED:
                raise LoadDataRefused(str(exc)) from exc
            raise
        finally:
            dbapi._local_infile = guard
            dbapi._twilio_pipeline_infile = None
        loaded, warnings = cur.rowcount, cur.warning_count
        if warnings or loaded != count:
            cur.execute("SHOW WARNINGS LIMIT 3")
            shown = [(int(code), message) for _level, code, message in cur.fetchall()]
            text = (f"LOAD DATA stored {loaded} of {count} row(s) with {warnings} warning(s): "
                    + "; ".join(f"({code}) {message}" for code, message in shown))
            duplicate = any(code == 1062 for code, _ in shown)  # ER_DUP_ENTRY
            error = dbapi.IntegrityError if duplicate else dbapi.DataError
            raise sa.exc.DBAPIError.instance(sql, None, error(shown[0][0] if shown else 0, text), dbapi.Error)


class ForeignFileRequested(Exception):
    """The server asked for a file the pipeline did not name in its LOAD DATA statement."""


def _install_file_guard() -> None:
    """Wrap PyMySQL's `_send_local_file` (once per process) so that a connection in our LOAD DATA sends
    only the file its statement names: a hostile or compromised server asking for another client file
    (PyMySQL would read any path it is given) gets nothing, and the load fails. Connections not in our
    load (no expected file set) behave as PyMySQL does."""
    from pymysql import connections

    original = connections._send_local_file
    if getattr(original, "_twilio_pipeline_guard", False):
        return

    def send_only_our_file(filename, conn):
        expected = getattr(conn, "_twilio_pipeline_infile", None)
        if expected is not None and os.fsencode(filename) != expected:
            raise ForeignFileRequested(
                f"the database server asked for the client file {os.fsdecode(filename)!r} during a bulk load "
                "of another file: refused, nothing sent")
        return original(filename, conn)

    send_only_our_file._twilio_pipeline_guard = True
    connections._send_local_file = send_only_our_file


def infile_column(values: list) -> list[str] | None:
    """One column in LOAD DATA's default text format (ESCAPED BY '\\'): NULL as \\N, the escape
    character, tab, newline, carriage return and NUL escaped; None for a value of another type."""
    kinds = set(map(type, values))
    if kinds == {int}:
        return list(map(str, values))
    if kinds == {datetime} and not any(map(_TZINFO, values)):
        if values.count(values[0]) == len(values):  # one moment for the whole batch (ObservedAt, UpdatedAt)
            return [values[0].isoformat(" ")] * len(values)
        return list(map(datetime.isoformat, values, repeat(" ")))
    if kinds == {bool}:
        return ["1" if v else "0" for v in values]
    if kinds <= {str, type(None)}:
        if not _holds(_INFILE_CHARS, "".join(filter(None, values))):
            if kinds == {str}:  # SIDs, states: as they are
                return values
            return ["\\N" if v is None else v for v in values]
        return ["\\N" if v is None else v.translate(_INFILE_ESCAPES) for v in values]
    out = []
    for v in values:
        t = type(v)
        if v is None:
            out.append("\\N")
        elif t is str:
            out.append(v.translate(_INFILE_ESCAPES))
        elif t is bool:
            out.append("1" if v else "0")
        elif t is int:
            out.append(str(v))
        elif t is datetime:
            out.append(to_naive_utc(v).isoformat(" "))
        else:
            return None
    return out


# ---- SQLite -------------------------------------------------------------------------------------
def executemany_sqlite(conn: Connection, table: sa.Table, qualified: str, rows: Sequence[Mapping]) -> int | None:
    """The driver's executemany with values encoded as SQLAlchemy stores them (datetimes as
    'YYYY-MM-DD HH:MM:SS.ffffff' text, naive UTC); None when a column's type or a value is one this
    fast path does not know (the caller then lets SQLAlchemy bind them)."""
    columns = list(rows[0].keys())
    if not conn.in_transaction():  # the driver would commit each row on its own
        return None
    if any(c not in table.c or not isinstance(table.c[c].type, _SQLITE_TYPES) for c in columns):
        return None
    encoded = []
    for c, values in zip(columns, column_values(rows, columns), strict=True):
        if isinstance(table.c[c].type, sa.DateTime):
            values = sqlite_datetimes(values)
            if values is None:
                return None
        elif not set(map(type, values)) <= set(_SQLITE_PLAIN):
            return None
        encoded.append(values)
    prep = conn.dialect.identifier_preparer
    sql = (f"INSERT INTO {qualified} ({', '.join(prep.quote(c) for c in columns)}) "
           f"VALUES ({', '.join('?' * len(columns))})")
    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.executemany(sql, zip(*encoded, strict=True))
    finally:
        cur.close()
    return len(rows)


def sqlite_datetimes(values: list) -> list | None:
    """A DateTime column as SQLAlchemy's SQLite text (always with microseconds, so text order is time
    order); None when a value is neither a datetime nor NULL."""
    if _naive_datetimes(values):
        return list(map(datetime.isoformat, values, repeat(" "), repeat("microseconds")))
    out = []
    for v in values:
        if v is None:
            out.append(None)
        elif type(v) is datetime:
            out.append(to_naive_utc(v).isoformat(" ", "microseconds"))
        else:
            return None
    return out
