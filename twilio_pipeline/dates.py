"""The pipeline's one date module: moments as the tables store them (naive UTC), and dates as Twilio writes them.

The 2010 API returns RFC 2822 (`Fri, 09 Jul 2021 15:58:57 +0000`, also the HTTP-date of a
`Retry-After`); Messaging v1 and Bulk Export day files use ISO 8601. Both become aware UTC datetimes
(`parse_twilio_date`) or the tables' naive UTC (`twilio_time`); unreadable values become None rather
than an exception, because one odd record must not stop a sync. Filters go out as RFC 3339 UTC
(`2021-07-09T16:26:05Z`), as the spec and the guide's trace require. (The sandbox keeps its own
`sandbox/timefmt.py`: it must import nothing of the pipeline it is the independent model for.)
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime


def parse_twilio_date(s: str | None) -> datetime | None:
    """RFC 2822 or ISO 8601 text -> aware UTC datetime; naive values are taken as UTC; garbage -> None."""
    if isinstance(s, datetime):
        dt = s
    elif not isinstance(s, str):
        return None
    else:
        text = s.strip()
        if not text:
            return None
        try:
            if text[0].isdigit():
                if text.endswith(("Z", "z")):
                    text = text[:-1] + "+00:00"
                dt = datetime.fromisoformat(text)
            else:
                dt = parsedate_to_datetime(text)
        except (ValueError, TypeError, OverflowError, IndexError):
            return None
        if dt is None:
            return None
    try:
        if dt.tzinfo is None or dt.utcoffset() is None:
            return dt.replace(tzinfo=UTC)
        return dt.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def format_rfc3339(dt: datetime | date) -> str:
    """`2021-07-09T16:26:05Z`: UTC, whole seconds (naive datetimes are taken as UTC)."""
    if not isinstance(dt, datetime):
        return f"{dt.isoformat()}T00:00:00Z"
    if dt.tzinfo is not None and dt.utcoffset() is not None:
        dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                       "Nov", "Dec"), start=1)}


def twilio_time(value) -> datetime | None:
    """A Twilio date (RFC 2822 from the API, ISO 8601 in export files) as naive UTC (the tables' form).

    The common `Fri, 09 Jul 2021 15:58:57 +0000` is split by hand: a listing of 100,000 messages
    parses 100,000 of them, and the general parser would be most of its CPU time.
    """
    if isinstance(value, str) and len(value) == 31 and value.endswith(" +0000"):
        try:
            h, m, s = value[17:25].split(":")
            return datetime(int(value[12:16]), _MONTHS[value[8:11]], int(value[5:7]), int(h), int(m), int(s))
        except (KeyError, ValueError):
            pass
    parsed = parse_twilio_date(value)
    return None if parsed is None else parsed.replace(tzinfo=None)


def utcnow() -> datetime:
    """Now, as naive UTC: how every table stores a moment (one representation, compared the same way on
    every dialect)."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_naive_utc(value: datetime | None) -> datetime | None:
    """An aware datetime converted to UTC and stripped of its zone; a naive one is taken as UTC already."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value
