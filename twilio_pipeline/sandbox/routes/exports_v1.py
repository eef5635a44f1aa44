"""The Bulk Exports v1 API of the sandbox: jobs, the Days list, the 307 to a signed day-file link and
the download itself (the jobs and files are the model's: `sandbox/exports.py`)."""

from __future__ import annotations

import hashlib
import hmac

from twilio_pipeline.sandbox.errors import not_found
from twilio_pipeline.sandbox.http import Request, Response
from twilio_pipeline.sandbox.paging import v1_page
from twilio_pipeline.sandbox.timefmt import iso8601_ms


class ExportRoutes:
    """Handlers of the `/v1/Exports` routes and the day-file download, mixed into `SandboxApp` (whose
    `model`, `_json`, `_host_url` and `_download_key` they use)."""

    @staticmethod
    def _check_resource(request: Request, resource_type: str) -> None:
        if resource_type != "Messages":
            raise not_found(request.path)

    def _job_json(self, job, host: str, with_url: bool) -> dict:
        now = self.model.now()
        done = now >= job.t_done
        body = {
            "resource_type": "Messages", "friendly_name": job.friendly_name,
            "details": self.model.exports.job_details(job, now), "start_day": job.start_day,
            "end_day": job.end_day, "job_sid": job.sid, "webhook_url": job.webhook_url,
            "webhook_method": job.webhook_method, "email": job.email,
            "job_queue_position": "0" if done else "1",
            "estimated_completion_time": iso8601_ms(job.t_done),
        }
        if with_url:
            body["url"] = f"{host}/v1/Exports/Jobs/{job.sid}"
        return body

    def fetch_export(self, request: Request, resource_type: str) -> Response:
        self._check_resource(request, resource_type)
        host = self._host_url(request)
        return self._json(200, {
            "resource_type": "Messages", "url": f"{host}/v1/Exports/Messages",
            "links": {"days": f"{host}/v1/Exports/Messages/Days",
                      "export_custom_jobs": f"{host}/v1/Exports/Messages/Jobs",
                      "jobs": f"{host}/v1/Exports/Jobs"},
        })

    def create_job(self, request: Request, resource_type: str) -> Response:
        self._check_resource(request, resource_type)
        job = self.model.exports.create_job(request.form())
        return self._json(201, self._job_json(job, self._host_url(request), False))

    def list_jobs(self, request: Request, resource_type: str) -> Response:
        self._check_resource(request, resource_type)
        host = self._host_url(request)
        jobs = sorted(self.model.exports.jobs.values(), key=lambda j: (-j.created, j.sid))
        items = [self._job_json(j, host, False) for j in jobs]
        return self._json(200, v1_page(request, "/v1/Exports/Messages/Jobs", "jobs", items, 1000))

    def fetch_job(self, request: Request, sid: str) -> Response:
        job = self.model.exports.jobs.get(sid)
        if job is None:
            raise not_found(request.path)
        return self._json(200, self._job_json(job, self._host_url(request), True))

    def delete_job(self, request: Request, sid: str) -> Response:
        if not self.model.exports.delete_job(sid):
            raise not_found(request.path)
        return Response(204, b"")

    def list_days(self, request: Request, resource_type: str) -> Response:
        self._check_resource(request, resource_type)
        self.model.exports.complete_jobs(self.model.now())
        files = sorted(self.model.exports.day_files.values(), key=lambda f: f["day"], reverse=True)
        items = [{"day": f["day"], "size": len(f["bytes"]), "create_date": f["create_date"],
                  "friendly_name": f["friendly_name"], "resource_type": "Messages"} for f in files]
        return self._json(200, v1_page(request, "/v1/Exports/Messages/Days", "days", items, 400))

    def _download_token(self, day: str) -> str:
        return hmac.new(self._download_key, day.encode(), hashlib.sha256).hexdigest()[:32]

    def fetch_day(self, request: Request, resource_type: str, day: str) -> Response:
        self._check_resource(request, resource_type)
        self.model.exports.complete_jobs(self.model.now())
        if day not in self.model.exports.day_files:
            raise not_found(request.path)
        link = (f"{self._host_url(request)}/_sandbox/exports/Messages/{day}.json.gz"
                f"?Signature={self._download_token(day)}")
        return self._json(307, {"redirect_to": link}, headers={"Location": link})

    def download_day(self, request: Request, resource_type: str, day: str) -> Response:
        signature = (request.params.get("Signature") or [""])[0]
        if not hmac.compare_digest(signature, self._download_token(day)):
            return self._json(403, {"code": 20003, "message": "Invalid or missing download signature",
                                    "more_info": "https://www.twilio.com/docs/errors/20003", "status": 403})
        day_file = self.model.exports.day_files.get(day) if resource_type == "Messages" else None
        if day_file is None:
            raise not_found(request.path)
        return Response(200, day_file["bytes"], content_type="application/gzip")
