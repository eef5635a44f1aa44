"""Status fetch (the guide's inbound steps 2-3): the delivery states of an execution's tracked SIDs.

The guide GETs every message. Here the sender's outbound messages are *listed* by DateSent window
(1,000 per page) and matched to the tracked SIDs in SQL; only the SIDs the listing did not return
(still queued with no date_sent, a pool that cannot be listed cheaply) are fetched one by one. In
`bulk_export` mode whole days come from export files instead.

What is observed goes to the durable `TwilioSMS_PendingStates` table in one transaction; the state
load then stores it and retires the SIDs (a SID is only retired in the transaction that stores its
terminal state). Statuses never move backwards: an observation ranked below the SID's LastStatus is
dropped. A SID not final is closed by `closing_state`: one still `sent` at `status_horizon_hours`
stays Sent (carriers often send no receipt); one Twilio still holds an hour after `validity_period_s`,
or any other at the horizon, is Expired.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from twilio_pipeline.channels import Channel
from twilio_pipeline.dates import twilio_time
from twilio_pipeline.db import Database
from twilio_pipeline.db.schema import PHONE, SID
from twilio_pipeline.inbound.bulk_export import ExportUnavailable, iter_exported_messages, plan_days
from twilio_pipeline.inbound.common import (
    CHUNK_ROWS,
    rank_case,
    serialize_writers,
    staging,
    utc_now,
)
from twilio_pipeline.logs import Log
from twilio_pipeline.rules.states import (
    EXPIRED,
    STATUS_RANK,
    TERMINAL_STATUSES,
    VALIDITY_GRACE_S,
    closing_state,
    later_status,
    state_name,
)
from twilio_pipeline.summary import Summary
from twilio_pipeline.suppression import ACCOUNT, OPTED_OUT_CODE, SUPPRESSION_MATCH
from twilio_pipeline.twilio import TwilioApiError, TwilioClient

# Twilio's clock and ours differ a little, and DateSent is set when a message leaves the queue.
WINDOW_MARGIN = timedelta(minutes=15)
MAX_GET_WORKERS = 16


def _tracked_columns() -> list[sa.Column]:
    return [
        sa.Column("MessageID", SID, nullable=False),
        sa.Column("ChannelExecutionID", sa.Integer, nullable=False),
        sa.Column("RPContactID", sa.BigInteger, nullable=False),
        sa.Column("ToNumber", PHONE),
        sa.Column("SentAt", sa.DateTime),
        sa.Column("LastStatus", sa.Unicode(30)),
    ]


def _observed_columns() -> list[sa.Column]:
    return [
        sa.Column("MessageID", SID, nullable=False),
        sa.Column("Status", sa.Unicode(30)),
        sa.Column("ErrorCode", sa.Unicode(20)),
        sa.Column("DateUpdated", sa.DateTime),
        sa.Column("FromNumber", PHONE),
        sa.Column("ToNumber", PHONE),
        sa.Column("Source", sa.Unicode(10)),
    ]


@dataclass
class StatusFetchSummary(Summary):
    mode: str = "list"
    full_window: bool = False
    executions: int = 0
    tracked: int = 0
    listed: int = 0
    exported: int = 0
    matched: int = 0
    fetched: int = 0
    not_found: int = 0
    observed: int = 0
    terminal: int = 0
    expired: int = 0
    closed_sent: int = 0
    opt_outs_21610: int = 0
    api_calls: int = 0


def warn_short_code(channel: Channel, log: Log) -> None:
    """The guide's limitation 7: Twilio reports no delivery states for short codes (beta)."""
    sender = channel.from_number or ""
    if sender.isdigit():
        log.warning(
            f"channel {channel.name!r} sends from short code {sender}: Twilio reports no delivery states for "
            "short codes (beta; the guide's limitation 7), so its messages may stay Queued until they are "
            "closed as Expired; replies and STOPs are still read")


def observed_row(msg: dict, source: str) -> dict | None:
    """A message resource or export record -> a staging row (outbound messages only)."""
    sid = msg.get("sid")
    direction = msg.get("direction")
    if not isinstance(sid, str) or not sid or (direction is not None and not str(direction).startswith("outbound")):
        return None
    code = msg.get("error_code")
    return {
        "MessageID": sid,
        "Status": msg.get("status"),
        "ErrorCode": None if code in (None, "", 0, "0") else str(code),
        "DateUpdated": twilio_time(msg.get("date_updated")),
        "FromNumber": msg.get("from"),
        "ToNumber": msg.get("to"),
        "Source": source,
    }


def fetch_statuses(
    db: Database,
    client: TwilioClient,
    channel: Channel,
    execution_ids: list[int],
    *,
    log: Log,
    full_window: bool = False,
    now: datetime | None = None,
    limit_records: int | None = None,
    export_poll_interval_s: float = 5.0,
    export_timeout_s: float = 1800.0,
) -> StatusFetchSummary:
    """Observe the statuses of the executions' SIDs into TwilioSMS_PendingStates (durably).

    `full_window` (backfill): re-read every SID the send ledger recorded as sent, over the execution's
    own DateSent window, whether still tracked or retired. `limit_records` bounds how many tracked SIDs
    one call handles (oldest first); the others wait for the next sync.
    """
    now = utc_now(now)
    mode = channel.status_sync
    warn_short_code(channel, log)
    summary = StatusFetchSummary(mode=mode, full_window=full_window, executions=len(execution_ids))
    calls_before = client.request_count
    if not execution_ids:
        return summary
    with staging(db, "tracked", _tracked_columns(), ("MessageID",)) as tracked, \
            staging(db, "observed", _observed_columns(), ("MessageID",)) as observed:
        with db.begin() as conn:
            summary.tracked = _stage_tracked(db, conn, tracked, execution_ids, full_window, limit_records)
        if summary.tracked:
            windows = _windows(db, tracked, channel, full_window)
            senders = _senders(client, channel, summary.tracked, len(windows))
            if senders:
                for start, end in windows:
                    if mode == "bulk_export":
                        start = _export_part(db, client, channel, observed, start, end, now, log, summary,
                                             export_poll_interval_s, export_timeout_s)
                        if start is None:
                            continue
                    for sender in senders:
                        summary.listed += _stage_pages(
                            db, observed,
                            client.iter_message_pages(from_=sender, date_sent_after=start, date_sent_before=end),
                            "list")
            summary.fetched, summary.not_found = _fetch_unlisted(db, client, channel, tracked, observed)
            with db.begin() as conn:
                _record(db, conn, channel, tracked, observed, now, summary)
    summary.api_calls = client.request_count - calls_before
    log.info(
        f"status fetch ({mode}{', full window' if full_window else ''}) for {len(execution_ids)} execution(s): "
        f"{summary.tracked} SID(s), {summary.listed} listed, {summary.exported} exported, {summary.matched} matched, "
        f"{summary.fetched} fetched one by one; {summary.observed} new observation(s), {summary.terminal} terminal, "
        f"{summary.expired} expired, {summary.closed_sent} left Sent at the {channel.status_horizon_hours} h horizon; "
        f"{summary.api_calls} API call(s)"
    )
    if summary.not_found:
        log.warning(f"{summary.not_found} tracked SID(s) are unknown to Twilio (404); they are kept until they expire")
    return summary


# ---- what to fetch ---------------------------------------------------------------------------
def _stage_tracked(db: Database, conn: Connection, tracked: sa.Table, execution_ids: list[int],
                   full_window: bool, limit_records: int | None) -> int:
    ids_t, led = db.tables.message_ids, db.tables.ledger
    cols = ["MessageID", "ChannelExecutionID", "RPContactID", "ToNumber", "SentAt", "LastStatus"]
    if full_window:
        source = (
            sa.select(led.c.MessageSID, led.c.ChannelExecutionID, led.c.RPContactID, led.c.ToNumber,
                      sa.func.coalesce(ids_t.c.SentAt, led.c.StatusAt, led.c.AttemptedAt), ids_t.c.LastStatus)
            .select_from(led.outerjoin(ids_t, ids_t.c.MessageID == led.c.MessageSID))
            .where(led.c.ChannelExecutionID.in_(execution_ids), led.c.Outcome == "sent",
                   led.c.MessageSID.is_not(None), led.c.IsSeed == sa.false())
        )
    else:
        source = (
            sa.select(ids_t.c.MessageID, ids_t.c.ChannelExecutionID, ids_t.c.RPContactID, ids_t.c.ToNumber,
                      ids_t.c.SentAt, ids_t.c.LastStatus)
            .where(ids_t.c.ChannelExecutionID.in_(execution_ids))
        )
        if limit_records is not None:
            source = source.order_by(ids_t.c.SentAt, ids_t.c.MessageID).limit(limit_records)
    conn.execute(tracked.insert().from_select(cols, source))
    return conn.execute(sa.select(sa.func.count()).select_from(tracked)).scalar() or 0


def _windows(db: Database, tracked: sa.Table, channel: Channel,
             full_window: bool) -> list[tuple[datetime, datetime | None]]:
    """DateSent windows to list: from the first SentAt minus a margin; in a full-window re-read each
    execution ends at its last SentAt plus the validity period (Twilio sends or fails a message by
    then), and overlapping windows merge. A normal sync lists to now, once for all executions."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(sa.func.min(tracked.c.SentAt), sa.func.max(tracked.c.SentAt))
            .where(tracked.c.SentAt.is_not(None)).group_by(tracked.c.ChannelExecutionID)
        ).all()
    if not rows:
        return []  # SIDs without SentAt are fetched one by one: never a listing of the sender's history
    if not full_window:
        return [(min(r[0] for r in rows) - WINDOW_MARGIN, None)]
    spans = sorted((r[0] - WINDOW_MARGIN, r[1] + timedelta(seconds=channel.validity_period_s) + WINDOW_MARGIN)
                   for r in rows)
    merged = [list(spans[0])]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _senders(client: TwilioClient, channel: Channel, tracked: int, windows: int) -> list[str]:
    """The From numbers to list by; for a Messaging Service its pool, unless listing every pool number
    would cost more requests than fetching the SIDs one by one."""
    if not channel.uses_service:
        return [channel.from_number]
    pool = client.list_service_phone_numbers(channel.messaging_service_sid)
    if len(pool) * max(windows, 1) >= tracked:
        return []
    return pool


def _stage_pages(db: Database, observed: sa.Table, pages: Iterable[list[dict]], source: str) -> int:
    total = 0
    for page in pages:
        total += len(page)
        rows = [r for r in (observed_row(m, source) for m in page) if r is not None]
        if rows:
            with db.begin() as conn:
                db.bulk_insert(conn, observed, rows)
    return total


def _export_part(db: Database, client: TwilioClient, channel: Channel, observed: sa.Table,
                 start: datetime, end: datetime | None, now: datetime, log: Log,
                 summary: StatusFetchSummary, poll_s: float, timeout_s: float) -> datetime | None:
    """Load the exportable whole days of the window from export files; returns where listing resumes
    (None when the files covered everything). A failed or late job hands its days back to the listing."""
    plan = plan_days(start, end, now)
    if not plan.days:
        return start
    senders = {channel.from_number} if not channel.uses_service else None
    records = iter_exported_messages(client, channel, plan.days, log=log, poll_interval_s=poll_s, timeout_s=timeout_s)
    try:
        summary.exported += _stage_pages(db, observed, _batches(_of_sender(records, channel, senders)), "export")
    except ExportUnavailable as exc:
        log.warning(f"{exc}; listing days {plan.days[0]}..{plan.days[-1]} instead")
        return start
    except TwilioApiError as exc:
        if exc.status != 400:
            raise
        log.warning(f"Twilio refused the bulk export ({exc}); listing days {plan.days[0]}..{plan.days[-1]} instead")
        return start
    return plan.listing_from


def _of_sender(records: Iterator[dict], channel: Channel, senders: set[str] | None) -> Iterator[dict]:
    service = channel.messaging_service_sid
    for rec in records:
        if senders is not None:
            if rec.get("from") in senders:
                yield rec
        elif rec.get("messaging_service_sid") == service:
            yield rec


def _batches(records: Iterator[dict], size: int = CHUNK_ROWS) -> Iterator[list[dict]]:
    buf: list[dict] = []
    for rec in records:
        buf.append(rec)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _fetch_unlisted(db: Database, client: TwilioClient, channel: Channel, tracked: sa.Table,
                    observed: sa.Table) -> tuple[int, int]:
    """GET the tracked SIDs no listing or export returned; concurrently, within the client's limits."""
    seen = sa.select(sa.literal(1)).select_from(observed).where(observed.c.MessageID == tracked.c.MessageID)
    query = sa.select(tracked.c.MessageID).where(~seen.exists()).order_by(tracked.c.MessageID)
    with db.connect() as conn:
        sids = [r[0] for r in conn.execute(query)]
    fetched = missing = 0
    if not sids:
        return 0, 0
    workers = max(1, min(channel.max_concurrency, MAX_GET_WORKERS, len(sids)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="status-get") as pool:
        for start in range(0, len(sids), CHUNK_ROWS):
            part = sids[start:start + CHUNK_ROWS]
            rows = []
            for msg in pool.map(client.fetch_message, part):
                fetched += 1
                row = observed_row(msg, "get") if msg is not None else None
                if row is None:
                    missing += 1
                else:
                    rows.append(row)
            if rows:
                with db.begin() as conn:
                    db.bulk_insert(conn, observed, rows)
    return fetched, missing


# ---- what was observed -----------------------------------------------------------------------
def _record(db: Database, conn: Connection, channel: Channel, tracked: sa.Table, observed: sa.Table,
            now: datetime, summary: StatusFetchSummary) -> None:
    """One transaction: pending observations, Expired closures, LastStatus, 21610 opt-outs."""
    serialize_writers(db, conn, "states")  # never interleaved with a load draining the pending table
    pending, ids_t = db.tables.pending_states, db.tables.message_ids
    t, o = tracked, observed
    joined = t.join(o, o.c.MessageID == t.c.MessageID)
    known = o.c.Status.in_(list(STATUS_RANK))
    summary.matched = conn.execute(
        sa.select(sa.func.count(sa.distinct(t.c.MessageID))).select_from(joined)).scalar() or 0

    state = sa.case({k: state_name(k) for k in STATUS_RANK}, value=o.c.Status)
    event = sa.case((o.c.Status.in_(["failed", "undelivered"]), o.c.ErrorCode), else_=sa.null())
    terminal = sa.case((o.c.Status.in_(list(TERMINAL_STATUSES)), sa.true()), else_=sa.false())
    forward = rank_case(o.c.Status) >= rank_case(t.c.LastStatus)
    obs = (
        sa.select(t.c.ChannelExecutionID, t.c.RPContactID, state.label("FulfillmentState"),
                  event.label("EventName"), o.c.DateUpdated.label("Timestamp"), t.c.MessageID,
                  terminal.label("Terminal"), sa.literal(now, sa.DateTime).label("ObservedAt"))
        .select_from(joined)
        .where(known, forward)
        .distinct()
    )
    cols = ["ChannelExecutionID", "RPContactID", "FulfillmentState", "EventName", "Timestamp", "MessageID",
            "Terminal", "ObservedAt"]
    res = conn.execute(pending.insert().from_select(cols, obs))
    summary.observed = max(res.rowcount or 0, 0)
    summary.terminal = conn.execute(
        sa.select(sa.func.count(sa.distinct(t.c.MessageID))).select_from(joined)
        .where(o.c.Status.in_(list(TERMINAL_STATUSES)))).scalar() or 0

    # Closures (rules.states.closing_state): SIDs old enough for a rule, with no terminal status seen.
    validity = timedelta(seconds=channel.validity_period_s)
    horizon = timedelta(hours=channel.status_horizon_hours)
    cutoff = now - min(validity + timedelta(seconds=VALIDITY_GRACE_S), horizon)
    # (the observed staging table holds one row per MessageID)
    candidates = conn.execute(
        sa.select(t.c.ChannelExecutionID, t.c.RPContactID, t.c.MessageID, t.c.SentAt, t.c.LastStatus,
                  o.c.Status.label("Observed"))
        .select_from(t.outerjoin(o, o.c.MessageID == t.c.MessageID))
        .where(t.c.SentAt < cutoff,
               sa.or_(o.c.Status.is_(None), o.c.Status.not_in(list(TERMINAL_STATUSES))),
               sa.or_(t.c.LastStatus.is_(None), t.c.LastStatus.not_in(list(TERMINAL_STATUSES))))
    ).all()
    closed_rows = []
    for r in candidates:
        status = later_status(r.LastStatus, r.Observed if r.Observed in STATUS_RANK else None)
        closing = closing_state(status, (now - r.SentAt).total_seconds(), validity.total_seconds(),
                                horizon.total_seconds())
        if closing is None:
            continue
        # a Sent row usually exists already (the load keeps the first); Expired dates from the rule
        at = r.SentAt + (validity if closing == EXPIRED and (now - r.SentAt) < horizon else horizon)
        closed_rows.append({"ChannelExecutionID": r.ChannelExecutionID, "RPContactID": r.RPContactID,
                            "FulfillmentState": closing, "EventName": None, "Timestamp": at,
                            "MessageID": r.MessageID, "Terminal": True, "ObservedAt": now})
    if closed_rows:
        db.bulk_insert(conn, pending, closed_rows)
    summary.expired = sum(1 for r in closed_rows if r["FulfillmentState"] == EXPIRED)
    summary.closed_sent = len(closed_rows) - summary.expired
    summary.observed += len(closed_rows)

    # LastStatus: the highest-ranked status observed, never a step back.
    best = (
        sa.select(o.c.Status).where(o.c.MessageID == ids_t.c.MessageID, known)
        .order_by(rank_case(o.c.Status).desc()).limit(1).scalar_subquery()
    )
    in_run = sa.select(t.c.MessageID).where(t.c.MessageID == ids_t.c.MessageID)
    conn.execute(
        ids_t.update()
        .where(in_run.exists(), sa.exists(sa.select(sa.literal(1)).select_from(o).where(
            o.c.MessageID == ids_t.c.MessageID, known, rank_case(o.c.Status) > rank_case(ids_t.c.LastStatus))))
        .values(LastStatus=best)
    )

    # A message failed with 21610: the recipient opted out; record it as STOP for this sender.
    stops = (
        sa.select(
            sa.func.coalesce(t.c.ToNumber, o.c.ToNumber).label("PhoneNumber"),
            sa.func.coalesce(o.c.DateUpdated, t.c.SentAt, sa.literal(now, sa.DateTime)).label("ActivityDate"),
            sa.literal(channel.messaging_service_sid, SID).label("MessagingServiceID"),
            sa.func.coalesce(o.c.FromNumber, sa.literal(channel.from_number, PHONE)).label("TwilioNumber"),
            sa.literal("STOP", sa.Unicode(20)).label("Activity"),
            sa.literal(channel.account_key, ACCOUNT).label("Account"),
        )
        .select_from(joined)
        .where(o.c.Status == "failed", o.c.ErrorCode == str(OPTED_OUT_CODE),  # ErrorCode is text there
               sa.func.coalesce(t.c.ToNumber, o.c.ToNumber).is_not(None))
        .distinct()
    )
    summary.opt_outs_21610 = db.insert_missing(conn, db.tables.suppression, stops, match=SUPPRESSION_MATCH)
