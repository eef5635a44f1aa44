"""Twilio date formats.

The 2010 API returns RFC 2822 (`Fri, 09 Jul 2021 15:58:57 +0000`); Messaging v1 and Bulk Export day
files use ISO 8601. Both become aware UTC datetimes; unreadable values become None rather than an
exception, because one odd record must not stop a sync. Filters go out as RFC 3339 UTC
(`2021-07-09T16:26:05Z`), as the spec and the guide's trace require.
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
