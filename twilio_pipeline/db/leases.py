"""Leases: which run holds an execution, fenced by a token and kept by a heartbeat.

One row per key in the leases table. Expiry is read on the database's own clock (hosts' clocks may
differ); whether a holder is alive is decided in one place, `holder_is_live`, for the taker
(`take_lease`) and for whoever asks who is sending (`live_lease_holder`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from twilio_pipeline.dates import utcnow
from twilio_pipeline.processes import pid_alive, pid_started_after

MYSQL_DEADLOCK = 1213  # ER_LOCK_DEADLOCK


@dataclass(frozen=True)
class LeaseHolder:
    owner: str
    host: str
    pid: int
    expires_at: datetime
    acquired_at: datetime | None = None


def holder_is_live(holder: LeaseHolder, here: str, now: datetime | None) -> bool:
    """Whether `holder` may still be working, seen from host `here` at the database time `now`.

    On this host its process decides, expired or not: a live pid whose heartbeat is stuck (a stalled
    database) may still be sending, so it is never taken over; a dead pid, or one reused since the lease
    was taken, is gone at once. Another host's process cannot be seen: its lease lives until it expires
    (`now` is only read for that case)."""
    if holder.host == here:
        return pid_alive(holder.pid) and not (holder.acquired_at is not None
                                              and pid_started_after(holder.pid, holder.acquired_at))
    return now is not None and holder.expires_at >= now


def _holder(row: Mapping) -> LeaseHolder:
    return LeaseHolder(row["Owner"], row["Host"], row["Pid"], row["ExpiresAt"], row["AcquiredAt"])


class LeaseStore:
    """The lease operations of `Database` (a mixin: it uses the database's tables, engine and dialect)."""

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
                    holder = _holder(row)
                    if holder.owner != owner and holder_is_live(holder, self.host, now):
                        return None, holder
                    token = int(row["FencingToken"] or 0) + 1
                    same_token = (leases.c.FencingToken.is_(None) if row["FencingToken"] is None
                                  else leases.c.FencingToken == row["FencingToken"])
                    updated = conn.execute(
                        leases.update()
                        .where(leases.c.LeaseKey == key, leases.c.Owner == row["Owner"], same_token)
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
        """The holder of `key` if it is alive (`holder_is_live`, the rule take_lease applies too)."""
        holder = self.lease_holder(key)
        if holder is None:
            return None
        now = None
        if holder.host != self.host:  # only a remote holder is judged by the clock
            with self.engine.connect() as conn:
                now = conn.execute(sa.select(self.clock())).scalar()
        return holder if holder_is_live(holder, self.host, now) else None

    def lease_holder(self, key: str) -> LeaseHolder | None:
        leases = self.tables.leases
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.LeaseKey == key)).mappings().first()
        return None if row is None else _holder(row)
