"""Twilio message statuses -> the fulfillment states of docs/reference.md, and their order.

Statuses never move backwards: a late `sent` never overwrites `delivered`. The rank decides.
"""

from __future__ import annotations

TERMINAL_STATUSES = frozenset({"delivered", "undelivered", "failed", "canceled", "read"})
STATUS_RANK = {
    "accepted": 1,
    "scheduled": 1,
    "queued": 2,
    "sending": 3,
    "sent": 4,
    "partially_delivered": 5,
    "undelivered": 6,
    "failed": 6,
    "canceled": 6,
    "delivered": 7,
    "read": 8,
}
DELIVERY_STATES = (
    "Accepted", "Scheduled", "Queued", "Sending", "Sent", "Delivered", "Undelivered", "Failed",
    "Canceled", "Read", "PartiallyDelivered", "Expired",
)
REPLIED = "Replied"
EXPIRED = "Expired"
SENT = "Sent"
# Statuses of a message Twilio still holds: one still in them an hour after its validity period has
# missed it for good (Twilio fails a message it could not send within ValidityPeriod).
HELD_STATUSES = frozenset({"accepted", "scheduled", "queued", "sending"})
VALIDITY_GRACE_S = 3600


def is_known_status(status: str | None) -> bool:
    return status in STATUS_RANK


def state_name(status: str) -> str:
    """`partially_delivered` -> `PartiallyDelivered`, `delivered` -> `Delivered`."""
    return "".join(part.capitalize() for part in status.split("_"))


def status_rank(status: str | None) -> int:
    return STATUS_RANK.get(status or "", 0)


def later_status(current: str | None, observed: str | None) -> str | None:
    """The status to keep when `observed` arrives after `current` (never a step back)."""
    if status_rank(observed) > status_rank(current):
        return observed
    return current


def event_name(status: str, error_code: int | str | None) -> str | None:
    """EventName of a delivery state: the Twilio error code for Failed/Undelivered, else NULL."""
    if status in ("failed", "undelivered") and error_code not in (None, "", 0):
        return str(error_code)
    return None


def closing_state(status: str | None, age_s: float, validity_s: float, horizon_s: float) -> str | None:
    """The state a message not yet final is closed with, `age_s` after it was sent; None: keep reading.

    `sent` may be final: carriers often send no receipt (US/Canada long-code MMS, some networks),
    and Twilio says receipts can still come for about 72 h. So a `sent` message is read until the
    horizon and then stays Sent; it never becomes Expired. Expired is a message Twilio still holds
    an hour after its validity period, or any other non-final message at the horizon.
    """
    if status in TERMINAL_STATUSES:
        return None
    if age_s >= horizon_s:
        return SENT if status == "sent" else EXPIRED
    if (status is None or status in HELD_STATUSES) and age_s >= validity_s + VALIDITY_GRACE_S:
        return EXPIRED
    return None
