"""The channel execution: load and check it (input errors before any request), move its Status."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from twilio_pipeline.channels import Channel, ChannelConfigError, ChannelFile
from twilio_pipeline.dates import to_naive_utc
from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.db.database import lenient_text, undecodable
from twilio_pipeline.outbound.errors import OutboundInputError
from twilio_pipeline.rules.phones import validate_sender
from twilio_pipeline.rules.render import media_url_problem, template_problem

STATUS_READY = "ready"
STATUS_SENDING = "sending"
STATUS_SENT = "sent"
STATUS_FAILED = "failed"
STATUS_CANCELLED = "cancelled"
# What a send may start from without --force: a fresh execution, an interrupted run to resume, a retry,
# and `sent` (the re-run finds nothing new to send, or only contacts added since).
SENDABLE = (STATUS_READY, STATUS_SENDING, STATUS_FAILED, STATUS_SENT)
# The statuses the pipeline moves. Anything else (`cancelled`, `draft`, ...) is the upstream's decision:
# the end of a send, a failure or an interruption never overwrites it.
PIPELINE_STATUSES = SENDABLE
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")


@dataclass(frozen=True)
class ExecutionRow:
    execution_id: int
    channel_name: str
    message_body: str | None
    media_url: str | None
    status: str
    status_reason: str | None
    created_at: datetime | None
    send_after: datetime | None


def sender_problem(channel: Channel) -> str | None:
    """Why the channel's sender cannot send, or None.

    The channel file already checks this; a Channel built in code (model_construct) is not checked,
    and a malformed sender must fail before the first request.
    """
    if (channel.from_number is None) == (channel.messaging_service_sid is None):
        return f"channel {channel.name!r}: exactly one of from_number and messaging_service_sid is required"
    if channel.from_number is not None:
        problem = validate_sender(str(channel.from_number))
        if problem:
            return f"channel {channel.name!r}: from_number {channel.from_number!r} {problem}"
    elif not _SERVICE_SID.fullmatch(str(channel.messaging_service_sid)):
        return (f"channel {channel.name!r}: messaging_service_sid {channel.messaging_service_sid!r} "
                "must be 'MG' followed by 32 hex characters")
    return None


def read_execution(db: Database, execution_id: int) -> ExecutionRow | None:
    ex = db.tables.executions
    query = sa.select(ex).where(ex.c.ChannelExecutionID == int(execution_id))
    try:
        with db.connect() as conn:
            row = conn.execute(query).mappings().first()
    except sa.exc.OperationalError as exc:  # invalid UTF-8 in SQLite: read it so the checks can name it
        if not undecodable(exc):
            raise
        with db.connect() as conn, lenient_text(conn):
            row = conn.execute(query).mappings().first()
    if row is None:
        return None
    return ExecutionRow(
        execution_id=int(row["ChannelExecutionID"]), channel_name=row["ChannelName"],
        message_body=row["MessageBody"], media_url=row["MediaUrl"], status=row["Status"],
        status_reason=row["StatusReason"], created_at=row["CreatedAt"], send_after=row["SendAfter"],
    )


def execution_problem(template: str | None, media_url: str | None) -> str | None:
    """Why the execution's MessageBody or MediaUrl cannot be sent to anyone, or None."""
    return template_problem(template) or media_url_problem(media_url)


def load_execution(db: Database, channels: ChannelFile, execution_id: int) -> tuple[ExecutionRow, Channel]:
    """The execution and its channel, or OutboundInputError naming what is wrong (CLI exit 2)."""
    try:
        execution_id = int(execution_id)
    except (TypeError, ValueError):
        raise OutboundInputError(f"execution id {execution_id!r} is not an integer") from None
    row = read_execution(db, execution_id)
    if row is None:
        raise OutboundInputError(f"execution {execution_id} does not exist in SMS_ChannelExecutions")
    try:
        channel = channels.get(row.channel_name)
    except ChannelConfigError:
        known = ", ".join(repr(c.name) for c in channels.channels)
        raise OutboundInputError(
            f"execution {execution_id} names channel {row.channel_name!r}, which is not in the channel file "
            f"(it defines {known})"
        ) from None
    problem = sender_problem(channel) or execution_problem(row.message_body, row.media_url)
    if problem:
        raise OutboundInputError(f"execution {execution_id}: {problem}")
    oh = db.tables.offer_history
    with db.connect() as conn:
        has_contacts = conn.execute(
            sa.select(sa.literal(1)).where(oh.c.ChannelExecutionID == execution_id).limit(1)
        ).first()
    if has_contacts is None:
        raise OutboundInputError(f"execution {execution_id} has no recipients (no OfferHistorySG rows)")
    return row, channel


def send_refusal(row: ExecutionRow, *, force: bool = False, now: datetime | None = None) -> str | None:
    """Why this execution must not be sent now (one line naming its Status or SendAfter), or None.

    The same rule for the CLI and every Dagster run: a `cancelled` or `draft` execution, or one whose
    SendAfter is still ahead, is never texted unless the caller explicitly forces it.
    """
    if force:
        return None
    if row.status not in SENDABLE:
        return (f"execution {row.execution_id} has Status {row.status!r}: only "
                f"{', '.join(repr(s) for s in SENDABLE)} are sent (use --force, or force: true in the run "
                "config, to send it anyway)")
    send_after = to_naive_utc(row.send_after)
    if send_after is not None and send_after > (now or utcnow()):
        return (f"execution {row.execution_id} has SendAfter {send_after:%Y-%m-%d %H:%M:%S} UTC, still in "
                "the future (use --force, or force: true in the run config, to send it now)")
    return None


def set_status(db: Database, execution_id: int, status: str, reason: str | None = None, *,
               only_from: tuple[str, ...] | None = None) -> str | None:
    """Move SMS_ChannelExecutions.Status (the upstream's view of the send); the reason is cleared unless given.

    `only_from`: move it only from one of these statuses, in one conditional UPDATE, so an upstream's
    `cancelled` (or any status of its own) written at the same moment is never overwritten. A run's outcome
    (`sent`, `failed`) is always conditional on PIPELINE_STATUSES. Returns the Status the execution has now.
    """
    if only_from is None and status in (STATUS_SENT, STATUS_FAILED):
        only_from = PIPELINE_STATUSES
    ex = db.tables.executions
    cond = [ex.c.ChannelExecutionID == int(execution_id)]
    if only_from is not None:
        cond.append(ex.c.Status.in_(list(only_from)))
    with db.begin() as conn:
        conn.execute(ex.update().where(*cond).values(Status=status, StatusReason=reason[:4000] if reason else None))
        return conn.execute(sa.select(ex.c.Status).where(ex.c.ChannelExecutionID == int(execution_id))).scalar()


def mark_failed(db: Database, execution_id: int, reason: str) -> bool:
    """Status `failed` with the reason (credentials rejected, unresolved messages, a crash ...), unless the
    upstream has set a status of its own (e.g. `cancelled`) meanwhile."""
    return set_status(db, execution_id, STATUS_FAILED, reason) == STATUS_FAILED


def execution_channel_sender(channel: Channel) -> dict[str, str]:
    """The sender parameters of a create request: From, or MessagingServiceSid for a pool."""
    if channel.messaging_service_sid:
        return {"MessagingServiceSid": channel.messaging_service_sid}
    return {"From": str(channel.from_number)}


__all__ = [
    "ExecutionRow", "PIPELINE_STATUSES", "SENDABLE", "STATUS_CANCELLED", "STATUS_FAILED", "STATUS_READY",
    "STATUS_SENDING", "STATUS_SENT", "execution_channel_sender", "load_execution", "mark_failed", "read_execution",
    "send_refusal", "sender_problem", "set_status",
]


# An execution still on its way out; a `sent` or `cancelled` one keeps its Status whatever a re-run finds.
UNSENT_STATUSES = ("ready", "sending", "failed")


def record_unsendable(db: Database, execution_id: int, reason: str) -> bool:
    """Status `failed` with the reason for an execution that cannot be sent (docs/reference.md "Execution
    status"), so the upstream and the queue listener see why; True when recorded."""
    row = read_execution(db, execution_id)
    if row is None or row.status not in UNSENT_STATUSES:
        return False
    mark_failed(db, execution_id, reason)
    return True
