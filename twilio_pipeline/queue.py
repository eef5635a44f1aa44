"""The guide's Queue Listener, as data: which executions are ready to send now."""

from __future__ import annotations

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
