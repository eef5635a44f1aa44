"""Data-quality measures behind the asset checks (plain SQL, no Dagster): what a data engineer wants
to see fail before trusting an execution's numbers."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.rules.states import HELD_STATUSES, VALIDITY_GRACE_S

OUTBOUND_PARTS = ("InvalidNumbers", "Duplicates", "Unsubscribed", "NotRendered", "Targeted", "Pending")
TARGETED_PARTS = ("Sent", "SendFailed", "Unresolved")


def invalid_number_rate(db: Database, execution_id: int) -> float:
    led = db.tables.ledger
    with db.connect() as conn:
        total, invalid = conn.execute(
            sa.select(sa.func.count(), sa.func.sum(sa.case((led.c.Outcome == "invalid", 1), else_=0)))
            .where(led.c.ChannelExecutionID == execution_id, led.c.IsSeed == sa.false())
        ).one()
    return int(invalid or 0) / total if total else 0.0  # MariaDB's SUM is a DECIMAL: a float, as Dagster plots it


def outbound_identity_problems(db: Database, execution_id: int) -> list[str]:
    r = db.read_results(execution_id)
    problems = []
    if "CountBeforeDedup" not in r:
        return ["no outbound results written"]
    parts = sum(r.get(k, 0) for k in OUTBOUND_PARTS)
    if r["CountBeforeDedup"] != parts:
        problems.append(f"CountBeforeDedup {r['CountBeforeDedup']} != {' + '.join(OUTBOUND_PARTS)} = {parts}")
    targeted = sum(r.get(k, 0) for k in TARGETED_PARTS)
    if r.get("Targeted", 0) != targeted:
        problems.append(f"Targeted {r.get('Targeted', 0)} != Sent + SendFailed + Unresolved = {targeted}")
    return problems


def inbound_identity_problems(db: Database, execution_id: int) -> list[str]:
    r = db.read_results(execution_id)
    statuses = {k: v for k, v in r.items() if k.startswith("Status:")}
    if not statuses:
        return []
    total = sum(statuses.values())
    if total != r.get("Sent", 0):
        return [f"Status:* sum to {total} but Sent is {r.get('Sent', 0)}"]
    return []


def tracked_past_validity(db: Database, execution_id: int, validity_s: int) -> int:
    """SIDs Twilio still held (or never showed) an hour past their validity period and still tracked:
    the status fetch should have closed them as Expired. A `sent` one is read on until the status
    horizon on purpose (carriers often send no receipt), so it does not count."""
    ids = db.tables.message_ids
    cutoff = utcnow() - timedelta(seconds=validity_s + VALIDITY_GRACE_S)
    held = sa.or_(ids.c.LastStatus.is_(None), ids.c.LastStatus.in_(sorted(HELD_STATUSES)))
    with db.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(ids).where(
            ids.c.ChannelExecutionID == execution_id, ids.c.SentAt < cutoff, held)).scalar() or 0


def states_without_offer_history(db: Database, execution_id: int) -> int:
    st, oh = db.tables.states, db.tables.offer_history
    match = sa.select(sa.literal(1)).select_from(oh).where(
        oh.c.ChannelExecutionID == st.c.ChannelExecutionID, oh.c.RPContactID == st.c.RPContactID)
    with db.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(st).where(
            st.c.ChannelExecutionID == execution_id, st.c.RPContactID >= 0, ~match.exists())).scalar() or 0


def delivery_rate(db: Database, execution_id: int) -> float | None:
    """Delivered share of the messages whose delivery outcome is known (None before any is)."""
    r = db.read_results(execution_id)
    delivered = r.get("Status:delivered", 0) + r.get("Status:read", 0)
    final = delivered + r.get("Status:undelivered", 0) + r.get("Status:failed", 0) + r.get("Expired", 0)
    return delivered / final if final else None
