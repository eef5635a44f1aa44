"""The pipeline's database: engine per dialect, idempotent DDL, bulk loads, staging tables, leases.

Every write path is set-based: rows arrive in bulk (COPY on PostgreSQL, multi-row INSERTs of a few MB on
MariaDB/MySQL, fast_executemany on SQL Server, executemany on SQLite) into a per-run staging table, then one
`INSERT ... SELECT ... WHERE NOT EXISTS` merges them. Nothing issues a query per row.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from twilio_pipeline.db.schema import MYSQL, TABLE_OPTIONS, Tables, build_tables, portable_column
from twilio_pipeline.processes import pid_alive, pid_started_after

HOST = socket.gethostname()
# A staging table's owner renews its registry row's HeartbeatAt every STAGING_HEARTBEAT_S while the table
# is in use; a row not renewed for STAGING_STALE_AFTER belongs to a dead worker, whichever host it ran on
# (a dead pid is only visible on its own host). Hosts' clocks must agree to well within that window (NTP).
STAGING_HEARTBEAT_S = 30.0
STAGING_STALE_AFTER = timedelta(minutes=10)
STAGING_ORPHAN_AGE = timedelta(hours=6)  # rows of an earlier release, which wrote no heartbeat
MYSQL_DEADLOCK = 1213  # ER_LOCK_DEADLOCK


def utcnow() -> datetime:
    """Naive UTC: the representation every table stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def to_naive_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


class SchemaOutdated(RuntimeError):
    """A table from an earlier release lacks a column that cannot be added automatically."""


@dataclass(frozen=True)
class LeaseHolder:
    owner: str
    host: str
    pid: int
    expires_at: datetime
    acquired_at: datetime | None = None


def _holder_alive(pid: int, acquired_at: datetime | None) -> bool:
    """A lease holder on this host is alive while its pid runs and was not reused since it took the lease."""
    return pid_alive(pid) and not (acquired_at is not None and pid_started_after(pid, acquired_at))


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


class Database:
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
        engine = sa.create_engine(self.url, echo=echo, **engine_options(backend))
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
            return self._copy_postgres(conn, table, rows)
        if self.is_mysql and conn.connection.dbapi_connection.__class__.__module__.startswith("pymysql"):
            return self._insert_mysql(conn, table, rows)
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

    def _copy_postgres(self, conn: Connection, table: sa.Table, rows: list[Mapping]) -> int:
        columns = list(rows[0].keys())
        encoded = [_pg_column(table.c[c].type if c in table.c else None, [row.get(c) for row in rows])
                   for c in columns]
        for name, values in zip(columns, encoded):  # PostgreSQL text holds no NUL: one line, not a driver error
            textual = name not in table.c or not isinstance(table.c[name].type, (sa.Integer, sa.DateTime, sa.Boolean))
            if textual and "\x00" in "".join(values):
                raise ValueError(f"cannot store a NUL character in {table.name}.{name} (PostgreSQL text cannot "
                                 "hold one); the value must be refused before it is written")
        buf = io.StringIO("\n".join(map("\t".join, zip(*encoded))) + "\n")
        del encoded
        qualified = self._quoted_name(table)
        cols = ", ".join(self.engine.dialect.identifier_preparer.quote(c) for c in columns)
        dbapi = conn.connection.dbapi_connection
        with dbapi.cursor() as cur:
            cur.copy_expert(f"COPY {qualified} ({cols}) FROM STDIN WITH (FORMAT text)", buf)
        return len(rows)

    def _insert_mysql(self, conn: Connection, table: sa.Table, rows: list[Mapping]) -> int:
        """Multi-row INSERTs of a few MB each, the values encoded column-wise.

        PyMySQL interpolates parameters on the client anyway, one Python call per value (50,000 rows: 3.3 s);
        encoding whole columns with the connection's own escaping and sending large statements is the
        same SQL at the server's speed (0.5 s). A plain INSERT: duplicate keys and bad values still fail."""
        dbapi = conn.connection.dbapi_connection
        columns = list(rows[0].keys())
        encoded = [_mysql_column(dbapi, [row.get(c) for row in rows]) for c in columns]
        prep = self.engine.dialect.identifier_preparer
        head = f"INSERT INTO {self._quoted_name(table)} ({', '.join(prep.quote(c) for c in columns)}) VALUES "
        limit = min(int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar()) // 2, 8 << 20)
        raw = conn.execution_options(no_parameters=True)  # the values are literals: no %-interpolation
        part: list[str] = []
        size = 0
        for values in zip(*encoded):
            row = "(" + ",".join(values) + ")"
            if part and size + len(row) * 4 > limit:
                raw.exec_driver_sql(head + ",".join(part))
                part, size = [], 0
            part.append(row)
            size += len(row) * 4 + 1  # utf8mb4: at most 4 bytes a character
        if part:
            raw.exec_driver_sql(head + ",".join(part))
        return len(rows)

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
                       match: Sequence[str], columns: Sequence[str] | None = None) -> int:
        """INSERT INTO target SELECT ... FROM source WHERE NOT EXISTS (same `match` columns, NULL-safe).

        `source` must expose columns named like the target's. Returns rows inserted. A match column the
        target declares NOT NULL is compared with plain `=` (the same result there), so its index serves
        the lookup: the OR of a NULL-safe comparison would make every row scan the target.
        """
        src = source.subquery("src") if isinstance(source, sa.Select) else source
        cols = list(columns or [c.name for c in src.columns])
        exists = sa.select(sa.literal(1)).select_from(target).where(
            *[null_safe_eq(target.c[m], src.c[m]) if target.c[m].nullable else target.c[m] == src.c[m]
              for m in match]
        )
        select = sa.select(*[src.c[c] for c in cols]).where(~exists.exists())
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
        """On MariaDB/MySQL, hold the named lock `name` until `conn` goes back to the pool (the end of a
        `begin()` transaction): GET_LOCK is the server's advisory lock, but per session, not per transaction.
        Other dialects have their own transaction-scoped form (see inbound.common.serialize_writers)."""
        if not self.is_mysql:
            raise NotImplementedError(self.dialect)
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
        now = utcnow()
        with self.begin() as conn:
            conn.execute(reg.insert().values(TableName=name, Host=HOST, Pid=os.getpid(), CreatedAt=now,
                                             HeartbeatAt=now))
        stop = threading.Event()
        beat = threading.Thread(target=self._staging_heartbeat, args=(name, stop), daemon=True,
                                name=f"staging-{name}")
        beat.start()
        try:
            with self.begin() as conn:
                table.create(conn)
            yield table
        finally:
            stop.set()
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

    # ---- leases -------------------------------------------------------------------------------
    def clock(self, offset_s: float = 0.0) -> sa.ColumnElement:
        """The database's own clock (naive UTC) plus `offset_s`, read when the statement runs.

        Lease expiry is computed here, not in Python: a statement that waited on a lock must not write a
        time taken before it waited (PostgreSQL's now() is the transaction's start, so clock_timestamp())."""
        secs = float(offset_s)
        if self.dialect == "postgresql":
            now = sa.func.timezone(sa.literal("UTC"), sa.func.clock_timestamp(), type_=sa.DateTime)
            return sa.type_coerce(now + sa.func.make_interval(0, 0, 0, 0, 0, 0, secs, type_=sa.Interval), sa.DateTime)
        if self.dialect == "sqlite":  # the text format SQLAlchemy stores (microseconds), so it compares
            text = sa.func.strftime("%Y-%m-%d %H:%M:%f", "now", sa.literal(f"{secs:+.3f} seconds")).op("||")("000")
            return sa.type_coerce(text, sa.DateTime)
        if self.is_mysql:
            # UTC_TIMESTAMP() is the statement's start; SYSDATE() is read when evaluated, in the session's
            # time zone, which the engine sets to UTC on connect.
            return sa.type_coerce(sa.func.timestampadd(sa.text("MICROSECOND"), int(secs * 1e6),
                                                       sa.literal_column("SYSDATE(6)")), sa.DateTime)
        if self.dialect == "mssql":
            return sa.type_coerce(sa.func.dateadd(sa.text("millisecond"), int(secs * 1000),
                                                  sa.func.sysutcdatetime()), sa.DateTime)
        return sa.type_coerce(sa.literal(utcnow() + timedelta(seconds=secs), sa.DateTime), sa.DateTime)

    def take_lease(self, key: str, owner: str, ttl_s: float = 60.0) -> tuple[int | None, LeaseHolder | None]:
        """Take `key` for `owner`: (fencing token, None), or (None, the holder that keeps it).

        A holder is replaced when it is `owner` itself, when its process is gone (same host, dead pid),
        or when its lease expired by the database's clock - unless it runs on this host and its pid is
        alive: a live local holder whose heartbeat is stuck (a stalled database) may still be sending, so
        it is never taken over. Every take-over raises the key's FencingToken, which fences the old
        holder out of the ledger (`lease_held`).
        """
        leases = self.tables.leases
        for _ in range(5):
            try:
                with self.begin() as conn:
                    q = sa.select(leases).where(leases.c.LeaseKey == key)
                    if self.dialect in ("postgresql", "mssql") or self.is_mysql:
                        q = q.with_for_update()
                    row = conn.execute(q).mappings().first()
                    # Read after the row lock was granted: the moment the decision is made.
                    now = conn.execute(sa.select(self.clock())).scalar()
                    mine = dict(Owner=owner, Host=self.host, Pid=os.getpid(), AcquiredAt=now,
                                ExpiresAt=self.clock(ttl_s))
                    if row is None:
                        conn.execute(leases.insert().values(LeaseKey=key, FencingToken=1, **mine))
                        return 1, None
                    local = row["Host"] == self.host
                    alive = local and _holder_alive(row["Pid"], row["AcquiredAt"])
                    stale = (row["Owner"] == owner or (local and not alive)
                             or (row["ExpiresAt"] < now and not alive))
                    if not stale:
                        return None, LeaseHolder(row["Owner"], row["Host"], row["Pid"], row["ExpiresAt"],
                                                 row["AcquiredAt"])
                    token = int(row["FencingToken"] or 0) + 1
                    updated = conn.execute(
                        leases.update()
                        .where(leases.c.LeaseKey == key, leases.c.Owner == row["Owner"],
                               null_safe_eq(leases.c.FencingToken, sa.literal(row["FencingToken"], sa.BigInteger)))
                        .values(FencingToken=token, **mine)
                    )
                    if updated.rowcount == 1:
                        return token, None
            except IntegrityError:
                continue  # someone inserted first: read again
            except OperationalError as exc:
                # InnoDB: two takers of a key nobody holds both wait on the gap their FOR UPDATE locked,
                # and one is chosen as the deadlock victim; it reads again like the loser of the insert.
                if self.is_mysql and getattr(exc.orig, "args", (None,))[0] == MYSQL_DEADLOCK:
                    continue
                raise
        return None, self.lease_holder(key) or LeaseHolder("unknown", "unknown", 0, utcnow())

    def acquire_lease(self, key: str, owner: str, ttl_s: float = 60.0) -> LeaseHolder | None:
        """Take `key` for `owner`. Returns None when taken, else who holds it (see take_lease)."""
        return self.take_lease(key, owner, ttl_s)[1]

    def lease_held(self, key: str, owner: str, token: int | None) -> sa.ColumnElement:
        """True while `owner` still holds `key` under `token`: put it in the WHERE clause of a write, so the
        write and the check are one statement and a run that lost its lease changes nothing."""
        leases = self.tables.leases
        cond = [leases.c.LeaseKey == key, leases.c.Owner == owner]
        if token is not None:
            cond.append(leases.c.FencingToken == token)
        return sa.exists(sa.select(sa.literal(1)).select_from(leases).where(*cond))

    def renew_lease(self, key: str, owner: str, ttl_s: float = 60.0, token: int | None = None) -> bool:
        """Extend the lease to the database's now + ttl_s; False when `owner` (with `token`) lost it."""
        leases = self.tables.leases
        cond = [leases.c.LeaseKey == key, leases.c.Owner == owner]
        if token is not None:
            cond.append(leases.c.FencingToken == token)
        with self.begin() as conn:
            res = conn.execute(leases.update().where(*cond).values(ExpiresAt=self.clock(ttl_s)))
        return res.rowcount == 1

    def release_lease(self, key: str, owner: str, token: int | None = None) -> None:
        leases = self.tables.leases
        cond = [leases.c.LeaseKey == key, leases.c.Owner == owner]
        if token is not None:
            cond.append(leases.c.FencingToken == token)
        with self.begin() as conn:
            conn.execute(leases.delete().where(*cond))

    def live_lease_holder(self, key: str) -> LeaseHolder | None:
        """The holder of `key` if it is alive: its process exists when on this host (expired or not, as
        take_lease decides), else its lease is unexpired."""
        holder = self.lease_holder(key)
        if holder is None:
            return None
        if holder.host == self.host:
            return holder if _holder_alive(holder.pid, holder.acquired_at) else None
        with self.engine.connect() as conn:
            now = conn.execute(sa.select(self.clock())).scalar()
        return None if holder.expires_at < now else holder

    def lease_holder(self, key: str) -> LeaseHolder | None:
        leases = self.tables.leases
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.LeaseKey == key)).mappings().first()
        if row is None:
            return None
        return LeaseHolder(row["Owner"], row["Host"], row["Pid"], row["ExpiresAt"], row["AcquiredAt"])

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


def _pg_column(col_type, values: list) -> list[str]:
    """One column in PostgreSQL's COPY text format, encoded column-wise: a comprehension per column with
    a fast path for the value type its SQL type implies (a million-row load encodes millions of values),
    `_pg_text` for anything else."""
    text = _pg_text
    if isinstance(col_type, sa.Boolean):
        return ["t" if v is True else "f" if v is False else text(v) for v in values]
    if isinstance(col_type, sa.Integer):
        return [str(v) if type(v) is int else text(v) for v in values]
    if isinstance(col_type, sa.DateTime):
        first = values[0] if values else None
        if type(first) is datetime and first.tzinfo is None and values.count(first) == len(values):
            return [first.isoformat(" ")] * len(values)  # one moment for the whole batch (ObservedAt, UpdatedAt)
        return [v.isoformat(" ") if type(v) is datetime and v.tzinfo is None else text(v) for v in values]
    if isinstance(col_type, sa.String):
        plain = [v for v in values if type(v) is str]
        if _PG_SPECIAL.search("".join(plain)) is None:  # the usual case: nothing in the column to escape
            return [v if type(v) is str else text(v) for v in values]
        return [v if type(v) is str and not _PG_SPECIAL.search(v) else text(v) for v in values]
    return [text(v) for v in values]


def _mysql_column(dbapi, values: list) -> list[str]:
    """One column as MySQL literals, escaped by the connection (it knows NO_BACKSLASH_ESCAPES)."""
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


_PG_SPECIAL = re.compile(r"[\\\t\n\r]")


def _pg_text(value) -> str:
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
