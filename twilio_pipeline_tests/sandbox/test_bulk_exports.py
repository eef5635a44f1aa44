"""Bulk Exports v1 for Messages: jobs moving to Completed, the Days list, the 307 to a day file
(gzip JSON lines, ISO 8601 dates) whose records match the listing of that day."""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime, timedelta

import requests

from twilio_pipeline.sandbox.credentials import SANDBOX_POOL_NUMBERS

from .conftest import TwilioHTTP
from .test_messages import assert_error

DAY = "%Y-%m-%d"


def _today(http: TwilioHTTP) -> datetime:
    now = datetime.fromtimestamp(http.sandbox.clock()["now_epoch"], UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def test_export_days_match_the_listing(stepped: TwilioHTTP):
    http = stepped
    day0 = _today(http)
    outbound = [http.send(f"+1555700{i:04d}", f"offer {i}")["sid"] for i in range(6)]
    items = [{"From": f"+1555710{i:04d}", "To": SANDBOX_POOL_NUMBERS[0], "Body": "STOP" if i % 2 else "thanks",
              "DateSent": (day0 - timedelta(days=1, hours=-i)).strftime("%Y-%m-%dT%H:%M:%SZ")} for i in range(8)]
    http.sandbox.inbound_bulk(items)
    http.sandbox.advance_clock(3 * 86400)  # day0 is now three days ago: exportable
    start, end = (day0 - timedelta(days=2)).strftime(DAY), day0.strftime(DAY)

    created = http.post("/v1/Exports/Messages/Jobs", data={
        "StartDay": start, "EndDay": end, "FriendlyName": "nightly", "Email": "ops@example.com",
        "WebhookUrl": "https://example.com/hook", "WebhookMethod": "POST"})
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["job_sid"].startswith("JS") and job["friendly_name"] == "nightly"
    assert job["details"] == [{"status": "Submitted", "count": 3, "days": [start, (day0 - timedelta(days=1)).strftime(DAY), end]}]
    assert job["email"] == "ops@example.com" and job["webhook_method"] == "POST"

    def status() -> list[str]:
        fetched = http.get(f"/v1/Exports/Jobs/{job['job_sid']}").json()
        assert fetched["url"] == f"{http.base}/v1/Exports/Jobs/{job['job_sid']}"
        return [d["status"] for d in fetched["details"]]

    assert status() == ["Submitted"]
    http.sandbox.advance_clock(1.0)
    assert status() == ["Running"]
    http.sandbox.advance_clock(1.0)
    assert status() == ["Completed", "CompletedEmptyRecords"]
    fetched = http.get(f"/v1/Exports/Jobs/{job['job_sid']}").json()
    assert fetched["details"][0]["days"] == [(day0 - timedelta(days=1)).strftime(DAY), end]
    assert fetched["details"][1]["days"] == [start]

    days = http.get("/v1/Exports/Messages/Days").json()
    assert days["meta"]["key"] == "days"
    assert [d["day"] for d in days["days"]] == [end, (day0 - timedelta(days=1)).strftime(DAY)]
    assert all(d["resource_type"] == "Messages" and d["size"] > 0 for d in days["days"])

    for day in days["days"]:
        redirect = http.session.get(f"{http.base}/v1/Exports/Messages/Days/{day['day']}", allow_redirects=False, timeout=10)
        assert redirect.status_code == 307
        link = redirect.json()["redirect_to"]
        assert redirect.headers["Location"] == link
        download = requests.get(link, timeout=10)  # a signed link: no credentials needed
        assert download.status_code == 200
        assert len(download.content) == day["size"]
        records = [json.loads(line) for line in gzip.decompress(download.content).decode().splitlines()]
        listed = http.list_all(DateSent=day["day"], PageSize=3)
        assert sorted(r["sid"] for r in records) == sorted(m["sid"] for m in listed)
        for record in records:
            assert record["date_created"].endswith("Z") and "T" in record["date_sent"]
            datetime.strptime(record["date_sent"], "%Y-%m-%dT%H:%M:%SZ")
            assert "uri" not in record and "price_unit" not in record and "api_version" not in record
            assert "error_message" not in record and "error_code" in record
        by_sid = {m["sid"]: m for m in listed}
        for record in records:
            assert record["status"] == by_sid[record["sid"]]["status"]
            assert record["body"] == by_sid[record["sid"]]["body"]
    everything = [m["sid"] for m in http.list_all() if m["direction"] == "outbound-api"]
    assert sorted(everything) == sorted(outbound)
    time.sleep(0.5)  # the access log is written every quarter second
    log = http.sandbox.log_path.read_text()
    assert "/_sandbox/exports/Messages/" in log and "Signature=" not in log  # the link is a credential

    jobs = http.get("/v1/Exports/Messages/Jobs").json()
    assert [j["job_sid"] for j in jobs["jobs"]] == [job["job_sid"]]
    assert http.session.delete(f"{http.base}/v1/Exports/Jobs/{job['job_sid']}", timeout=10).status_code == 204
    assert_error(http.get(f"/v1/Exports/Jobs/{job['job_sid']}"), 404, 20404)


def test_export_job_validation(stepped: TwilioHTTP):
    http = stepped
    today = _today(http)
    base = {"FriendlyName": "x", "StartDay": (today - timedelta(days=5)).strftime(DAY)}
    yesterday = (today - timedelta(days=1)).strftime(DAY)
    assert_error(http.post("/v1/Exports/Messages/Jobs", data={**base, "EndDay": yesterday}), 400, 20001)
    ok_end = (today - timedelta(days=2)).strftime(DAY)
    assert http.post("/v1/Exports/Messages/Jobs", data={**base, "EndDay": ok_end}).status_code == 201
    assert_error(http.post("/v1/Exports/Messages/Jobs", data={"StartDay": base["StartDay"], "EndDay": ok_end}), 400, 20001)
    assert_error(http.post("/v1/Exports/Messages/Jobs", data={**base, "EndDay": "2020/01/01"}), 400, 20001)
    assert_error(http.post("/v1/Exports/Messages/Jobs", data={**base, "EndDay": ok_end, "WebhookUrl": "https://e.com"}), 400, 20001)
    assert_error(http.get(f"/v1/Exports/Messages/Days/{ok_end}"), 404, 20404)
    assert_error(http.get("/v1/Exports/Calls/Days"), 404, 20404)
    export = http.get("/v1/Exports/Messages").json()
    assert export["links"]["days"] == f"{http.base}/v1/Exports/Messages/Days"


def test_download_needs_the_signed_link(api: TwilioHTTP):
    response = requests.get(f"{api.base}/_sandbox/exports/Messages/2020-01-01.json.gz", timeout=10)
    assert response.status_code == 403
    response = requests.get(f"{api.base}/_sandbox/exports/Messages/2020-01-01.json.gz?Signature=00", timeout=10)
    assert response.status_code == 403
