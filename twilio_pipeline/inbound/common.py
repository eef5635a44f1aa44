"""Small pieces the inbound steps share: the sender's number scope, status-rank SQL and
the write lock that keeps two overlapping syncs from inserting the same row twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from twilio_pipeline.channels import Channel
from twilio_pipeline.dates import to_naive_utc
from twilio_pipeline.db import Database
from twilio_pipeline.rules.states import STATUS_RANK, state_name
from twilio_pipeline.suppression import same_account

# Rows buffered before a bulk insert into a staging table: bounds memory on any listing size.
CHUNK_ROWS = 5_000


def naive(dt: datetime | None) -> datetime | None:
    return to_naive_utc(dt)


def utc_now(now: datetime | None = None) -> datetime:
    """`now` as naive UTC (the tables' representation); the wall clock when None."""
    if now is None:
        return datetime.now(UTC).replace(tzinfo=None)
    return to_naive_utc(now)


def chunked(rows: Iterable[Mapping], size: int = CHUNK_ROWS) -> Iterator[list[Mapping]]:
    buf: list[Mapping] = []
    for row in rows:
        buf.append(row)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def serialize_writers(db: Database, conn: Connection, key: str) -> None:
    """Hold a transaction-scoped lock on `key` so two overlapping runs merge one after the other.

    INSERT ... WHERE NOT EXISTS is exact only when no other transaction inserts the same row at the
    same time; SQLite already serialises writers (BEGIN IMMEDIATE), PostgreSQL and MariaDB need an advisory lock.
    """
    db.transaction_lock(conn, f"{db.schema or ''}.{db.prefix}:{key}")


def sender_numbers_select(db: Database, channel: Channel) -> sa.Select:
    """The senders that receive the channel's replies: its from_number, or its service's pool (numbers and
    short codes) as last listed."""
    if not channel.uses_service:
        return sa.select(sa.literal(channel.from_number, sa.Unicode(64)).label("PhoneNumber"))
    sn = db.tables.service_numbers
    return sa.select(sn.c.PhoneNumber).where(sn.c.ServiceSID == channel.messaging_service_sid)


def inbound_scope(db: Database, channel: Channel) -> sa.ColumnElement[bool]:
    """TwilioSMS_Inbound rows that are replies to this channel's sender on the channel's account."""
    ib = db.tables.inbound
    if not channel.uses_service:
        return sa.and_(ib.c.ToNumber == channel.from_number, same_account(ib.c.Account, channel))
    return sa.and_(sa.or_(ib.c.MessagingServiceID == channel.messaging_service_sid,
                          ib.c.ToNumber.in_(sender_numbers_select(db, channel).scalar_subquery())),
                   same_account(ib.c.Account, channel))


def rank_case(column: sa.ColumnElement, *, title_case: bool = False) -> sa.Case:
    """SQL rank of a status column (rules/states.py order); 0 for NULL or unknown."""
    whens = {(state_name(k) if title_case else k): v for k, v in STATUS_RANK.items()}
    return sa.case(whens, value=column, else_=0)


def channel_execution_ids(db: Database, channel: Channel) -> sa.Select:
    ex = db.tables.executions
    return sa.select(ex.c.ChannelExecutionID).where(ex.c.ChannelName == channel.name)


@contextmanager
def staging(db: Database, kind: str, columns: list[sa.Column], *indexes: tuple[str, ...]) -> Iterator[sa.Table]:
    """`db.staging_table` plus indexes on it (the joins against a staged listing need them)."""
    with db.staging_table(kind, columns) as table:
        if indexes:
            with db.begin() as conn:
                for i, cols in enumerate(indexes):
                    sa.Index(f"ix_{table.name}_{i}", *[table.c[c] for c in cols]).create(conn)
        yield table
