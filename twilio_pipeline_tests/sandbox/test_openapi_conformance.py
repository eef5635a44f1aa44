"""Every kind of response the sandbox serves, checked against Twilio's official OpenAPI specs.

The specs are read from `../shared/twilio-openapi/` beside the repository, or from the directory
in TWILIO_OPENAPI_DIR; without them these tests skip (the specs are not part of the repository).
Success bodies are validated with openapi-schema-validator against the operation's response
schema, and their field names must be exactly the schema's. The 2010 API's error body is not in
the spec; errors are checked against the shape Twilio's helper libraries read.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from jsonschema import FormatChecker
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from twilio_pipeline.sandbox.credentials import SANDBOX_MESSAGING_SERVICE_SID

from .conftest import SENDER, TwilioHTTP

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_FILES = {
    "api": "twilio_api_v2010.json",
    "bulkexports": "twilio_bulkexports_v1.json",
    "messaging": "twilio_messaging_v1.json",
}
RFC2822 = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} \+0000$")
PHONE = re.compile(r"^(\+[1-9]\d{6,14}|\d{5,6})$")
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "more_info", "status"],
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string", "minLength": 1},
        "more_info": {"type": "string", "pattern": r"^https://www\.twilio\.com/docs/errors/\d+$"},
        "status": {"type": "integer"},
    },
}


def _spec_dir() -> Path | None:
    candidates = [os.environ.get("TWILIO_OPENAPI_DIR"), str(REPO_ROOT.parent / "shared" / "twilio-openapi")]
    for candidate in candidates:
        if candidate and all((Path(candidate) / name).is_file() for name in SPEC_FILES.values()):
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def specs() -> dict[str, dict]:
    directory = _spec_dir()
    if directory is None:
        pytest.skip("Twilio's OpenAPI specs not found: neither $TWILIO_OPENAPI_DIR nor ../shared/twilio-openapi/ "
                    "beside the repository holds twilio_api_v2010.json, twilio_bulkexports_v1.json and "
                    "twilio_messaging_v1.json")
    return {key: json.loads((directory / name).read_text()) for key, name in SPEC_FILES.items()}


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    checker.checkers = dict(oas30_format_checker.checkers)

    @checker.checks("date-time-rfc-2822")
    def _rfc2822(value) -> bool:
        return not isinstance(value, str) or bool(RFC2822.match(value))

    @checker.checks("phone-number")
    def _phone(value) -> bool:
        return not isinstance(value, str) or bool(PHONE.match(value))

    return checker


def _resolve(node, root):
    """Inline the spec's local $refs (the schemas used here are not recursive)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = root
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            return _resolve(target, root)
        return {k: _resolve(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root) for v in node]
    return node


class Conformance:
    def __init__(self, specs: dict[str, dict]):
        self.specs = specs
        self.checker = _format_checker()
        self.checked: list[str] = []

    def schema(self, spec: str, path: str, method: str, status: int) -> dict:
        operation = self.specs[spec]["paths"][path][method]
        response = operation["responses"][str(status)]
        return _resolve(response["content"]["application/json"]["schema"], self.specs[spec])

    def validate(self, spec: str, path: str, method: str, response: requests.Response, status: int) -> dict:
        assert response.status_code == status, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.json()
        schema = self.schema(spec, path, method, status)
        errors = [f"{list(e.absolute_path)}: {e.message}"
                  for e in OAS30Validator(schema, format_checker=self.checker).iter_errors(body)]
        assert not errors, errors
        _exact_fields(body, schema)
        self.checked.append(f"{method.upper()} {path} {status}")
        return body

    def validate_error(self, response: requests.Response, status: int, code: int) -> None:
        assert response.status_code == status, response.text
        body = response.json()
        errors = [e.message for e in OAS30Validator(ERROR_SCHEMA).iter_errors(body)]
        assert not errors, errors
        assert body["status"] == status and body["code"] == code
        self.checked.append(f"error {status} {code}")


def _exact_fields(body, schema) -> None:
    """Field names exactly as the schema declares them (no invented, none missing)."""
    if isinstance(body, dict) and "properties" in schema:
        declared = set(schema["properties"])
        assert set(body) == declared, (sorted(set(body) - declared), sorted(declared - set(body)))
        for key, value in body.items():
            if key in schema["properties"]:
                _exact_fields(value, schema["properties"][key])
    elif isinstance(body, list) and "items" in schema:
        for item in body:
            _exact_fields(item, schema["items"])


MESSAGES = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
MESSAGE = "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"


def test_api_2010_responses(specs, make_sandbox):
    check = Conformance(specs)
    sandbox = make_sandbox("spec2010", status_delay_ms=1000, undelivered_rate=0.5, failed_rate=0.5, reply_rate=1.0)
    http = TwilioHTTP(sandbox)
    path = http.messages_path

    direct = check.validate("api", MESSAGES, "post", http.create(To="+15558000001", From=SENDER, Body="Hi 👋"), 201)
    service = check.validate("api", MESSAGES, "post", http.create(
        To="+15558000002", MessagingServiceSid=SANDBOX_MESSAGING_SERVICE_SID, Body="Hi"), 201)
    check.validate("api", MESSAGES, "post", http.create(
        To="+15558000003", From=SENDER, MediaUrl="https://example.com/a.png"), 201)
    now = datetime.fromtimestamp(sandbox.clock()["now_epoch"], UTC)
    check.validate("api", MESSAGES, "post", http.create(
        To="+15558000004", MessagingServiceSid=SANDBOX_MESSAGING_SERVICE_SID, Body="later",
        ScheduleType="fixed", SendAt=(now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")), 201)
    for sid in (direct["sid"], service["sid"]):
        check.validate("api", MESSAGE, "get", http.get(f"/2010-04-01/Accounts/{http.account}/Messages/{sid}.json"), 200)
    sandbox.inbound("+15558000005", SENDER, "START")
    sandbox.advance_clock(30)  # final statuses (with error codes) and replies exist now
    listed = check.validate("api", MESSAGES, "get", http.get(path, params={"PageSize": 2}), 200)
    assert listed["next_page_uri"]
    check.validate("api", MESSAGES, "get", http.get(listed["next_page_uri"]), 200)
    everything = check.validate("api", MESSAGES, "get", http.get(path, params={"PageSize": 1000}), 200)
    statuses = {m["status"] for m in everything["messages"]}
    assert {"received", "scheduled"} <= statuses and statuses & {"failed", "undelivered"}
    check.validate("api", MESSAGES, "get", http.get(path, params={"To": "+10000000000", "DateSent>": "2020-01-01"}), 200)
    check.validate("api", "/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers.json", "get",
                   http.get(f"/2010-04-01/Accounts/{http.account}/IncomingPhoneNumbers.json", params={"PageSize": 1}), 200)
    check.validate("api", "/2010-04-01/Accounts/{Sid}.json", "get", http.get(f"/2010-04-01/Accounts/{http.account}.json"), 200)

    check.validate_error(http.create(From=SENDER, Body="x"), 400, 21604)
    check.validate_error(http.create(To="+15005550004", From=SENDER, Body="x"), 400, 21610)
    check.validate_error(requests.get(http.base + path, timeout=10), 401, 20003)
    check.validate_error(http.get(f"/2010-04-01/Accounts/{http.account}/Messages/SM{'0' * 32}.json"), 404, 20404)
    check.validate_error(http.session.delete(f"{http.base}/2010-04-01/Accounts/{http.account}/Messages/{direct['sid']}.json", timeout=10), 405, 20004)
    check.validate_error(http.get(path, params={"PageSize": 5000}), 400, 20001)
    assert len(check.checked) >= 18


def test_messaging_v1_responses(specs, instant_sandbox):
    check = Conformance(specs)
    http = TwilioHTTP(instant_sandbox)
    svc = SANDBOX_MESSAGING_SERVICE_SID
    check.validate("messaging", "/v1/Services", "get", http.get("/v1/Services"), 200)
    check.validate("messaging", "/v1/Services/{Sid}", "get", http.get(f"/v1/Services/{svc}"), 200)
    numbers = check.validate("messaging", "/v1/Services/{ServiceSid}/PhoneNumbers", "get",
                             http.get(f"/v1/Services/{svc}/PhoneNumbers", params={"PageSize": 2}), 200)
    assert numbers["meta"]["next_page_url"]
    check.validate("messaging", "/v1/Services/{ServiceSid}/PhoneNumbers", "get", http.get(numbers["meta"]["next_page_url"]), 200)
    check.validate("messaging", "/v1/Services/{ServiceSid}/PhoneNumbers/{Sid}", "get",
                   http.get(f"/v1/Services/{svc}/PhoneNumbers/{numbers['phone_numbers'][0]['sid']}"), 200)
    check.validate_error(http.get(f"/v1/Services/MG{'0' * 31}1"), 404, 20404)


def test_short_codes_and_alpha_senders_responses(specs, make_sandbox):
    check = Conformance(specs)
    http = TwilioHTTP(make_sandbox("pools", pool_short_codes="24680,135791", pool_alpha_senders="ACME"))
    svc = SANDBOX_MESSAGING_SERVICE_SID
    codes = check.validate("messaging", "/v1/Services/{ServiceSid}/ShortCodes", "get",
                           http.get(f"/v1/Services/{svc}/ShortCodes", params={"PageSize": 1}), 200)
    check.validate("messaging", "/v1/Services/{ServiceSid}/ShortCodes", "get", http.get(codes["meta"]["next_page_url"]), 200)
    check.validate("messaging", "/v1/Services/{ServiceSid}/ShortCodes/{Sid}", "get",
                   http.get(f"/v1/Services/{svc}/ShortCodes/{codes['short_codes'][0]['sid']}"), 200)
    alpha = check.validate("messaging", "/v1/Services/{ServiceSid}/AlphaSenders", "get",
                           http.get(f"/v1/Services/{svc}/AlphaSenders"), 200)
    check.validate("messaging", "/v1/Services/{ServiceSid}/AlphaSenders/{Sid}", "get",
                   http.get(f"/v1/Services/{svc}/AlphaSenders/{alpha['alpha_senders'][0]['sid']}"), 200)
    account = check.validate("api", "/2010-04-01/Accounts/{AccountSid}/SMS/ShortCodes.json", "get",
                             http.get(f"/2010-04-01/Accounts/{http.account}/SMS/ShortCodes.json"), 200)
    assert [c["short_code"] for c in account["short_codes"]] == ["24680", "135791"]
    assert len(check.checked) == 6


def test_bulk_exports_responses(specs, stepped: TwilioHTTP):
    check = Conformance(specs)
    http = stepped
    http.send("+15558100001", "export me")
    http.sandbox.inbound("+15558100002", SENDER, "STOP")
    http.sandbox.advance_clock(3 * 86400)
    day = datetime.fromtimestamp(http.sandbox.clock()["now_epoch"] - 3 * 86400, UTC).strftime("%Y-%m-%d")
    check.validate("bulkexports", "/v1/Exports/{ResourceType}", "get", http.get("/v1/Exports/Messages"), 200)
    job = check.validate("bulkexports", "/v1/Exports/{ResourceType}/Jobs", "post", http.post(
        "/v1/Exports/Messages/Jobs", data={"StartDay": day, "EndDay": day, "FriendlyName": "spec"}), 201)
    check.validate("bulkexports", "/v1/Exports/Jobs/{JobSid}", "get", http.get(f"/v1/Exports/Jobs/{job['job_sid']}"), 200)
    http.sandbox.advance_clock(5)
    done = check.validate("bulkexports", "/v1/Exports/Jobs/{JobSid}", "get", http.get(f"/v1/Exports/Jobs/{job['job_sid']}"), 200)
    assert done["details"][0]["status"] == "Completed"
    check.validate("bulkexports", "/v1/Exports/{ResourceType}/Jobs", "get", http.get("/v1/Exports/Messages/Jobs"), 200)
    check.validate("bulkexports", "/v1/Exports/{ResourceType}/Days", "get", http.get("/v1/Exports/Messages/Days"), 200)
    redirect = http.session.get(f"{http.base}/v1/Exports/Messages/Days/{day}", allow_redirects=False, timeout=10)
    body = check.validate("bulkexports", "/v1/Exports/{ResourceType}/Days/{Day}", "get", redirect, 307)

    # the day file: Message resources without uris, price_unit, api_version and error_message,
    # with ISO 8601 dates instead of RFC 2822
    record_schema = copy.deepcopy(check.schema("api", MESSAGE, "get", 200))
    for dropped in ("uri", "subresource_uris", "price_unit", "api_version", "error_message"):
        del record_schema["properties"][dropped]
    for name in ("date_created", "date_sent", "date_updated"):
        record_schema["properties"][name]["format"] = "date-time"
    records = [json.loads(line) for line in gzip.decompress(requests.get(body["redirect_to"], timeout=10).content).splitlines()]
    assert len(records) == 2
    for record in records:
        errors = [e.message for e in OAS30Validator(record_schema, format_checker=check.checker).iter_errors(record)]
        assert not errors, errors
        assert set(record) == set(record_schema["properties"])

    check.validate_error(http.post("/v1/Exports/Messages/Jobs", data={"StartDay": day}), 400, 20001)
    check.validate_error(http.get("/v1/Exports/Jobs/JS" + "0" * 32), 404, 20404)
    delete = http.session.delete(f"{http.base}/v1/Exports/Jobs/{job['job_sid']}", timeout=10)
    assert delete.status_code == 204 and delete.content == b""


def test_throttle_and_fault_errors_have_the_error_shape(specs, make_sandbox):
    check = Conformance(specs)
    limited = TwilioHTTP(make_sandbox("f429", status_delay_ms=0, fault_429_rate=1.0))
    check.validate_error(limited.create(To="+15558200001", From=SENDER, Body="x"), 429, 20429)
    failing = TwilioHTTP(make_sandbox("f500", status_delay_ms=0, fault_500_rate=1.0))
    check.validate_error(failing.create(To="+15558200002", From=SENDER, Body="x"), 500, 20500)
