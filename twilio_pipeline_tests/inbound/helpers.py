"""Test helpers for the inbound tests: a client for a sandbox, channels, and a "sent execution"
created directly against the sandbox (the rows the outbound fulfillment writes), so the channel sync
can be tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import sqlalchemy as sa

from twilio_pipeline.audience import create_execution
from twilio_pipeline.channels import Channel
from twilio_pipeline.dates import to_naive_utc
from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.rules.states import state_name
from twilio_pipeline.twilio import Endpoints, RetrySettings, TwilioClient, TwilioCredentials, parse_twilio_date

SENDER = "+15005550006"


def make_client(sb, **kw) -> TwilioClient:
    base = sb.base_url
    return TwilioClient(
        TwilioCredentials(sb.account_sid, sb.auth_token),
        endpoints=Endpoints(api_base=base, bulkexports_base=base, messaging_base=base),
        retry=RetrySettings(max_attempts=3, min_delay_s=0.01, max_delay_s=0.05, throttle_budget_s=5),
        **kw,
    )


def make_channel(name: str = "Inbound Test", **kw) -> Channel:
    if "messaging_service_sid" not in kw:
        kw.setdefault("from_number", SENDER)
    return Channel(name=name, **kw)


def sandbox_now(sb) -> datetime:
    """The sandbox's simulated clock (naive UTC): what Twilio's "now" is for the tests."""
    return datetime.fromtimestamp(sb.clock()["now_epoch"], tz=UTC).replace(tzinfo=None)


def numbers(n: int, start: int = 0) -> list[str]:
    return [f"+1415555{i:04d}" for i in range(start, start + n)]


def send_execution(db: Database, client: TwilioClient, channel: Channel, execution_id: int,
                   recipients: Iterable[str], *, body: str = "Hello from the tests",
                   first_contact_id: int = 1, mirrors: Sequence[Database] = (), workers: int = 8) -> dict[str, str]:
    """Create an execution and send it through the sandbox: SMS_ChannelExecutions, OfferHistorySG, the
    send ledger (Outcome 'sent'), Twilio_MessageIDs (with Sender/ToNumber/SentAt/LastStatus) and the
    first state, as the outbound fulfillment writes them, into `db` and each of `mirrors` (identical
    starting points for comparing two sync paths). Returns number -> SID."""
    recipients = list(recipients)
    contacts = [(first_contact_id + i, n, None) for i, n in enumerate(recipients)]

    def send(number: str) -> dict:
        params = {"To": number, "Body": body, "ValidityPeriod": str(channel.validity_period_s)}
        if channel.uses_service:
            params["MessagingServiceSid"] = channel.messaging_service_sid
        else:
            params["From"] = channel.from_number
        result = client.create_message(params)
        assert result.accepted, (result.outcome, result.error_code, result.error_message)
        return result.message

    with ThreadPoolExecutor(max_workers=workers) as pool:
        messages = list(pool.map(send, recipients))
    ledger, ids_rows, states = [], [], []
    sids: dict[str, str] = {}
    for (rid, number, _), msg in zip(contacts, messages, strict=True):
        sids[number] = msg["sid"]
        at = to_naive_utc(parse_twilio_date(msg.get("date_updated") or msg.get("date_created")))
        ledger.append({"ChannelExecutionID": execution_id, "RPContactID": rid, "IsSeed": False,
                       "AddressKey": number, "ToNumber": number, "Body": body, "Segments": 1,
                       "Outcome": "sent", "MessageSID": msg["sid"], "MessageStatus": msg["status"],
                       "StatusAt": at, "AttemptedAt": utcnow(), "UpdatedAt": utcnow()})
        ids_rows.append({"MessageID": msg["sid"], "RPContactID": rid, "ChannelExecutionID": execution_id,
                         "Sender": channel.sender, "ToNumber": number, "SentAt": at, "LastStatus": msg["status"]})
        states.append({"RPContactID": rid, "ChannelExecutionID": execution_id,
                       "FulfillmentState": state_name(msg["status"]), "EventName": None, "Timestamp": at})
    for target in (db, *mirrors):
        create_execution(target, execution_id, channel.name, body, contacts, status="sent")
        t = target.tables
        with target.begin() as conn:
            target.bulk_insert(conn, t.ledger, ledger)
            target.bulk_insert(conn, t.message_ids, ids_rows)
            target.bulk_insert(conn, t.states, states)
            target.write_results(conn, execution_id, {"Sent": len(contacts), "Targeted": len(contacts)})
    return sids


def state_rows(db: Database, execution_id: int | None = None) -> list[tuple]:
    st = db.tables.states
    q = sa.select(st.c.ChannelExecutionID, st.c.RPContactID, st.c.FulfillmentState, st.c.EventName, st.c.Timestamp)
    if execution_id is not None:
        q = q.where(st.c.ChannelExecutionID == execution_id)
    with db.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(q))


def count(db: Database, table: sa.Table, *where) -> int:
    with db.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar() or 0


def suppressed(db: Database, channel: Channel) -> set[str]:
    from twilio_pipeline.inbound import suppressed_numbers

    with db.connect() as conn:
        return {r[0] for r in conn.execute(suppressed_numbers(db, channel))}
