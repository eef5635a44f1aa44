"""Eligible executions (the guide's inbound step 2): what a channel sync has to look at.

An execution of the channel is eligible while it has SIDs still tracked in Twilio_MessageIDs, pending
observations not yet loaded, or unparsed keyword replies from a number it messaged. `records_per_sync`
bounds one sync: executions are taken oldest first until their records reach the limit (at least one
is always taken); the rest wait for the next sync and nothing is dropped.
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa

from twilio_pipeline.channels import Channel
from twilio_pipeline.db import Database
from twilio_pipeline.inbound.common import channel_execution_ids, inbound_scope


def eligible_counts(db: Database, channel: Channel) -> dict[int, int]:
    """Execution -> records waiting for it (tracked SIDs + pending observations + unparsed replies)."""
    t = db.tables
    ids_t, pending, ib, led = t.message_ids, t.pending_states, t.inbound, t.ledger
    mine = channel_execution_ids(db, channel).scalar_subquery()
    counts: dict[int, int] = defaultdict(int)
    unparsed = (
        sa.select(ib.c.FromNumber)
        .where(ib.c.ParsedAt.is_(None), ib.c.Keyword.is_not(None), inbound_scope(db, channel))
        .subquery("unparsed")
    )
    queries = [
        sa.select(ids_t.c.ChannelExecutionID, sa.func.count())
        .where(ids_t.c.ChannelExecutionID.in_(mine)).group_by(ids_t.c.ChannelExecutionID),
        sa.select(pending.c.ChannelExecutionID, sa.func.count())
        .where(pending.c.ChannelExecutionID.in_(mine)).group_by(pending.c.ChannelExecutionID),
        sa.select(led.c.ChannelExecutionID, sa.func.count())
        .select_from(led.join(unparsed, unparsed.c.FromNumber == led.c.ToNumber))
        .where(led.c.ChannelExecutionID.in_(mine), led.c.Outcome == "sent", led.c.IsSeed == sa.false())
        .group_by(led.c.ChannelExecutionID),
    ]
    with db.connect() as conn:
        for q in queries:
            for eid, n in conn.execute(q):
                counts[int(eid)] += int(n)
    return dict(counts)


def eligible_executions(db: Database, channel: Channel, *, limit_records: int | None = None) -> list[int]:
    """The channel's executions with something to sync, oldest (lowest ID) first, bounded by `limit_records`."""
    counts = eligible_counts(db, channel)
    chosen: list[int] = []
    total = 0
    for eid in sorted(counts):
        if limit_records is not None and chosen and total >= limit_records:
            break
        chosen.append(eid)
        total += counts[eid]
    return chosen
