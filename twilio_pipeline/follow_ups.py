"""Follow-ups (the guide: "ideal for sending follow-up messages, depending on the response").

A channel's `follow_ups: {MORE: {body: ...}}` turns the contacts who replied MORE into a new execution
with Status `ready`, which the queue listener sends. Each reply is followed up at most once (its SID is
the key of TwilioSMS_FollowUps, written in the transaction that creates the execution).

Follow-up executions take *negative* ChannelExecutionIDs (-1, -2, ...): upstream tools own the positive
range, so the two can never collide.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from twilio_pipeline.channels import Channel
from twilio_pipeline.db import Database, utcnow

MAX_REPLIES_PER_PASS = 50_000


def _sender_filter(inbound: sa.Table, channel: Channel):
    if channel.uses_service:
        return inbound.c.MessagingServiceID == channel.messaging_service_sid
    return inbound.c.ToNumber == channel.from_number


def create_follow_ups(db: Database, channel: Channel, *, log) -> list[int]:
    """Create one follow-up execution per keyword with new replies; returns the new execution IDs."""
    if not channel.follow_ups:
        return []
    t = db.tables
    inbound, ledger, execs, oh, fu = t.inbound, t.ledger, t.executions, t.offer_history, t.follow_ups
    keywords = list(channel.follow_ups)
    already = sa.select(sa.literal(1)).select_from(fu).where(fu.c.ReplySID == inbound.c.MessageSID)
    replies_q = (
        sa.select(inbound.c.MessageSID, inbound.c.FromNumber, inbound.c.Keyword)
        .where(inbound.c.Keyword.in_(keywords), inbound.c.ParsedAt.is_not(None), _sender_filter(inbound, channel),
               ~already.exists())
        .order_by(inbound.c.DateSent)
        .limit(MAX_REPLIES_PER_PASS)
    )
    latest = (
        sa.select(ledger.c.ToNumber, sa.func.max(ledger.c.AttemptedAt).label("at"))
        .join(execs, execs.c.ChannelExecutionID == ledger.c.ChannelExecutionID)
        .where(execs.c.ChannelName == channel.name, ledger.c.Outcome == "sent", ledger.c.IsSeed == sa.false())
        .group_by(ledger.c.ToNumber)
        .subquery("latest")
    )
    contact_q = (
        sa.select(ledger.c.ToNumber, ledger.c.RPContactID, ledger.c.ChannelExecutionID)
        .join(execs, execs.c.ChannelExecutionID == ledger.c.ChannelExecutionID)
        .join(latest, sa.and_(latest.c.ToNumber == ledger.c.ToNumber, latest.c.at == ledger.c.AttemptedAt))
        .where(execs.c.ChannelName == channel.name, ledger.c.Outcome == "sent")
    )
    created: list[int] = []
    for attempt in range(3):
        try:
            with db.begin() as conn:
                replies = conn.execute(replies_q).all()
                if not replies:
                    return []
                numbers = {r.FromNumber for r in replies}
                contacts = {}
                ordered = sorted(numbers)
                for start in range(0, len(ordered), 1000):
                    part = ordered[start:start + 1000]
                    for row in conn.execute(contact_q.where(ledger.c.ToNumber.in_(part))):
                        contacts[row.ToNumber] = row
                attrs = _attributes(conn, oh, {(c.ChannelExecutionID, c.RPContactID) for c in contacts.values()})
                lowest = conn.execute(sa.select(sa.func.min(execs.c.ChannelExecutionID))).scalar() or 0
                next_id = min(lowest, 0) - 1
                now = utcnow()
                for keyword in keywords:
                    mine = [r for r in replies if r.Keyword == keyword and r.FromNumber in contacts]
                    if not mine:
                        continue
                    spec = channel.follow_ups[keyword]
                    eid = next_id
                    next_id -= 1
                    conn.execute(execs.insert().values(
                        ChannelExecutionID=eid, ChannelName=channel.name, MessageBody=spec.body,
                        MediaUrl=spec.media_url, Status="ready",
                        StatusReason=f"follow-up of {keyword} replies", CreatedAt=now))
                    seen: set[int] = set()
                    oh_rows, fu_rows = [], []
                    for r in mine:
                        c = contacts[r.FromNumber]
                        fu_rows.append(dict(ReplySID=r.MessageSID, FollowUpExecutionID=eid, ChannelName=channel.name,
                                            Keyword=keyword, RPContactID=c.RPContactID, CreatedAt=now))
                        if c.RPContactID in seen:
                            continue
                        seen.add(c.RPContactID)
                        oh_rows.append(dict(RPContactID=c.RPContactID, ChannelExecutionID=eid, AddressKey=r.FromNumber,
                                            Attributes=attrs.get((c.ChannelExecutionID, c.RPContactID))))
                    db.bulk_insert(conn, oh, oh_rows)
                    db.bulk_insert(conn, fu, fu_rows)
                    created.append(eid)
                    log.info(f"Action: {channel.name} Activity: follow-up execution {eid} created for "
                             f"{len(oh_rows)} contact(s) who replied {keyword}")
            return created
        except IntegrityError:
            created = []  # another process created a follow-up at the same time: read again
            if attempt == 2:
                raise
    return created


def _attributes(conn, oh: sa.Table, keys: set[tuple[int, int]]) -> dict[tuple[int, int], str | None]:
    if not keys:
        return {}
    out: dict[tuple[int, int], str | None] = {}
    by_exec: dict[int, list[int]] = {}
    for eid, cid in keys:
        by_exec.setdefault(eid, []).append(cid)
    for eid, cids in by_exec.items():
        for start in range(0, len(cids), 1000):
            part = cids[start:start + 1000]
            for row in conn.execute(sa.select(oh.c.RPContactID, oh.c.Attributes)
                                    .where(oh.c.ChannelExecutionID == eid, oh.c.RPContactID.in_(part))):
                out[(eid, row.RPContactID)] = row.Attributes
    return out
