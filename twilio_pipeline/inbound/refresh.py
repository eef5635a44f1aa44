"""Suppression refresh: list the sender's inbound messages once, keep them, merge opt-outs/opt-ins.

The guide's outbound step 2 and inbound steps 9-13. Every inbound message listed is kept in
`TwilioSMS_Inbound` (merged on MessageSID), so the keyword parse of the channel sync reads the same
rows and no reply is lost between the two. The listing starts at the sender's watermark minus a small
overlap (the first refresh reads back `retrieval_period_days`), pages stream into a staging table,
and one transaction merges them and only then advances the watermark: a failed load re-lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from twilio_pipeline.channels import Channel
from twilio_pipeline.dates import twilio_time
from twilio_pipeline.db import Database
from twilio_pipeline.db.schema import PHONE, SID
from twilio_pipeline.inbound.common import serialize_writers, utc_now
from twilio_pipeline.logs import Log
from twilio_pipeline.rules.keywords import normalise_keyword
from twilio_pipeline.rules.render import storable
from twilio_pipeline.summary import Summary
from twilio_pipeline.suppression import ACCOUNT, merge_suppression_from
from twilio_pipeline.twilio import TwilioClient

# Re-listed before the watermark: a message Twilio shows a little late is still caught; the merge on
# MessageSID makes the re-read harmless.
LISTING_OVERLAP = timedelta(minutes=5)


def inbound_staging_columns() -> list[sa.Column]:
    return [
        sa.Column("MessageSID", SID, nullable=False),
        sa.Column("FromNumber", PHONE),
        sa.Column("ToNumber", PHONE),
        sa.Column("MessagingServiceID", SID),
        sa.Column("Body", sa.UnicodeText),
        sa.Column("Keyword", sa.Unicode(50)),
        sa.Column("DateSent", sa.DateTime),
        sa.Column("Account", ACCOUNT),
    ]


@dataclass
class RefreshSummary(Summary):
    sender: str = ""
    since: datetime | None = None
    pool_numbers: int = 0
    listed: int = 0
    inbound: int = 0
    new_inbound: int = 0
    keywords: int = 0
    free_text: int = 0
    opt_outs: int = 0
    opt_ins: int = 0
    helps: int = 0
    api_calls: int = 0
    watermark: datetime | None = None


def inbound_row(msg: Mapping, channel: Channel) -> dict | None:
    """A listed message -> a TwilioSMS_Inbound row (None for outbound messages or no SID)."""
    sid = msg.get("sid")
    direction = msg.get("direction")
    if not isinstance(sid, str) or not sid or direction not in (None, "inbound"):
        return None
    service = msg.get("messaging_service_sid")
    if channel.uses_service and not service:
        service = channel.messaging_service_sid
    body = msg.get("body")
    body = storable(body) if isinstance(body, str) else body  # a NUL in one reply must not stop every sync
    return {
        "MessageSID": sid,
        "FromNumber": msg.get("from"),
        "ToNumber": msg.get("to"),
        "MessagingServiceID": service,
        "Body": body,
        "Keyword": normalise_keyword(body, channel.keywords),
        # An unreadable date_sent must not hide a readable date_created.
        "DateSent": twilio_time(msg.get("date_sent")) or twilio_time(msg.get("date_created")),
        "Account": channel.account_key,
    }


def watermark_key(channel: Channel) -> str:
    """The sender, qualified by the channel's named account: the same number on two (sub)accounts has two
    inboxes, each read from its own watermark. The deployment's own account keeps the plain sender."""
    return channel.sender if channel.account_key is None else f"{channel.sender}@{channel.account_key}"


def receiving_senders(client: TwilioClient, channel: Channel) -> list[str]:
    """Where the channel's replies arrive: its from_number, or every sender of its Messaging Service that
    can receive (phone numbers and short codes; alphanumeric sender IDs are one-way)."""
    if not channel.uses_service:
        return [channel.from_number]  # type: ignore[list-item]
    return client.list_service_receiving_senders(channel.messaging_service_sid)


def refresh_inbound(db: Database, client: TwilioClient, channel: Channel, *, log: Log,
                    now: datetime | None = None, overlap: timedelta = LISTING_OVERLAP) -> RefreshSummary:
    """List the sender's inbound messages newer than its watermark, keep them and merge the
    opt-out/opt-in activity into TwilioSMS_Suppression; advance the watermark after the commit."""
    now = utc_now(now)
    sender = channel.sender
    key = watermark_key(channel)
    summary = RefreshSummary(sender=sender)
    calls_before = client.request_count
    with db.connect() as conn:
        watermark = db.get_watermark(conn, key)
    floor = now - timedelta(days=channel.retrieval_period_days)
    since = floor if watermark is None else max(floor, watermark - overlap)
    summary.since = since

    numbers = receiving_senders(client, channel)
    if channel.uses_service:
        summary.pool_numbers = len(numbers)

    latest: datetime | None = None
    with db.staging_table("inbound", inbound_staging_columns()) as stg:
        for number in numbers:
            for page in client.iter_message_pages(to=number, date_sent_after=since):
                summary.listed += len(page)
                rows = []
                for msg in page:
                    row = inbound_row(msg, channel)
                    if row is None:
                        continue
                    rows.append(row)
                    if row["DateSent"] is None:
                        # No readable date: keep the reply all the same (a STOP must never be lost: opt-outs
                        # and attribution need a date), dated by date_updated or when it was fetched. Such a
                        # date is a stand-in, so it never moves the watermark.
                        row["DateSent"] = twilio_time(msg.get("date_updated")) or now
                    elif latest is None or row["DateSent"] > latest:
                        latest = row["DateSent"]
                    if row["Keyword"] is None:
                        summary.free_text += 1
                    else:
                        summary.keywords += 1
                if rows:
                    with db.begin() as conn:
                        db.bulk_insert(conn, stg, rows)
                    summary.inbound += len(rows)
        with db.begin() as conn:
            serialize_writers(db, conn, "inbound")  # one MessageSID may be listed by two senders' refreshes
            if channel.uses_service:
                record_service_numbers(db, conn, channel.messaging_service_sid, numbers, now)
            summary.new_inbound = merge_inbound(db, conn, stg, now)
            counts = merge_suppression_from(db, conn, stg, channel.account_key)
            summary.opt_outs, summary.opt_ins, summary.helps = counts
            if latest is not None:
                db.set_watermark(conn, key, latest)
    with db.connect() as conn:
        summary.watermark = db.get_watermark(conn, key)
    summary.api_calls = client.request_count - calls_before
    log.info(
        f"suppression refresh for {sender}: listed {summary.listed} message(s) since {since:%Y-%m-%d %H:%M:%S} "
        f"({summary.new_inbound} new inbound, {summary.keywords} keyword, {summary.free_text} free text); "
        f"{summary.opt_outs} new opt-out(s), {summary.opt_ins} new opt-in(s); {summary.api_calls} API call(s)"
    )
    return summary


def record_service_numbers(db: Database, conn: Connection, service_sid: str, numbers: Iterable[str],
                           now: datetime) -> None:
    """Remember the pool's receiving senders, numbers and short codes (never forgotten: a STOP to a former
    pool sender still counts)."""
    sn = db.tables.service_numbers
    existing = {r[0] for r in conn.execute(sa.select(sn.c.PhoneNumber).where(sn.c.ServiceSID == service_sid))}
    new = [{"ServiceSID": service_sid, "PhoneNumber": n, "SeenAt": now} for n in dict.fromkeys(numbers)
           if n not in existing]
    if new:
        conn.execute(sn.insert(), new)


def merge_inbound(db: Database, conn: Connection, stg: sa.Table, now: datetime) -> int:
    """INSERT the staged messages not yet kept (a message listed twice in one run counts once)."""
    cols = [c.name for c in stg.columns if c.name != "MessageSID"]
    source = (
        sa.select(stg.c.MessageSID, *[sa.func.max(stg.c[c]).label(c) for c in cols],
                  sa.literal(now, sa.DateTime).label("FetchedAt"))
        .group_by(stg.c.MessageSID)
    )
    return db.insert_missing(conn, db.tables.inbound, source, match=["MessageSID"])
