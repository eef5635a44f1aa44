"""Suppression: who must not be texted by a sender, the one concept both sides share.

The inbound side writes it (opt-out, opt-in and help replies listed by the suppression refresh or
found by the keyword parse; 21610 failures seen by the status fetch); the outbound side reads it when
it plans a send and writes it too, when Twilio refuses a send with 21610 (the recipient opted out
before we listed their STOP). Both import this module and neither imports the other.

`TwilioSMS_Suppression` keeps every activity row (PhoneNumber, ActivityDate, sender, Activity,
Account); a number is suppressed for a sender while its latest opt-out/opt-in activity there is an
opt-out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from twilio_pipeline.channels import Channel
from twilio_pipeline.dates import to_naive_utc
from twilio_pipeline.db import Database
from twilio_pipeline.db.schema import PHONE, SID
from twilio_pipeline.rules.keywords import HELP_KEYWORDS, OPT_IN_KEYWORDS, OPT_OUT_KEYWORDS

OPTED_OUT_CODE = 21610  # Twilio: "Attempt to send to unsubscribed recipient"
SUPPRESSION_MATCH = ("PhoneNumber", "ActivityDate", "TwilioNumber", "Activity", "Account")
ACCOUNT = sa.Unicode(64)
_UNION_CHUNK = 200  # SQLite allows 500 terms in one compound SELECT


def same_account(column: sa.ColumnElement, channel: Channel) -> sa.ColumnElement[bool]:
    """Rows of the channel's account (an `Account` column: NULL is the deployment's own account)."""
    key = channel.account_key
    return column.is_(None) if key is None else column == key


def merge_suppression_from(db: Database, conn: Connection, stg: sa.Table,
                           account: str | None) -> tuple[int, int, int]:
    """Opt-out, opt-in and help replies of the staged messages -> TwilioSMS_Suppression (new rows per class),
    recorded for `account` (the channel's `account_key`: whose sender they were sent to).

    The activity is dated as the message was first kept in TwilioSMS_Inbound, so a reply whose date had to
    be stood in for gets the same date however often it is listed again."""
    ib = db.tables.inbound
    kept = sa.select(ib.c.DateSent).where(ib.c.MessageSID == stg.c.MessageSID).scalar_subquery()
    counts = []
    for words in (OPT_OUT_KEYWORDS, OPT_IN_KEYWORDS, HELP_KEYWORDS):
        source = (
            sa.select(
                stg.c.FromNumber.label("PhoneNumber"),
                sa.func.coalesce(kept, stg.c.DateSent).label("ActivityDate"),
                stg.c.MessagingServiceID.label("MessagingServiceID"),
                stg.c.ToNumber.label("TwilioNumber"),
                stg.c.Keyword.label("Activity"),
                sa.literal(account, ACCOUNT).label("Account"),
            )
            .where(stg.c.Keyword.in_(words), stg.c.FromNumber.is_not(None), stg.c.DateSent.is_not(None))
            .distinct()
        )
        counts.append(db.insert_missing(conn, db.tables.suppression, source, match=SUPPRESSION_MATCH))
    return counts[0], counts[1], counts[2]


def suppressed_numbers(db: Database, channel: Channel) -> sa.Select:
    """Numbers whose latest opt-out/opt-in activity for this sender is an opt-out (one column, PhoneNumber).

    The sender is the from_number, or the Messaging Service (its SID, or any number of its pool):
    Twilio opts a recipient out of the whole service when they reply STOP to one of its numbers. On a
    tie in ActivityDate the opt-out wins, since a lost STOP is a legal defect and an extra one is not.
    """
    s = db.tables.suppression
    if channel.uses_service:
        sn = db.tables.service_numbers
        pool = sa.select(sn.c.PhoneNumber).where(sn.c.ServiceSID == channel.messaging_service_sid)
        scope = sa.or_(s.c.MessagingServiceID == channel.messaging_service_sid, s.c.TwilioNumber.in_(pool))
    else:
        scope = s.c.TwilioNumber == channel.from_number
    # An opt-out belongs to the account whose sender received it: the same number on another account is
    # another sender, and Twilio keeps their opt-outs apart too.
    scope = sa.and_(scope, same_account(s.c.Account, channel))
    is_out = s.c.Activity.in_(OPT_OUT_KEYWORDS)
    ranked = (
        sa.select(
            s.c.PhoneNumber,
            sa.case((is_out, 1), else_=0).label("IsOptOut"),
            sa.func.row_number().over(
                partition_by=s.c.PhoneNumber,
                order_by=(s.c.ActivityDate.desc(), sa.case((is_out, 0), else_=1)),
            ).label("rn"),
        )
        .where(scope, s.c.Activity.in_(OPT_OUT_KEYWORDS + OPT_IN_KEYWORDS))
        .subquery("latest_activity")
    )
    return sa.select(ranked.c.PhoneNumber).where(ranked.c.rn == 1, ranked.c.IsOptOut == 1)


def record_refusals_as_stop(db: Database, conn: Connection, channel: Channel, rows: Iterable[Mapping]) -> int:
    """Record sends refused (or failed) with 21610 as Activity STOP, in the caller's transaction.

    Each row needs the recipient (`ToNumber` or `PhoneNumber`) and when (`ActivityDate`, `AttemptedAt`
    or `Timestamp`); `TwilioNumber` defaults to the channel's from_number. Twilio only refuses with
    21610 after an opt-out we may not have listed yet (e.g. older than the retrieval period), so the
    refusal itself is the evidence. Returns the rows added.
    """
    records = []
    for row in rows:
        phone = row.get("ToNumber") or row.get("PhoneNumber")
        when = row.get("ActivityDate") or row.get("AttemptedAt") or row.get("Timestamp")
        if not phone or when is None:
            continue
        records.append({
            "PhoneNumber": phone,
            "ActivityDate": to_naive_utc(when),
            "MessagingServiceID": row.get("MessagingServiceID") or channel.messaging_service_sid,
            "TwilioNumber": row.get("TwilioNumber") or channel.from_number,
            "Activity": "STOP",
            "Account": channel.account_key,
        })
    added = 0
    types = {"PhoneNumber": PHONE, "ActivityDate": sa.DateTime, "MessagingServiceID": SID,
             "TwilioNumber": PHONE, "Activity": sa.Unicode(20), "Account": ACCOUNT}
    for start in range(0, len(records), _UNION_CHUNK):
        part = records[start:start + _UNION_CHUNK]
        selects = [sa.select(*[sa.literal(r[c], types[c]).label(c) for c in types]) for r in part]
        source = sa.union(*selects) if len(selects) > 1 else selects[0]
        added += db.insert_missing(conn, db.tables.suppression, source.subquery("refusals"), match=SUPPRESSION_MATCH)
    return added
