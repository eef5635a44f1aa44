"""The guide's Queue Listener, as data: which executions are ready to send now, and what the rest wait for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from twilio_pipeline.db import Database, utcnow


def ready_executions(db: Database, now: datetime | None = None, limit: int = 50) -> list[tuple[int, str]]:
    """(ChannelExecutionID, ChannelName) with Status `ready` whose SendAfter has passed, oldest first."""
    ex = db.tables.executions
    now = now or utcnow()
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(ex.c.ChannelExecutionID, ex.c.ChannelName)
            .where(ex.c.Status == "ready", sa.or_(ex.c.SendAfter.is_(None), ex.c.SendAfter <= now))
            .order_by(ex.c.ChannelExecutionID)
            .limit(limit)
        ).all()
    return [(int(r[0]), r[1]) for r in rows]


@dataclass(frozen=True)
class QueueOverview:
    """Why nothing is due: executions waiting for their SendAfter, executions that failed (and why)."""

    waiting: int
    next_send_after: datetime | None
    failed: int
    failed_examples: list[tuple[int, str | None]]


def queue_overview(db: Database, now: datetime | None = None, examples: int = 5) -> QueueOverview:
    ex = db.tables.executions
    now = now or utcnow()
    with db.connect() as conn:
        waiting, next_at = conn.execute(
            sa.select(sa.func.count(), sa.func.min(ex.c.SendAfter))
            .where(ex.c.Status == "ready", ex.c.SendAfter > now)).one()
        failed = conn.execute(sa.select(sa.func.count()).where(ex.c.Status == "failed")).scalar_one()
        rows = conn.execute(
            sa.select(ex.c.ChannelExecutionID, ex.c.StatusReason).where(ex.c.Status == "failed")
            .order_by(ex.c.ChannelExecutionID.desc()).limit(examples + 1)).all()
    return QueueOverview(int(waiting), next_at, int(failed), [(int(r[0]), r[1]) for r in rows])
