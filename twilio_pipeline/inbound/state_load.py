"""State bulk-load (the guide's inbound steps 4-6 and 12): pending observations -> OfferHistorySG_States.

One transaction per call: the pending batch is copied (deduplicated) into a per-run staging table,
merged with `INSERT ... SELECT ... WHERE NOT EXISTS` on CONTRACT.md's uniqueness (delivery states: one
row per execution, contact and FulfillmentState; replies: one per execution, contact, EventName and
Timestamp), then the SIDs whose terminal state it stored are retired from Twilio_MessageIDs and the
batch leaves the pending table. A crash anywhere rolls all of it back: the next load repeats it, and
nothing is lost or stored twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from twilio_pipeline.db import Database
from twilio_pipeline.inbound.aggregate import write_inbound_results
from twilio_pipeline.inbound.common import Summary, serialize_writers, staging
from twilio_pipeline.logs import Log
from twilio_pipeline.rules.states import REPLIED

DELIVERY_KEY = ("ChannelExecutionID", "RPContactID", "FulfillmentState")
REPLY_KEY = ("ChannelExecutionID", "RPContactID", "FulfillmentState", "EventName", "Timestamp")
STATE_COLUMNS = ("RPContactID", "ChannelExecutionID", "FulfillmentState", "EventName", "Timestamp")
# From this many pending rows the planner gets fresh statistics before the merge (see refresh_statistics);
# below it, the index probes it picks without them are the right plan anyway.
BIG_BATCH = 50_000


def _staging_columns() -> list[sa.Column]:
    return [
        sa.Column("ChannelExecutionID", sa.Integer, nullable=False),
        sa.Column("RPContactID", sa.BigInteger, nullable=False),
        sa.Column("FulfillmentState", sa.Unicode(40), nullable=False),
        sa.Column("EventName", sa.Unicode(255)),
        sa.Column("Timestamp", sa.DateTime),
    ]


@dataclass
class LoadSummary(Summary):
    pending: int = 0
    delivery_states: int = 0
    replies: int = 0
    already_stored: int = 0
    retired: int = 0
    executions: list[int] = field(default_factory=list)


def load_states(db: Database, *, log: Log, execution_ids: list[int] | None = None) -> LoadSummary:
    """Drain the pending observations (of `execution_ids`, or all) into OfferHistorySG_States."""
    summary = LoadSummary()
    p = db.tables.pending_states
    scope = p.c.ChannelExecutionID.in_(list(execution_ids)) if execution_ids is not None else sa.true()
    if execution_ids is not None and not execution_ids:
        return summary
    dropped = db.drop_orphan_staging()
    if dropped:
        log.info(f"dropped {len(dropped)} staging table(s) left by killed runs: {', '.join(dropped)}")
    with staging(db, "states", _staging_columns()) as stg:
        with db.begin() as conn:
            serialize_writers(db, conn, "states")
            # Writers of pending rows take the same lock, so the batch read here is exactly what is
            # deleted below: no row committed in between can be dropped unloaded.
            per_execution = conn.execute(
                sa.select(p.c.ChannelExecutionID, sa.func.count(), sa.func.max(p.c.PendingID))
                .where(scope).group_by(p.c.ChannelExecutionID)).all()
            if not per_execution:
                log.info("state load: nothing pending")
                return summary
            top = max(r[2] for r in per_execution)
            batch = sa.and_(scope, p.c.PendingID <= top)
            summary.pending = sum(r[1] for r in per_execution)
            summary.executions = sorted(r[0] for r in per_execution)
            _stage_batch(conn, stg, p, batch)
            if summary.pending >= BIG_BATCH:  # a backfill or a first sync of a huge send
                db.refresh_statistics(conn, p, stg)
            distinct = conn.execute(sa.select(sa.func.count()).select_from(stg)).scalar() or 0
            summary.delivery_states = db.insert_missing(
                conn, db.tables.states,
                sa.select(*[stg.c[c] for c in STATE_COLUMNS]).where(stg.c.FulfillmentState != REPLIED),
                match=DELIVERY_KEY)
            summary.replies = db.insert_missing(
                conn, db.tables.states,
                sa.select(*[stg.c[c] for c in STATE_COLUMNS]).where(stg.c.FulfillmentState == REPLIED),
                match=REPLY_KEY)
            summary.retired = retire_sids(db, conn, batch)
            conn.execute(p.delete().where(batch))
            summary.already_stored = distinct - summary.delivery_states - summary.replies
            # The results move with the states: a sync killed before its aggregate step (once these SIDs
            # are retired, nothing makes the execution eligible again) must not leave them stale.
            write_inbound_results(db, conn, summary.executions)
    log.info(
        f"state load: {summary.pending} pending observation(s) for {len(summary.executions)} execution(s): "
        f"{summary.delivery_states} delivery state(s) and {summary.replies} reply state(s) stored, "
        f"{summary.retired} SID(s) retired"
    )
    return summary


def _stage_batch(conn: Connection, stg: sa.Table, p: sa.Table, batch) -> None:
    """The batch, one row per key: a delivery state observed twice keeps its first Timestamp."""
    delivery = (
        sa.select(p.c.ChannelExecutionID, p.c.RPContactID, p.c.FulfillmentState,
                  sa.func.max(p.c.EventName), sa.func.min(p.c.Timestamp))
        .where(batch, p.c.FulfillmentState != REPLIED)
        .group_by(p.c.ChannelExecutionID, p.c.RPContactID, p.c.FulfillmentState)
    )
    replies = (
        sa.select(p.c.ChannelExecutionID, p.c.RPContactID, p.c.FulfillmentState, p.c.EventName, p.c.Timestamp)
        .where(batch, p.c.FulfillmentState == REPLIED)
        .distinct()
    )
    cols = ["ChannelExecutionID", "RPContactID", "FulfillmentState", "EventName", "Timestamp"]
    conn.execute(stg.insert().from_select(cols, delivery))
    conn.execute(stg.insert().from_select(cols, replies))


def retire_sids(db: Database, conn: Connection, batch) -> int:
    """Delete from Twilio_MessageIDs the SIDs whose terminal state this transaction stores."""
    p, ids_t = db.tables.pending_states, db.tables.message_ids
    terminal = (batch, p.c.Terminal == sa.true(), p.c.MessageID.is_not(None))
    if db.is_mysql:  # a multi-table DELETE joins; MariaDB runs `IN (SELECT ...)` once per Twilio_MessageIDs row
        res = conn.execute(ids_t.delete().where(ids_t.c.MessageID == p.c.MessageID, *terminal))
    else:
        res = conn.execute(ids_t.delete().where(ids_t.c.MessageID.in_(sa.select(p.c.MessageID).where(*terminal))))
    return max(res.rowcount or 0, 0)
