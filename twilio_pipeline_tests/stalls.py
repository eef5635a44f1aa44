"""A database that stalls: another connection holds a table until the block ends, as a long transaction, a
backup or a lock queue does in production (PostgreSQL: an ACCESS EXCLUSIVE lock; MariaDB: LOCK TABLES ...
WRITE; SQLite: the whole database's write lock)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from twilio_pipeline.db import Database


@contextmanager
def stalled(db: Database, table: sa.Table) -> Iterator[None]:
    """Every other connection's read or write of `table` waits until the block ends."""
    if db.dialect == "postgresql":
        conn = db.engine.connect()
        tx = conn.begin()
        conn.exec_driver_sql(f"LOCK TABLE {db._quoted_name(table)} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            tx.commit()
            conn.close()
    elif db.is_mysql:
        with db.engine.connect() as conn:
            conn.exec_driver_sql(f"LOCK TABLES {db._quoted_name(table)} WRITE")
            try:
                yield
            finally:
                conn.exec_driver_sql("UNLOCK TABLES")
    else:
        raw = sqlite3.connect(db.url.database, isolation_level=None, timeout=30)
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            raw.execute("COMMIT")
            raw.close()
