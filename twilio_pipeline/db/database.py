"""The pipeline's database: engine per dialect, idempotent DDL, bulk loads, merges, staging tables.

Every write path is set-based: rows arrive in bulk (db.bulk: COPY on PostgreSQL, LOAD DATA LOCAL INFILE
or multi-row INSERTs of a few MB on MariaDB/MySQL, the driver's executemany on SQLite, fast_executemany on
SQL Server) into a per-run staging table or a durable queue table, then one `INSERT ... SELECT ... WHERE NOT EXISTS` merges them.
Nothing issues a query per row. Leases (db.leases) are part of `Database` through its LeaseStore base.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from twilio_pipeline.dates import to_naive_utc, utcnow
from twilio_pipeline.db.bulk import (
    LoadDataRefused,
    copy_postgres,
    executemany_sqlite,
    insert_mysql,
    load_data_mysql,
    local_infile_allowed,
)
from twilio_pipeline.db.leases import LeaseHolder, LeaseStore, holder_is_live
from twilio_pipeline.db.schema import MYSQL, TABLE_OPTIONS, Tables, build_tables, portable_column
from twilio_pipeline.processes import pid_alive

__all__ = ["HOST", "Database", "LeaseHolder", "SchemaOutdated", "engine_options", "holder_is_live", "lenient_text",
           "normalise_url", "null_safe_eq", "to_naive_utc", "undecodable", "utcnow"]

HOST = socket.gethostname()
# A staging table's owner renews its registry row's HeartbeatAt every STAGING_HEARTBEAT_S while the table
# is in use; a row not renewed for STAGING_STALE_AFTER belongs to a dead worker, whichever host it ran on
# (a dead pid is only visible on its own host). Hosts' clocks must agree to well within that window (NTP).
STAGING_HEARTBEAT_S = 30.0
STAGING_STALE_AFTER = timedelta(minutes=10)
STAGING_ORPHAN_AGE = timedelta(hours=6)  # rows of an earlier release, which wrote no heartbeat


class SchemaOutdated(RuntimeError):
    """A table from an earlier release lacks a column that cannot be added automatically."""


def normalise_url(url: str | sa.URL) -> sa.URL:
    """`postgresql://` means psycopg2 here (its COPY is our bulk path; SQLAlchemy 2.1 would pick psycopg 3)."""
    parsed = sa.engine.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


def engine_options(backend: str) -> dict:
    """Per-dialect engine options: the bulk path of each (fast_executemany on SQL Server)."""
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60, "check_same_thread": False}}
    if backend == "mssql":
        return {"fast_executemany": True, "pool_pre_ping": True}
    if backend in MYSQL:
        # READ COMMITTED, as on PostgreSQL: InnoDB's default REPEATABLE READ locks the leases row that a
        # ledger write's fencing EXISTS reads and the gaps its key ranges cover, and a claim, an outcome
        # flush and a lease renewal then deadlock; under READ COMMITTED those reads lock nothing.
        return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20, "isolation_level": "READ COMMITTED"}
    return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}


def null_safe_eq(a: sa.ColumnElement, b: sa.ColumnElement) -> sa.ColumnElement:
    return sa.or_(a == b, sa.and_(a.is_(None), b.is_(None)))


class Database(LeaseStore):
    """Holds the engine and the table set; hands out connections and the bulk/merge primitives."""

    def __init__(self, url: str, schema: str | None = None, prefix: str = "", create: bool = True, echo: bool = False):
        self.url = normalise_url(url)
        self.schema = schema
        self.prefix = prefix
        self.tables: Tables = build_tables(schema, prefix)
        self.engine: Engine = self._make_engine(echo)
        self._created = False
        self.upgraded: list[str] = []  # what create_all added to tables of an earlier release
        self.host = HOST  # who this process is in the leases table
        self._load_data: bool | None = None  # MariaDB/MySQL: LOAD DATA LOCAL allowed (known after the first load)
        if create:
            self.create_all()

    # ---- engine -------------------------------------------------------------------------------
    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_mysql(self) -> bool:
        """MySQL or MariaDB (SQLAlchemy names the dialect after the URL: mysql+pymysql or mariadb+pymysql)."""
        return self.dialect in MYSQL

    def _make_engine(self, echo: bool) -> Engine:
        backend = self.url.get_backend_name()
        if backend == "sqlite":
            database = self.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        options = engine_options(backend)
        # PyMySQL: open connections able to LOAD DATA LOCAL (the bulk path), unless the URL says otherwise.
        # The client then sends a file only while bulk.load_data_mysql runs its own statement: a server
        # asking for a file at any other moment is refused.
        guard_infile = self.url.drivername.endswith("+pymysql") and "local_infile" not in self.url.query
        if guard_infile:
            options["connect_args"] = {**options.get("connect_args", {}), "local_infile": True}
        engine = sa.create_engine(self.url, echo=echo, **options)
        if backend == "sqlite":
            @sa.event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the writer
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=60000")
                cur.close()
                dbapi_conn.isolation_level = None  # let SQLAlchemy emit BEGIN itself

            @sa.event.listens_for(engine, "begin")
            def _sqlite_begin(conn):
                # Write transactions take the lock up front (no deadlock on lock upgrade); reads stay
                # deferred so a long chunked read never blocks a writer under WAL.
                immediate = conn.get_execution_options().get("twilio_pipeline_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        if engine.dialect.name in MYSQL:
            @sa.event.listens_for(engine, "connect")
            def _mysql_session(dbapi_conn, _record):
                # Naive UTC everywhere: CURRENT_TIMESTAMP defaults and the lease clock read UTC, whatever
                # the server's zone.
                with dbapi_conn.cursor() as cur:
                    cur.execute("SET time_zone = '+00:00'")
                if guard_infile:
                    dbapi_conn._local_infile = False

            @sa.event.listens_for(engine, "checkin")
            def _mysql_release_locks(dbapi_conn, record):
                # transaction_lock's named locks belong to the session: free them when the connection goes
                # back to the pool, i.e. after the transaction that took them committed or rolled back.
                if dbapi_conn is not None and record.info.pop("twilio_pipeline_locks", False):
                    with dbapi_conn.cursor() as cur:
                        cur.execute("DO RELEASE_ALL_LOCKS()")
        return engine

    def dispose(self) -> None:
        self.engine.dispose()

    # ---- DDL ----------------------------------------------------------------------------------
    def create_all(self) -> list[str]:
        """Create every table and index that is missing, and add the columns that tables created by an
        earlier release lack (idempotent; safe from two processes at once). Returns what was added."""
        if self._created:
            return []
        for attempt in range(3):
            try:
                with self.begin() as conn:
                    if self.schema and self.dialect == "postgresql":
                        conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
                    self.tables.metadata.create_all(conn, checkfirst=True)
                    added = self._upgrade_existing(conn)
                break
            except (IntegrityError, ProgrammingError, OperationalError):
                if attempt == 2:
                    raise
        self._created = True
        self.upgraded = added
        return added

    def _upgrade_existing(self, conn: Connection) -> list[str]:
        """Additive upgrade of tables that already existed: missing columns and indexes are added.

        A missing column that can be neither NULL nor defaulted cannot be added to rows that exist; that
        is a clear SchemaOutdated error naming the table and column, never a failure halfway through a send.
        """
        inspector = sa.inspect(conn)
        preparer = conn.dialect.identifier_preparer
        added: list[str] = []
        for table in self.tables.metadata.sorted_tables:
            present = {c["name"].lower() for c in inspector.get_columns(table.name, schema=table.schema)}
            for column in table.columns:
                if column.name.lower() in present:
                    continue
                if not column.nullable and column.server_default is None:
                    raise SchemaOutdated(
                        f"table {table.fullname} has no column {column.name} (NOT NULL, no default), which this "
                        "release needs: add it by hand or move the table aside and run `twilio-pipeline init-db`")
                ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
                conn.execute(sa.text(f"ALTER TABLE {preparer.format_table(table)} ADD {ddl}"))
                added.append(f"column {table.fullname}.{column.name}")
            if table.indexes:
                known = {i["name"] for i in inspector.get_indexes(table.name, schema=table.schema)}
                for index in table.indexes:
                    if index.name not in known:
                        index.create(conn)
                        added.append(f"index {index.name}")
        return added

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction (committed on success, rolled back on error)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(twilio_pipeline_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # ---- bulk load ----------------------------------------------------------------------------
    def bulk_insert(self, conn: Connection, table: sa.Table, rows: Sequence[Mapping] | Iterable[Mapping],
                    chunk_size: int = 20_000) -> int:
        """Insert many rows in the dialect's fastest way; returns the row count."""
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return 0
        if self.dialect == "postgresql":
            return copy_postgres(conn, table, self._quoted_name(table), rows)
        if self.is_mysql and conn.connection.dbapi_connection.__class__.__module__.startswith("pymysql"):
            if self._load_data is None:
                self._load_data = local_infile_allowed(conn)
            if self._load_data:
                try:
                    done = load_data_mysql(conn, self._quoted_name(table), rows)
                except LoadDataRefused:  # refused before any row was read: the transaction goes on
                    self._load_data = False
                    done = None
                if done is not None:
                    return done
            return insert_mysql(conn, self._quoted_name(table), rows)
        if self.dialect == "sqlite":
            done = executemany_sqlite(conn, table, self._quoted_name(table), rows)
            if done is not None:
                return done
        total = 0
        stmt = table.insert()
        for start in range(0, len(rows), chunk_size):
            part = rows[start:start + chunk_size]
            conn.execute(stmt, part)
            total += len(part)
        return total

    def bulk_insert_frame(self, conn: Connection, table: sa.Table, frame) -> int:
        """A pandas DataFrame whose columns are a subset of the table's."""
        if frame is None or len(frame) == 0:
            return 0
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        return self.bulk_insert(conn, table, records)

    def refresh_statistics(self, conn: Connection, *tables: sa.Table) -> None:
        """ANALYZE tables that were just filled in bulk, on PostgreSQL (a no-op elsewhere).

        Planned with the statistics of an empty table, a join of a million fresh rows against an index
        becomes a million index probes (retiring 1M SIDs: 7.0 s; with statistics a hash join: 2.0 s).
        ANALYZE samples a bounded number of rows and may run inside the transaction."""
        if self.dialect != "postgresql":
            return
        for table in tables:
            conn.exec_driver_sql(f"ANALYZE {self._quoted_name(table)}")

    def _quoted_name(self, table: sa.Table) -> str:
        prep = self.engine.dialect.identifier_preparer
        return prep.format_table(table)

    # ---- set-based merge ----------------------------------------------------------------------
    def insert_missing(self, conn: Connection, target: sa.Table, source: sa.Select | sa.Subquery,
                       match: Sequence[str], columns: Sequence[str] | None = None,
                       order_by: Sequence[str] = ()) -> int:
        """INSERT INTO target SELECT ... FROM source WHERE NOT EXISTS (same `match` columns, NULL-safe).

        `source` must expose columns named like the target's. Returns rows inserted. A match column the
        target declares NOT NULL is compared with plain `=` (the same result there), so its index serves
        the lookup: the OR of a NULL-safe comparison would make every row scan the target.
        `order_by`: insert sorted on these leading columns of the target's index, which then grows at one
        end instead of at random pages (a million states into PostgreSQL: 2.5 s instead of 6 s).
        """
        src = source.subquery("src") if isinstance(source, sa.Select) else source
        cols = list(columns or [c.name for c in src.columns])
        exists = sa.select(sa.literal(1)).select_from(target).where(
            *[null_safe_eq(target.c[m], src.c[m]) if target.c[m].nullable else target.c[m] == src.c[m]
              for m in match]
        )
        select = sa.select(*[src.c[c] for c in cols]).where(~exists.exists())
        if order_by:
            select = select.order_by(*[src.c[c] for c in order_by])
        postgres = self.dialect == "postgresql"
        if postgres:
            # A target whose statistics say "empty" (a new table) gets a nested loop that re-scans it per
            # source row: quadratic, 1M rows never finish. Probing the target's index instead is right
            # for small and huge targets alike, so rule the sequential scan out for this statement.
            conn.execute(sa.select(sa.func.set_config("enable_seqscan", "off", True)))
        result = conn.execute(target.insert().from_select(cols, select))
        if postgres:  # the setting is transaction-local; an error rolls it back with everything else
            conn.execute(sa.select(sa.func.set_config("enable_seqscan", "on", True)))
        return result.rowcount if result.rowcount is not None and result.rowcount >= 0 else 0

    def transaction_lock(self, conn: Connection, name: str, timeout_s: int = 3600) -> None:
        """Hold the advisory lock `name` until the transaction of `conn` ends, so writers that must not
        interleave take turns. PostgreSQL: pg_advisory_xact_lock; SQL Server: sp_getapplock (owner
        Transaction); SQLite: nothing (BEGIN IMMEDIATE already serialises writers); MariaDB/MySQL: GET_LOCK,
        which is per session, so it is released when `conn` goes back to the pool."""
        if self.dialect == "postgresql":
            num = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": num})
        elif self.dialect == "mssql":
            conn.execute(sa.text("EXEC sp_getapplock @Resource = :r, @LockMode = 'Exclusive', "
                                 "@LockOwner = 'Transaction'"), {"r": name[:255]})
        elif self.is_mysql:
            digest = hashlib.blake2b(name.encode(), digest_size=24).hexdigest()  # names are at most 64 characters
            conn.connection._connection_record.info["twilio_pipeline_locks"] = True
            got = conn.execute(sa.text("SELECT GET_LOCK(:n, :t)"), {"n": f"tp:{digest}", "t": timeout_s}).scalar()
            if got != 1:
                raise OperationalError(f"GET_LOCK({name!r})", {}, TimeoutError(
                    f"waited {timeout_s} s for the database lock {name!r} held by another run"))

    # ---- staging tables -----------------------------------------------------------------------
    @contextmanager
    def staging_table(self, kind: str, columns: Sequence[sa.Column]) -> Iterator[sa.Table]:
        """A per-run table (`<prefix>stg_<kind>_<token>`), registered so orphans of killed runs can be
        found, and dropped in `finally` on success and failure alike."""
        name = f"{self.prefix}stg_{kind}_{uuid.uuid4().hex[:12]}"
        md = sa.MetaData(schema=self.schema)
        table = sa.Table(name, md, *[portable_column(c) for c in columns], **TABLE_OPTIONS)
        reg = self.tables.staging_registry
        stop = threading.Event()
        beat = threading.Thread(target=self._staging_heartbeat, args=(name, stop), daemon=True,
                                name=f"staging-{name}")
        # Registration is inside the try: an interrupt (SIGTERM raises wherever the main thread is) landing
        # just after it committed still reaches the finally, which drops the table if it exists and always
        # removes the registry row.
        try:
            now = utcnow()
            with self.begin() as conn:
                conn.execute(reg.insert().values(TableName=name, Host=HOST, Pid=os.getpid(), CreatedAt=now,
                                                 HeartbeatAt=now))
            beat.start()
            with self.begin() as conn:
                table.create(conn)
            yield table
        finally:
            stop.set()
            if beat.is_alive():
                beat.join(timeout=10)
            self._drop_staging(table)

    def _staging_heartbeat(self, name: str, stop: threading.Event) -> None:
        """Keep the table's registry row fresh so that no host's cleanup takes it for an orphan."""
        reg = self.tables.staging_registry
        while not stop.wait(STAGING_HEARTBEAT_S):
            try:
                with self.begin() as conn:
                    conn.execute(reg.update().where(reg.c.TableName == name).values(HeartbeatAt=utcnow()))
            except Exception:  # noqa: BLE001 - a DB hiccup: the next beat retries, the window is minutes
                continue

    def _drop_staging(self, table: sa.Table) -> None:
        reg = self.tables.staging_registry
        with self.begin() as conn:
            table.drop(conn, checkfirst=True)
            conn.execute(reg.delete().where(reg.c.TableName == table.name))

    def staging_tables(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(self.tables.staging_registry.c.TableName))]

    def drop_orphan_staging(self) -> list[str]:
        """Drop staging tables whose worker is gone: on this host, a dead pid; on any host, a heartbeat
        older than STAGING_STALE_AFTER. A live worker renews its heartbeat however long it runs."""
        reg = self.tables.staging_registry
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(reg.c.TableName, reg.c.Host, reg.c.Pid, reg.c.CreatedAt,
                                          reg.c.HeartbeatAt)).all()
        now = utcnow()
        dropped = []
        for name, host, pid, created, heartbeat in rows:
            stale = (heartbeat < now - STAGING_STALE_AFTER if heartbeat is not None
                     else created < now - STAGING_ORPHAN_AGE)
            orphan = (host == HOST and not pid_alive(pid)) or stale
            if orphan:
                self._drop_staging(sa.Table(name, sa.MetaData(schema=self.schema)))
                dropped.append(name)
        # Tables left by a run killed between CREATE and registration cannot exist: registration comes first.
        return dropped

    # ---- watermarks ---------------------------------------------------------------------------
    def get_watermark(self, conn: Connection, sender: str) -> datetime | None:
        wm = self.tables.watermarks
        return conn.execute(sa.select(wm.c.LastDateSent).where(wm.c.Sender == sender)).scalar()

    def set_watermark(self, conn: Connection, sender: str, value: datetime) -> None:
        """Advance only (never back): call it in the transaction that committed what was read."""
        wm = self.tables.watermarks
        value = to_naive_utc(value)
        current = conn.execute(sa.select(wm.c.LastDateSent).where(wm.c.Sender == sender)).first()
        if current is None:
            conn.execute(wm.insert().values(Sender=sender, LastDateSent=value, UpdatedAt=utcnow()))
        elif current[0] is None or value > current[0]:
            conn.execute(wm.update().where(wm.c.Sender == sender).values(LastDateSent=value, UpdatedAt=utcnow()))

    # ---- results ------------------------------------------------------------------------------
    def write_results(self, conn: Connection, execution_id: int, values: Mapping[str, float | int | None],
                      replace_prefixes: Sequence[str] = ()) -> None:
        """Replace the execution's results named in `values` (and any starting with `replace_prefixes`)."""
        res = self.tables.results
        cond = [res.c.ResultName.in_(list(values))] if values else []
        cond += [res.c.ResultName.like(f"{p}%") for p in replace_prefixes]
        if cond:
            conn.execute(res.delete().where(res.c.ChannelExecutionID == execution_id, sa.or_(*cond)))
        now = utcnow()
        rows = [dict(ChannelExecutionID=execution_id, ResultName=k, ResultValue=v, UpdatedAt=now)
                for k, v in values.items() if v is not None]
        if rows:
            conn.execute(res.insert(), rows)

    def read_results(self, execution_id: int) -> dict[str, float]:
        res = self.tables.results
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(res.c.ResultName, res.c.ResultValue)
                                .where(res.c.ChannelExecutionID == execution_id)
                                .order_by(res.c.ResultName)).all()
        return {name: _number(value) for name, value in rows}


@contextmanager
def lenient_text(conn: Connection) -> Iterator[None]:
    """On SQLite, read invalid UTF-8 as lone surrogates (the input checks then refuse that recipient or
    execution in one line) instead of failing the whole read. ~2.5x slower per text value, so it is only
    for retrying a read that failed with `undecodable`."""
    raw = conn.connection.dbapi_connection if conn.dialect.name == "sqlite" else None
    if raw is None:
        yield
        return
    before = raw.text_factory
    raw.text_factory = _LENIENT_UTF8
    try:
        yield
    finally:
        raw.text_factory = before


def undecodable(exc: BaseException) -> bool:
    """SQLite's answer to a text value that is not UTF-8 (written by another tool)."""
    return "Could not decode to UTF-8" in str(exc)


_LENIENT_UTF8 = functools.partial(bytes.decode, encoding="utf-8", errors="surrogateescape")


def _number(value) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
