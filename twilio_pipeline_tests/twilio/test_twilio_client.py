"""TwilioClient against a local scripted server: one test per retry / ambiguity / paging / redaction rule."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, date, datetime

import pytest

from twilio_pipeline.twilio import (
    AmbiguousRequest,
    CredentialsRejected,
    Endpoints,
    MalformedResponse,
    RetrySettings,
    TwilioApiError,
    TwilioClient,
    TwilioCredentials,
    TwilioUnavailable,
)

from .fake_server import Answer, FakeTwilio, reply, twilio_error, unused_port

SID = "AC" + "a" * 32
TOKEN = "tok" + "5f3a9c" * 5  # recognisable, must never show up anywhere
MESSAGES = f"/2010-04-01/Accounts/{SID}/Messages.json"
NUMBERS = f"/2010-04-01/Accounts/{SID}/IncomingPhoneNumbers.json"
SEND = {"To": "+15551230001", "From": "+15005550006", "Body": "hello"}


def message(sid_n: int = 1, status: str = "queued", **extra) -> dict:
    body = {
        "sid": f"SM{sid_n:032x}",
        "account_sid": SID,
        "to": "+15551230001",
        "from": "+15005550006",
        "body": "hello",
        "status": status,
        "num_segments": "1",
        "date_created": "Fri, 09 Jul 2021 15:58:57 +0000",
    }
    body.update(extra)
    return body


@pytest.fixture
def server():
    srv = FakeTwilio()
    yield srv
    srv.close()


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def make_client(server, sleeps):
    made = []

    def make(**kw) -> TwilioClient:
        base = kw.pop("base", server.url)
        kw.setdefault("retry", RetrySettings(max_attempts=3, min_delay_s=1, max_delay_s=20, throttle_budget_s=60))
        kw.setdefault("read_timeout_s", 2.0)
        kw.setdefault("connect_timeout_s", 1.0)
        creds = kw.pop("credentials", TwilioCredentials(SID, TOKEN))
        client = TwilioClient(
            creds,
            endpoints=Endpoints(api_base=base, bulkexports_base=base, messaging_base=base),
            sleep=sleeps.append,
            **kw,
        )
        made.append(client)
        return client

    yield make
    for c in made:
        c.close()


# --- create: what is retried, what is refused, what is ambiguous ---------------------------------


def test_create_accepted_returns_message_once(server, make_client):
    server.script("POST", MESSAGES, reply(201, message(status="some_future_status")))
    res = make_client().create_message(SEND)
    assert res.outcome == "accepted" and res.attempts == 1 and res.http_status == 201
    assert res.message["status"] == "some_future_status"  # unknown statuses pass through
    assert res.message["num_segments"] == "1"
    assert res.started_at.tzinfo is not None
    assert server.requests_to("POST", MESSAGES)[0].form["Body"] == ["hello"]


def test_429_is_retried_then_succeeds(server, make_client, sleeps):
    server.script("POST", MESSAGES, twilio_error(429, 20429, "Too Many Requests"), reply(201, message()))
    client = make_client()
    res = client.create_message(SEND)
    assert res.outcome == "accepted" and res.attempts == 2
    assert len(server.requests_to("POST", MESSAGES)) == 2
    assert client.throttled_count == 1 and client.request_count == 2
    # Not processed, and the limiter already keeps fewer in flight: retried after 50 ms, not min_delay_s.
    assert sleeps == [pytest.approx(0.05)]


def test_429_retries_back_off_exponentially_up_to_max_delay(server, make_client, sleeps):
    server.script("POST", MESSAGES, *[twilio_error(429, 20429, "Too Many Requests")] * 12, reply(201, message()))
    assert make_client().create_message(SEND).outcome == "accepted"
    assert len(sleeps) == 12 and all(0.05 <= s <= 20.0 for s in sleeps)
    assert max(sleeps[:3]) <= 0.2 and max(sleeps[-3:]) > 1.0, sleeps  # 50 ms doubling, jittered


def test_retry_after_is_honoured(server, make_client, sleeps):
    server.script(
        "POST", MESSAGES,
        twilio_error(429, 20429, "Too Many Requests", headers={"Retry-After": "7"}),
        reply(201, message()),
    )
    assert make_client().create_message(SEND).outcome == "accepted"
    assert sleeps == [7.0]


def test_retry_after_on_get_5xx_is_capped_at_max_delay(server, make_client, sleeps):
    path = f"/2010-04-01/Accounts/{SID}/Messages/SM1.json"
    server.script("GET", path, twilio_error(503, 20503, "busy", headers={"Retry-After": "3600"}), reply(200, message()))
    assert make_client().fetch_message("SM1")["sid"]
    assert sleeps == [20.0]


def test_throttle_budget_exhausted_raises_unavailable(server, make_client, sleeps):
    server.script("POST", MESSAGES, twilio_error(429, 20429, "Too Many Requests"))
    client = make_client(retry=RetrySettings(max_attempts=2, min_delay_s=1, max_delay_s=4, throttle_budget_s=15))
    with pytest.raises(TwilioUnavailable) as err:
        client.create_message(SEND)
    # throttling is bounded by the waiting budget, not by max_attempts
    assert sum(sleeps) == pytest.approx(15.0)
    assert len(server.requests_to("POST", MESSAGES)) == len(sleeps) + 1 > 2
    assert err.value.status == 429 and err.value.code == 20429
    assert "throttl" in str(err.value)


def test_queue_full_21611_is_retried_like_429(server, make_client, sleeps):
    server.script("POST", MESSAGES, twilio_error(400, 21611, "queue full"), reply(201, message()))
    res = make_client().create_message(SEND)
    assert res.outcome == "accepted" and res.attempts == 2
    # The sender's queue drains at its own rate: the channel's backoff, not the 429's 50 ms.
    assert len(sleeps) == 1 and 1.0 <= sleeps[0] <= 20.0


def test_post_500_is_ambiguous_and_posted_once(server, make_client, sleeps):
    server.script("POST", MESSAGES, twilio_error(500, 20500, "Internal Server Error"), reply(201, message()))
    res = make_client().create_message(SEND)
    assert res.outcome == "ambiguous" and res.http_status == 500
    assert "may have created" in res.error_message
    assert len(server.requests_to("POST", MESSAGES)) == 1
    assert sleeps == []


def test_post_read_timeout_is_ambiguous_and_posted_once(server, make_client):
    server.script("POST", MESSAGES, Answer(201, json=message(), delay_s=2.0), reply(201, message()))
    res = make_client(read_timeout_s=0.2).create_message(SEND)
    assert res.outcome == "ambiguous" and res.http_status is None
    assert "read timeout" in res.error_message
    assert len(server.requests_to("POST", MESSAGES)) == 1


def test_post_reset_after_sending_is_ambiguous(server, make_client):
    server.script("POST", MESSAGES, Answer(reset=True), reply(201, message()))
    res = make_client().create_message(SEND)
    assert res.outcome == "ambiguous"
    assert len(server.requests_to("POST", MESSAGES)) == 1


def test_post_malformed_2xx_is_ambiguous(server, make_client):
    server.script(
        "POST", MESSAGES,
        Answer(201, body=b'{"sid": "SM123", "status": "que', headers={"Content-Type": "application/json"}),
        reply(201, {"status": "queued"}),
    )
    client = make_client()
    truncated = client.create_message(SEND)
    no_sid = client.create_message(SEND)
    assert truncated.outcome == no_sid.outcome == "ambiguous"
    assert "not valid JSON" in truncated.error_message and "sid" in no_sid.error_message
    assert len(server.requests_to("POST", MESSAGES)) == 2


def test_refused_21211_carries_code(server, make_client, sleeps):
    server.script("POST", MESSAGES, twilio_error(400, 21211, "Invalid 'To' Phone Number"))
    res = make_client().create_message(SEND)
    assert (res.outcome, res.error_code, res.http_status) == ("refused", 21211, 400)
    assert res.error_message == "Invalid 'To' Phone Number"
    assert len(server.requests_to("POST", MESSAGES)) == 1 and sleeps == []


def test_401_raises_credentials_rejected_after_one_request(server, make_client, sleeps):
    server.script("POST", MESSAGES, twilio_error(401, 20003, "Authenticate"))
    server.script("GET", NUMBERS, twilio_error(401, 20003, "Authenticate"))
    client = make_client()
    with pytest.raises(CredentialsRejected) as err:
        client.create_message(SEND)
    assert "rejected the credentials" in str(err.value) and err.value.code == 20003
    with pytest.raises(CredentialsRejected):
        client.connectivity_test()
    assert len(server.seen) == 2 and sleeps == []


def test_connection_refused_is_retried_then_unavailable(make_client, sleeps):
    client = make_client(base=f"http://127.0.0.1:{unused_port()}")
    with pytest.raises(TwilioUnavailable) as err:
        client.create_message(SEND)
    assert err.value.attempts == 3 and client.request_count == 3 and len(sleeps) == 2
    with pytest.raises(TwilioUnavailable):
        client.fetch_message("SM1")
    assert client.request_count == 6


# --- GET: retried on 5xx, timeouts, malformed bodies ------------------------------------------


def test_get_500_is_retried(server, make_client, sleeps):
    path = f"/2010-04-01/Accounts/{SID}/Messages/SM1.json"
    server.script("GET", path, twilio_error(500, 20500, "oops"), reply(200, message(status="delivered")))
    assert make_client().fetch_message("SM1")["status"] == "delivered"
    assert len(server.requests_to("GET", path)) == 2 and len(sleeps) == 1


def test_get_read_timeout_is_retried(server, make_client):
    path = f"/2010-04-01/Accounts/{SID}/Messages/SM1.json"
    server.script("GET", path, Answer(200, json=message(), delay_s=2.0), reply(200, message(status="sent")))
    assert make_client(read_timeout_s=0.2).fetch_message("SM1")["status"] == "sent"
    assert len(server.requests_to("GET", path)) == 2


def test_get_malformed_is_retried_then_malformed_response(server, make_client):
    server.script("GET", NUMBERS, Answer(200, body=b"<html>proxy error</html>", headers={"Content-Type": "text/html"}))
    with pytest.raises(MalformedResponse):
        make_client().connectivity_test()
    assert len(server.requests_to("GET", NUMBERS)) == 3


def test_get_500_exhausted_raises_unavailable(server, make_client):
    server.script("GET", NUMBERS, twilio_error(503, 20503, "down"))
    with pytest.raises(TwilioUnavailable) as err:
        make_client().connectivity_test()
    assert err.value.status == 503 and err.value.attempts == 3


def test_fetch_404_is_none_and_other_4xx_raise(server, make_client):
    server.script("GET", f"/2010-04-01/Accounts/{SID}/Messages/SMnope.json", twilio_error(404, 20404, "not found"))
    server.script("GET", NUMBERS, twilio_error(400, 20001, "bad"))
    client = make_client()
    assert client.fetch_message("SMnope") is None
    with pytest.raises(TwilioApiError) as err:
        client.connectivity_test()
    assert not isinstance(err.value, (TwilioUnavailable, CredentialsRejected)) and err.value.code == 20001


def test_connectivity_test_counts_numbers_and_sends_page_size_1(server, make_client):
    server.script("GET", NUMBERS, reply(200, {"incoming_phone_numbers": [{"phone_number": "+1500"}], "next_page_uri": None}))
    assert make_client().connectivity_test() == 1
    assert server.requests_to("GET", NUMBERS)[0].query == {"PageSize": ["1"]}


def test_403_on_probe_is_credentials_rejected_with_hint(server, make_client):
    server.script("GET", NUMBERS, twilio_error(403, 20003, "Forbidden"))
    with pytest.raises(CredentialsRejected, match="connectivity_test"):
        make_client().connectivity_test()
    assert len(server.seen) == 1


# --- paging --------------------------------------------------------------------------------------


def test_paging_follows_next_page_uri_and_sends_rfc3339_filters(server, make_client):
    pages = {
        None: ([message(1), message(2)], f"{MESSAGES}?PageSize=2&Page=1&PageToken=PA1"),
        "PA1": ([message(3), message(4)], f"{MESSAGES}?PageSize=2&Page=2&PageToken=PA2"),
        "PA2": ([message(5)], None),
    }

    def page(seen):
        token = seen.query.get("PageToken", [None])[0]
        msgs, nxt = pages[token]
        return reply(200, {"messages": msgs, "next_page_uri": nxt, "page_size": 2})

    server.script("GET", MESSAGES, page)
    after = datetime(2021, 7, 9, 16, 26, 5, tzinfo=UTC)
    got = list(make_client().iter_messages(to="+15551230001", date_sent_after=after, page_size=5000))
    assert [m["sid"] for m in got] == [f"SM{i:032x}" for i in range(1, 6)]
    seen = server.requests_to("GET", MESSAGES)
    assert len(seen) == 3
    first = seen[0]
    assert "DateSent%3E=" in first.raw_query  # the parameter name is literally "DateSent>"
    assert first.query["DateSent>"] == ["2021-07-09T16:26:05Z"]
    assert first.query["PageSize"] == ["1000"]  # capped at Twilio's maximum
    assert first.query["To"] == ["+15551230001"]
    assert seen[2].query["PageToken"] == ["PA2"]


def test_iter_message_pages_yields_one_list_per_page_and_date_filters(server, make_client):
    server.script(
        "GET", MESSAGES,
        reply(200, {"messages": [message(1)], "next_page_uri": f"{MESSAGES}?Page=1&PageToken=X"}),
        reply(200, {"messages": [], "next_page_uri": None}),
    )
    before = datetime(2021, 7, 10, 1, 2, 3, 500000, tzinfo=UTC)
    pages = list(make_client().iter_message_pages(date_sent=date(2021, 7, 9), date_sent_before=before))
    assert [len(p) for p in pages] == [1, 0]
    q = server.requests_to("GET", MESSAGES)[0].query
    assert q["DateSent"] == ["2021-07-09"] and q["DateSent<"] == ["2021-07-10T01:02:04Z"]


def test_v1_paging_for_service_numbers_stays_on_configured_host(server, make_client):
    path = "/v1/Services/MG1/PhoneNumbers"
    server.script(
        "GET", path,
        reply(200, {"phone_numbers": [{"phone_number": "+15550000001"}],
                    "meta": {"next_page_url": f"https://messaging.twilio.com{path}?PageSize=1000&Page=1&PageToken=PT"}}),
        reply(200, {"phone_numbers": [{"phone_number": "+15550000002"}], "meta": {"next_page_url": None}}),
    )
    assert make_client().list_service_phone_numbers("MG1") == ["+15550000001", "+15550000002"]
    assert server.requests_to("GET", path)[1].query["PageToken"] == ["PT"]


# --- redaction and auth --------------------------------------------------------------------------


def test_secrets_never_appear_in_trace_errors_or_results(server, make_client):
    auth_b64 = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()

    def echo(seen):  # a misbehaving server echoing the credentials back
        return twilio_error(400, 21211, f"bad request with {seen.headers.get('Authorization')} and token {TOKEN}")

    server.script("POST", MESSAGES, echo)
    server.script("GET", NUMBERS, lambda seen: twilio_error(401, 20003, f"Authenticate {TOKEN}"))
    server.script("GET", f"/2010-04-01/Accounts/{SID}/Messages/SM1.json",
                  lambda seen: twilio_error(500, 20500, f"crash {seen.headers.get('Authorization')}"))
    lines: list[str] = []
    client = make_client(trace=lines.append)
    texts = [repr(client), repr(TwilioCredentials(SID, TOKEN, "SK1", "apisecret123"))]
    res = client.create_message(SEND)
    texts += [res.error_message, repr(res)]
    for call in (client.connectivity_test, lambda: client.fetch_message("SM1")):
        with pytest.raises(TwilioApiError) as err:
            call()
        texts += [str(err.value), repr(err.value), err.value.message]
    texts += lines
    assert any("HTTP POST" in line and "-> 400" in line and "request id RQ" in line for line in lines)
    assert any(line.startswith("retry GET") for line in lines)
    blob = "\n".join(texts)
    assert "[REDACTED]" in blob
    for secret in (TOKEN, auth_b64, "apisecret123"):
        assert secret not in blob
    # the server did receive the credentials: redaction is on our side only
    assert server.requests_to("POST", MESSAGES)[0].headers["Authorization"] == f"Basic {auth_b64}"


def test_api_key_auth_uses_key_sid_as_username(server, make_client):
    server.script("POST", MESSAGES, reply(201, message()))
    client = make_client(credentials=TwilioCredentials(SID, api_key_sid="SK" + "b" * 32, api_key_secret="keysecret"))
    assert client.create_message(SEND).accepted
    header = server.requests_to("POST", MESSAGES)[0].headers["Authorization"]
    assert base64.b64decode(header.split()[1]).decode() == f"SK{'b' * 32}:keysecret"
    assert MESSAGES.split("/")[3] == SID  # the path still names the account


# --- bulk exports --------------------------------------------------------------------------------


def test_export_day_follows_307_to_foreign_host_without_auth(server, make_client):
    files = FakeTwilio()  # another origin, like S3
    try:
        records = [{"sid": f"SM{i:032x}", "status": "delivered", "date_sent": "2024-01-02T03:04:05Z"} for i in range(3)]
        raw = "\n".join(json.dumps(r) for r in records).encode() + b"\n"
        gz = gzip.compress(raw[: len(raw) // 2]) + gzip.compress(raw[len(raw) // 2:])  # multi-member, like cat'ed files
        files.script("GET", "/bucket/2024-01-02.json.gz", Answer(200, body=gz))
        link = f"{files.url}/bucket/2024-01-02.json.gz?X-Amz-Signature=presigned123"
        server.script("GET", "/v1/Exports/Messages/Days/2024-01-02", reply(307, {"redirect_to": link}, headers={"Location": link}))
        lines: list[str] = []
        got = list(make_client(trace=lines.append).iter_export_day(date(2024, 1, 2)))
        assert got == records
        downloaded = files.requests_to("GET", "/bucket/2024-01-02.json.gz")
        assert len(downloaded) == 1 and "Authorization" not in downloaded[0].headers
        assert server.requests_to("GET", "/v1/Exports/Messages/Days/2024-01-02")[0].headers["Authorization"]
        assert not any("presigned123" in line for line in lines)
    finally:
        files.close()


def test_export_job_lifecycle_calls(server, make_client):
    job = {"job_sid": "JS" + "c" * 32, "details": [], "start_day": "2024-01-01", "end_day": "2024-01-02"}
    server.script("POST", "/v1/Exports/Messages/Jobs", reply(201, job))
    server.script("GET", f"/v1/Exports/Jobs/{job['job_sid']}", reply(200, dict(job, details=[{"status": "Completed"}])))
    server.script("GET", "/v1/Exports/Messages/Days", reply(200, {"days": [{"day": "2024-01-01"}], "meta": {"next_page_url": None}}))
    client = make_client()
    created = client.create_export_job(start_day=date(2024, 1, 1), end_day=date(2024, 1, 2), friendly_name="sync", email="a@b.c")
    assert created["job_sid"] == job["job_sid"]
    form = server.requests_to("POST", "/v1/Exports/Messages/Jobs")[0].form
    assert form == {"StartDay": ["2024-01-01"], "EndDay": ["2024-01-02"], "FriendlyName": ["sync"], "Email": ["a@b.c"]}
    assert client.fetch_export_job(job["job_sid"])["details"][0]["status"] == "Completed"
    assert client.list_export_days() == [{"day": "2024-01-01"}]
    assert server.requests_to("GET", "/v1/Exports/Messages/Days")[0].query["PageSize"] == ["400"]


def test_export_job_post_500_is_not_repeated(server, make_client):
    server.script("POST", "/v1/Exports/Messages/Jobs", twilio_error(500, 20500, "oops"))
    with pytest.raises(AmbiguousRequest):
        make_client().create_export_job(start_day=date(2024, 1, 1), end_day=date(2024, 1, 1), friendly_name="x")
    assert len(server.requests_to("POST", "/v1/Exports/Messages/Jobs")) == 1


# --- flow control --------------------------------------------------------------------------------


def test_429_burst_lowers_client_concurrency(server, make_client):
    server.script("POST", MESSAGES, twilio_error(429, 20429, "Too Many Requests"), reply(201, message()))
    client = make_client(max_concurrency=16)
    assert client.create_message(SEND).accepted
    assert client.limiter.current_limit == 8


def test_get_reset_is_retried(server, make_client):
    path = f"/2010-04-01/Accounts/{SID}/Messages/SM1.json"
    server.script("GET", path, Answer(reset=True), reply(200, message(status="sent")))
    assert make_client().fetch_message("SM1")["status"] == "sent"
    assert len(server.requests_to("GET", path)) == 2


def test_expired_export_link_is_an_api_error_not_rejected_credentials(server, make_client):
    files = FakeTwilio()
    try:
        files.script("GET", "/bucket/d.gz", Answer(403, body=b"<Error>AccessDenied</Error>"))
        server.script("GET", "/v1/Exports/Messages/Days/2024-01-02", reply(307, {"redirect_to": f"{files.url}/bucket/d.gz"}))
        with pytest.raises(TwilioApiError, match="expired") as err:
            list(make_client().iter_export_day(date(2024, 1, 2)))
        assert not isinstance(err.value, CredentialsRejected)
    finally:
        files.close()


def test_export_day_same_origin_plain_jsonl_and_truncated_gzip(server, make_client):
    server.script("GET", "/v1/Exports/Messages/Days/2024-01-03", reply(307, headers={"Location": "/files/d3"}))
    server.script("GET", "/files/d3", Answer(200, body=b'{"sid": "SM1"}\r\n\n{"sid": "SM2"}'))
    server.script("GET", "/v1/Exports/Messages/Days/2024-01-04", reply(307, {"redirect_to": "/files/d4"}))
    server.script("GET", "/files/d4", Answer(200, body=gzip.compress(b'{"sid": "SM1"}\n' * 100)[:-12]))
    client = make_client()
    assert list(client.iter_export_day(date(2024, 1, 3))) == [{"sid": "SM1"}, {"sid": "SM2"}]
    # our own host (the sandbox) may ask for credentials on the download
    assert server.requests_to("GET", "/files/d3")[0].headers.get("Authorization")
    with pytest.raises(MalformedResponse, match="truncated"):
        list(client.iter_export_day(date(2024, 1, 4)))


def test_create_form_encoding_matches_requests(server, make_client):
    import requests

    server.script("POST", MESSAGES, reply(201, message()))
    params = {"To": "+15551230001", "Body": "héllo & 👋 a+b=c", "MediaUrl": ["https://x/a.png?q=1", "https://x/b.png"],
              "StatusCallback": None, "ValidityPeriod": 36000}
    make_client().create_message(params)
    sent = server.requests_to("POST", MESSAGES)[0]
    expected = requests.Request("POST", "http://x/", data=params).prepare()
    assert sent.body == expected.body.encode()
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert sent.form["MediaUrl"] == ["https://x/a.png?q=1", "https://x/b.png"] and "StatusCallback" not in sent.form


def test_errors_survive_pickling_with_their_fields():
    import pickle

    err = CredentialsRejected("rejected", status=401, code=20003, method="GET", url="https://api.twilio.com/x")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CredentialsRejected and (back.status, back.code, back.url) == (401, 20003, err.url)
    assert str(back) == str(err)
