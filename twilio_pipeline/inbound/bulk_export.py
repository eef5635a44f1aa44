"""Bulk Exports for the status fetch (`status_sync: bulk_export`): whole days of messages as files.

For large or old executions a day file is far cheaper than paging: one job for the days needed, a
poll until they are done, then each day streamed (gzip JSON lines) into the same load path as the
listing. Twilio exports complete days only, and a day at least two days before its current UTC day;
the days after that are listed as usual.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from twilio_pipeline.channels import Channel
from twilio_pipeline.logs import Log
from twilio_pipeline.twilio import TwilioClient

EXPORT_LAG_DAYS = 2  # "End day ... must be 2 days earlier than the current UTC day"
DONE = ("Completed", "CompletedEmptyRecords")
FAILED = ("Failed", "DeletedByUserRequest", "RunningToBeDeleted")


class ExportUnavailable(RuntimeError):
    """The export job failed or did not finish in time; the caller lists those days instead."""


@dataclass
class ExportPlan:
    """Which days of a window come from export files and from when the listing takes over."""

    days: list[date] = field(default_factory=list)
    listing_from: datetime | None = None  # None: nothing left to list


def plan_days(start: datetime, end: datetime | None, now: datetime) -> ExportPlan:
    """Split [start, end or now] into exportable whole days and the rest (naive UTC datetimes)."""
    last_exportable = now.date() - timedelta(days=EXPORT_LAG_DAYS)
    stop = (end or now).date()
    days = []
    day = start.date()
    while day <= min(stop, last_exportable):
        days.append(day)
        day += timedelta(days=1)
    if stop <= last_exportable:
        return ExportPlan(days, None)
    resume = datetime.combine(last_exportable + timedelta(days=1), datetime.min.time())
    return ExportPlan(days, max(start, resume))


def iter_exported_messages(
    client: TwilioClient,
    channel: Channel,
    days: list[date],
    *,
    log: Log,
    poll_interval_s: float = 5.0,
    timeout_s: float = 1800.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict]:
    """Every record of the given days: files already available are reused, one job creates the rest.

    Raises ExportUnavailable when the job fails or outlasts `timeout_s` (nothing was yielded then).
    """
    if not days:
        return
    available = {d.get("day") for d in client.list_export_days()}
    missing = [d for d in days if d.isoformat() not in available]
    empty: set[str] = set()
    if missing:
        job = client.create_export_job(
            start_day=min(missing), end_day=max(missing),
            friendly_name=f"twilio_pipeline {channel.name} {min(missing).isoformat()}..{max(missing).isoformat()}"[:64],
            email=channel.notification_email,
        )
        sid = job["job_sid"]
        log.info(f"bulk export job {sid} for {len(missing)} day(s) {min(missing)}..{max(missing)}"
                 + (f"; Twilio e-mails {channel.notification_email}" if channel.notification_email else ""))
        empty = _await_job(client, sid, {d.isoformat() for d in missing}, job, poll_interval_s, timeout_s, sleep)
    for day in days:
        if day.isoformat() in empty:
            continue
        yield from client.iter_export_day(day)


def _await_job(client: TwilioClient, sid: str, wanted: set[str], job: dict, poll_interval_s: float,
               timeout_s: float, sleep: Callable[[float], None]) -> set[str]:
    """Poll until every wanted day is done; returns the days that had no records."""
    deadline = time.monotonic() + timeout_s
    delay = min(0.2, poll_interval_s)
    while True:
        done: dict[str, str] = {}
        for detail in job.get("details") or []:
            status = detail.get("status")
            for day in detail.get("days") or []:
                if status in FAILED:
                    raise ExportUnavailable(f"bulk export job {sid} reports day {day} as {status}")
                if status in DONE:
                    done[day] = status
        if wanted <= done.keys():
            return {d for d in wanted if done[d] == "CompletedEmptyRecords"}
        if time.monotonic() + delay > deadline:
            raise ExportUnavailable(f"bulk export job {sid} was not done after {timeout_s:.0f} s")
        sleep(delay)
        delay = min(delay * 2, poll_interval_s)
        job = client.fetch_export_job(sid)
