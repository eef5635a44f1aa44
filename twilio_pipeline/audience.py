"""Test and demo audiences: create a channel execution with its contacts, or generate a realistic one.

Used by the tests, the demo and the benchmarks, so they all exercise the same mix: duplicates,
formatted duplicates, invalid numbers of several kinds, Twilio's refusing magic numbers and a
missing merge field.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from datetime import datetime

import sqlalchemy as sa

from twilio_pipeline.db import Database, utcnow

Contact = tuple[int, str | None, dict | None]
_INSERT_CHUNK = 50_000
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
# Numbers Twilio refuses at create time (sandbox and test credentials alike).
REFUSED_NUMBERS = ("+15005550001", "+15005550002", "+15005550003", "+15005550009")
INVALID_SPELLINGS = (
    None, "", "   ", "not a number", "12345", "+1 415 555", "+99912345678", "+1415555010012345",
    "415-555-0123", "+44 20 7946 0958 ext 12", "++14155550123",
)


def create_execution(
    db: Database,
    execution_id: int,
    channel_name: str,
    body: str | None,
    contacts: Iterable[Contact],
    status: str = "ready",
    media_url: str | None = None,
    send_after: datetime | None = None,
) -> int:
    """Insert one SMS_ChannelExecutions row and its OfferHistorySG contacts in bulk; returns the contact count.

    `contacts` may be a generator of (RPContactID, AddressKey, attributes dict or None); it is
    streamed in chunks so a million-contact audience never sits in memory.
    """
    ex = db.tables.executions
    with db.begin() as conn:
        conn.execute(ex.insert().values(
            ChannelExecutionID=int(execution_id), ChannelName=channel_name, MessageBody=body,
            MediaUrl=media_url, Status=status, CreatedAt=utcnow(), SendAfter=send_after,
        ))
    return add_contacts(db, execution_id, contacts)


def add_contacts(db: Database, execution_id: int, contacts: Iterable[Contact]) -> int:
    """Append contacts to an execution (an upstream adding recipients later)."""
    oh = db.tables.offer_history
    total = 0
    chunk: list[dict] = []
    for rpcontactid, address, attributes in contacts:
        chunk.append({
            "RPContactID": int(rpcontactid), "ChannelExecutionID": int(execution_id), "AddressKey": address,
            "Attributes": None if attributes is None else json.dumps(attributes, ensure_ascii=False),
        })
        if len(chunk) >= _INSERT_CHUNK:
            total += _flush(db, oh, chunk)
            chunk = []
    if chunk:
        total += _flush(db, oh, chunk)
    return total


def _flush(db: Database, table: sa.Table, rows: list[dict]) -> int:
    with db.begin() as conn:
        return db.bulk_insert(conn, table, rows)


def _valid_number(rng: random.Random) -> str:
    """A possible North American number that is none of Twilio's magic test numbers."""
    area = rng.randint(201, 989)
    exchange = rng.randint(201, 999)
    if area == 500:
        area = 501
    return f"+1{area}{exchange}{rng.randint(0, 9999):04d}"


def _formatted(e164: str, rng: random.Random) -> str:
    """The same number as a person would type it: '+1 (415) 555-0100', '+1.415.555.0100', '001 415 ...'."""
    d = e164[2:]
    style = rng.randrange(4)
    if style == 0:
        return f"+1 ({d[:3]}) {d[3:6]}-{d[6:]}"
    if style == 1:
        return f"+1.{d[:3]}.{d[3:6]}.{d[6:]}"
    if style == 2:
        return f"001 {d[:3]} {d[3:6]} {d[6:]}"
    return f" +1-{d[:3]}-{d[3:6]}-{d[6:]} "


def demo_audience(n: int, seed: int = 0) -> Iterator[Contact]:
    """`n` contacts (RPContactID 1..n) for a body using {{FirstName}}: mostly valid and unique, plus

    ~3% exact duplicates, ~3% formatted duplicates ("+1 (415) 555-0100" of an earlier +14155550100),
    ~3% invalid numbers of several kinds, ~2% without the FirstName merge field and ~0.5% numbers
    Twilio refuses (21211, 21612, 21408, 21614). Duplicates always repeat an earlier, lower ID.
    Deterministic for a seed; memory stays bounded (duplicates come from a small recent window).
    """
    rng = random.Random(seed)
    recent: list[str] = []
    for rid in range(1, n + 1):
        roll = rng.random()
        attributes: dict | None = {"FirstName": FIRST_NAMES[rid % len(FIRST_NAMES)]}
        if roll < 0.03 and recent:
            address = rng.choice(recent)
        elif roll < 0.06 and recent:
            address = _formatted(rng.choice(recent), rng)
        elif roll < 0.09:
            address = INVALID_SPELLINGS[rng.randrange(len(INVALID_SPELLINGS))]
        elif roll < 0.095:
            address = REFUSED_NUMBERS[rng.randrange(len(REFUSED_NUMBERS))]
        else:
            address = _valid_number(rng)
            if len(recent) < 1000:
                recent.append(address)
            else:
                recent[rng.randrange(1000)] = address
        if rng.random() < 0.02:
            attributes = {"LastName": "Lovelace"} if rng.random() < 0.5 else None
        yield rid, address, attributes
