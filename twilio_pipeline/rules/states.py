"""Twilio message statuses -> CONTRACT.md fulfillment states, and their order.

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
