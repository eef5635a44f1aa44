"""The sandbox's Bulk Exports: custom jobs, and the gzip day files they leave behind.

A job is Submitted, then Running after one status step (`--status-delay`), done after two; its day
files are written on the first look after that (`complete_jobs`), from the messages the model holds
then, and served until the next job rewrites them. Only the main account's messages are exported,
as on Twilio. The jobs are journaled like every other change, so a persistent sandbox keeps them.
"""

from __future__ import annotations

import gzip
import json
import math
from bisect import bisect_left
from typing import TYPE_CHECKING

from twilio_pipeline.sandbox.errors import bad_request
from twilio_pipeline.sandbox.message import export_record
from twilio_pipeline.sandbox.sids import new_sid
from twilio_pipeline.sandbox.timefmt import DAY_S, day_start, iso_day

if TYPE_CHECKING:
    from twilio_pipeline.sandbox.model import Model

EXPORT_MAX_DAYS = 366


class Job:
    """A Bulk Export custom job: Submitted, Running after one status step, done after two."""

    __slots__ = ("sid", "friendly_name", "start_day", "end_day", "webhook_url", "webhook_method",
                 "email", "created", "t_running", "t_done")

    def __init__(self, sid, friendly_name, start_day, end_day, webhook_url, webhook_method, email,
                 created, t_running, t_done):
        self.sid = sid
        self.friendly_name = friendly_name
        self.start_day = start_day
        self.end_day = end_day
        self.webhook_url = webhook_url
        self.webhook_method = webhook_method
        self.email = email
        self.created = created
        self.t_running = t_running
        self.t_done = t_done

    def days(self) -> list[str]:
        start, end = day_start(self.start_day), day_start(self.end_day)
        return [iso_day(start + i * DAY_S) for i in range(int((end - start) // DAY_S) + 1)]

    def record(self) -> dict:
        return {"k": "job", **{name: getattr(self, name) for name in self.__slots__}}

    @classmethod
    def from_record(cls, r: dict) -> Job:
        return cls(*(r[name] for name in cls.__slots__))


class Exports:
    """The export jobs and day files of one model (`model.exports`)."""

    def __init__(self, model: Model) -> None:
        self._model = model
        self.jobs: dict[str, Job] = {}
        self.day_files: dict[str, dict] = {}
        self.jobs_generated: set[str] = set()

    def restore(self, record: dict) -> None:
        """Replay a journaled `job` / `job_del` record."""
        if record["k"] == "job":
            job = Job.from_record(record)
            self.jobs[job.sid] = job
        else:
            self.jobs.pop(record["sid"], None)

    def create_job(self, form: dict[str, list[str]]) -> Job:
        def first(name: str) -> str | None:
            values = form.get(name)
            return values[0].strip() if values and values[0].strip() else None

        start, end, name = first("StartDay"), first("EndDay"), first("FriendlyName")
        for param, value in (("StartDay", start), ("EndDay", end), ("FriendlyName", name)):
            if value is None:
                raise bad_request(20001, f"Missing required parameter {param} in the post body")
        try:
            t_start, t_end = day_start(start), day_start(end)
        except ValueError:
            raise bad_request(20001, "StartDay and EndDay must be days in the format yyyy-mm-dd") from None
        now = self._model.now()
        today = day_start(iso_day(now))
        if t_end > today - 2 * DAY_S:
            raise bad_request(20001, f"EndDay {end} must be at least 2 days earlier than the current UTC day {iso_day(now)}")
        if t_start > t_end:
            raise bad_request(20001, "StartDay must not be after EndDay")
        if (t_end - t_start) / DAY_S + 1 > EXPORT_MAX_DAYS:
            raise bad_request(20001, f"A job may span at most {EXPORT_MAX_DAYS} days")
        url, method = first("WebhookUrl"), first("WebhookMethod")
        if (url is None) != (method is None):
            raise bad_request(20001, "WebhookUrl and WebhookMethod must be given together")
        if method is not None and method.upper() not in ("GET", "POST"):
            raise bad_request(20001, "WebhookMethod must be GET or POST")
        d = self._model.config.status_delay_s
        job = Job(new_sid("JS"), name, start, end, url, method.upper() if method else None,
                  first("Email"), now, now + d, now + 2 * d)
        self.jobs[job.sid] = job
        self._model.journal(job.record())
        self.complete_jobs(now)
        return job

    def delete_job(self, sid: str) -> bool:
        if self.jobs.pop(sid, None) is None:
            return False
        self._model.journal({"k": "job_del", "sid": sid})
        return True

    def complete_jobs(self, now: float) -> None:
        """Write the day files of the jobs that are done (lazily, on first look after t_done)."""
        for job in self.jobs.values():
            if job.sid in self.jobs_generated or job.t_done > now:
                continue
            self.jobs_generated.add(job.sid)
            for day in job.days():
                self._write_day(day, job, now)

    def _day_messages(self, day: str, now: float) -> list:
        lo = day_start(day)
        hi = min(lo + DAY_S, math.nextafter(now, math.inf))
        lst = self._model.idx_all
        # Bulk Exports serve the main account only: a subaccount's messages never leak into them
        return [m for m in (self._model.messages[sid] for _, sid in lst[bisect_left(lst, (lo,)):bisect_left(lst, (hi,))])
                if m.acct is None]

    def _write_day(self, day: str, job: Job, now: float) -> None:
        msgs = self._day_messages(day, now)
        if not msgs:
            self.day_files.pop(day, None)
            return
        lines = "".join(json.dumps(export_record(m, now, self._model.config)) + "\n" for m in msgs)
        self.day_files[day] = {
            "day": day,
            "bytes": gzip.compress(lines.encode("utf-8"), compresslevel=6, mtime=0),
            "count": len(msgs),
            "create_date": iso_day(now),
            "friendly_name": job.friendly_name,
        }

    def job_details(self, job: Job, now: float) -> list[dict]:
        days = job.days()
        if now < job.t_done:
            status = "Running" if now >= job.t_running else "Submitted"
            return [{"status": status, "count": len(days), "days": days}]
        self.complete_jobs(now)
        done = [d for d in days if d in self.day_files]
        empty = [d for d in days if d not in self.day_files]
        details = []
        if done:
            details.append({"status": "Completed", "count": len(done), "days": done})
        if empty:
            details.append({"status": "CompletedEmptyRecords", "count": len(empty), "days": empty})
        return details
