"""Date formats the Twilio APIs speak: RFC 2822 (API 2010), ISO 8601 (v1 APIs, export files).

Internally every time is a float of seconds since the epoch on the simulated clock.

The pipeline reads Twilio's dates in `twilio_pipeline/dates.py`; the sandbox keeps its own on purpose:
it imports nothing of the pipeline it is the independent model for (a shared parser would let a bug
agree with itself).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SPACED_OFFSET = re.compile(r" (\d{2}:?\d{2})$")
DAY_S = 86400


@lru_cache(maxsize=4096)
def _rfc2822_second(second: int) -> str:
    t = time.gmtime(second)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def rfc2822(ts: float | None) -> str | None:
    """`Thu, 24 Aug 2023 05:01:45 +0000`, as the 2010 API writes every date (GMT, whole seconds)."""
    if ts is None:
        return None
    return _rfc2822_second(int(ts // 1))


def iso8601(ts: float | None) -> str | None:
    """`2023-08-24T05:01:45Z`: the v1 APIs' and the export files' format."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts // 1)))


def iso8601_ms(ts: float) -> str:
    """`2021-03-15T20:20:14.547`: the shape of a Bulk Export job's estimated_completion_time."""
    whole = int(ts // 1)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((ts - whole) * 1000):03d}"


def iso_day(ts: float) -> str:
    """The UTC day of a time, `YYYY-MM-DD`."""
    return time.strftime("%Y-%m-%d", time.gmtime(int(ts // 1)))


def day_start(day: str) -> float:
    """Epoch seconds of 00:00 UTC of a `YYYY-MM-DD` day; ValueError when it is not one."""
    if not _DATE_ONLY.match(day):
        raise ValueError(f"not a YYYY-MM-DD day: {day!r}")
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


def parse_instant(value: str) -> float:
    """An ISO 8601 / RFC 3339 date-time (or a bare date) or an RFC 2822 date -> epoch seconds.

    Naive values are read as UTC, as Twilio reads its GMT dates. ValueError when unreadable.
    """
    text = value.strip()
    if not text:
        raise ValueError("empty date")
    if _DATE_ONLY.match(text):
        return day_start(text)
    if "T" in text:
        # an offset's '+' sent unencoded in a query string arrives as a space
        text = _SPACED_OFFSET.sub(r"+\1", text)
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"unreadable date: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_date_filter(value: str) -> tuple[float, float, bool]:
    """A DateSent filter value -> (start, end, is_whole_day): the half-open range it names.

    A bare date names that whole UTC day; a date-time names its second (dates in responses carry
    whole seconds, so a filter built from a listed `date_sent` matches that message).
    """
    text = value.strip()
    if _DATE_ONLY.match(text):
        start = day_start(text)
        return start, start + DAY_S, True
    start = float(int(parse_instant(text) // 1))
    return start, start + 1.0, False
