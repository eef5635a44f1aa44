"""Create and fetch Messages: fields, validation as Twilio does it, magic numbers, auth."""

from __future__ import annotations

import pytest
import requests

from twilio_pipeline.sandbox.credentials import SANDBOX_MESSAGING_SERVICE_SID, SANDBOX_POOL_NUMBERS

from .conftest import API_KEY_SECRET, API_KEY_SID, SENDER, TwilioHTTP


def assert_error(response: requests.Response, status: int, code: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_create_then_fetch(api: TwilioHTTP):
    created = api.send("+15551230001", "Hello there")
    assert created["sid"].startswith("SM") and len(created["sid"]) == 34
    assert created["status"] == "queued"
    assert created["direction"] == "outbound-api"
    assert created["from"] == SENDER and created["to"] == "+15551230001"
    assert created["num_segments"] == "1" and created["num_media"] == "0"
    assert created["messaging_service_sid"] is None
    assert created["api_version"] == "2010-04-01"
    assert created["date_created"].endswith("+0000")
    assert created["uri"] == f"/2010-04-01/Accounts/{api.account}/Messages/{created['sid']}.json"
    fetched = api.fetch(created["sid"])
    assert fetched["sid"] == created["sid"] and fetched["body"] == "Hello there"
    # status delay 0: the message has settled
    assert fetched["status"] == "delivered"
    assert fetched["date_sent"] is not None
    assert fetched["price"] == "-0.00790" and fetched["price_unit"] == "USD"


def test_fetch_unknown_is_404(api: TwilioHTTP):
    response = api.get(f"/2010-04-01/Accounts/{api.account}/Messages/SM{'0' * 32}.json")
    assert_error(response, 404, 20404)
    assert_error(api.get("/2010-04-01/Nothing.json"), 404, 20404)


def test_media_message_is_mms(api: TwilioHTTP):
    created = api.create(To="+15551230002", From=SENDER, MediaUrl=["https://example.com/a.png", "https://example.com/b.png"])
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["sid"].startswith("MM")
    assert body["num_media"] == "2"
    assert body["num_segments"] == "1"


@pytest.mark.parametrize(
    ("body", "segments"),
    [("a" * 160, "1"), ("a" * 161, "2"), ("€" * 81, "2"), ("ł" * 70, "1"), ("ł" * 71, "2"), ("👍" * 36, "2")],
)
def test_num_segments(api: TwilioHTTP, body, segments):
    assert api.send("+15551230003", body)["num_segments"] == segments


def test_smart_encoded_body_is_sent_in_gsm7(api: TwilioHTTP):
    body = "“Deal” – 50% off… " * 4  # 72 characters: 2 UCS-2 segments, 1 once smart-encoded
    plain = api.send("+15551230004", body)
    smart = api.send("+15551230004", body, SmartEncoded="true")
    assert plain["num_segments"] == "2"
    assert smart["num_segments"] == "1"
    assert "“" not in smart["body"]


def test_send_through_the_messaging_service(api: TwilioHTTP):
    created = api.send("+15551230005", frm=None, MessagingServiceSid=SANDBOX_MESSAGING_SERVICE_SID)
    assert created["status"] == "accepted"
    assert created["from"] is None and created["num_segments"] == "0"
    assert created["messaging_service_sid"] == SANDBOX_MESSAGING_SERVICE_SID
    settled = api.fetch(created["sid"])
    assert settled["from"] in SANDBOX_POOL_NUMBERS
    # sticky sender: the same recipient always gets the same pool number
    again = api.send("+15551230005", frm=None, MessagingServiceSid=SANDBOX_MESSAGING_SERVICE_SID)
    assert api.fetch(again["sid"])["from"] == settled["from"]
    # a Messaging Service SID in From works too, as on Twilio
    via_from = api.send("+15551230005", frm=SANDBOX_MESSAGING_SERVICE_SID)
    assert via_from["messaging_service_sid"] == SANDBOX_MESSAGING_SERVICE_SID


def test_a_short_code_of_the_account_sends_and_any_other_gets_21606(make_sandbox):
    api = TwilioHTTP(make_sandbox(pool_short_codes="12345", status_delay_ms=0))
    assert api.send("+15551230006", frm="12345")["from"] == "12345"
    assert_error(api.create(To="+15551230006", From="54321", Body="x"), 400, 21606)


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"From": SENDER, "Body": "x"}, 21604),
        ({"To": "", "From": SENDER, "Body": "x"}, 21604),
        ({"To": "15551230007", "From": SENDER, "Body": "x"}, 21211),
        ({"To": "+1555", "From": SENDER, "Body": "x"}, 21211),
        ({"To": "12345", "From": SENDER, "Body": "x"}, 21211),
        ({"To": "+15551230007", "Body": "x"}, 21603),
        ({"To": "+15551230007", "From": SENDER}, 21602),
        ({"To": "+15551230007", "From": SENDER, "Body": ""}, 21602),
        ({"To": "+15551230007", "From": SENDER, "Body": "a" * 1601}, 21617),
        ({"To": "+15551230007", "MessagingServiceSid": "MG" + "f" * 32, "Body": "x"}, 21701),
        ({"To": "+15551230007", "From": "not-a-number", "Body": "x"}, 21212),
        ({"To": "+15551230007", "From": "+15551230007", "Body": "x"}, 21266),
        ({"To": "+15551230007", "From": SENDER, "Body": "x", "StatusCallback": "http://bad_host/cb"}, 21609),
        ({"To": "+15551230007", "From": SENDER, "Body": "x", "ValidityPeriod": "0"}, 20001),
        ({"To": "+15551230007", "From": SENDER, "Body": "x", "ValidityPeriod": "36001"}, 20001),
    ],
)
def test_validation_errors(api: TwilioHTTP, form, code):
    assert_error(api.create(**form), 400, code)


def test_body_of_exactly_1600_characters_is_accepted(api: TwilioHTTP):
    assert api.send("+15551230008", "a" * 1600)["num_segments"] == "11"


@pytest.mark.parametrize(
    ("to", "code"),
    [("+15005550001", 21211), ("+15005550002", 21612), ("+15005550003", 21408),
     ("+15005550004", 21610), ("+15005550009", 21614)],
)
def test_magic_to_numbers(api: TwilioHTTP, to, code):
    assert_error(api.create(To=to, From=SENDER, Body="x"), 400, code)


@pytest.mark.parametrize(("frm", "code"), [("+15005550001", 21212), ("+15005550007", 21606), ("+15005550008", 21611)])
def test_magic_from_numbers(api: TwilioHTTP, frm, code):
    assert_error(api.create(To="+15551230009", From=frm, Body="x"), 400, code)


def test_refusals_create_nothing(api: TwilioHTTP, instant_sandbox):
    api.create(To="+15005550004", From=SENDER, Body="x")
    api.create(To="+15551230010", From="+15005550007", Body="x")
    assert instant_sandbox.messages() == []
    stats = instant_sandbox.stats()
    assert stats["messages_created_by_to"] == {}
    assert stats["errors_by_code"] == {"21610": 1, "21606": 1}


def test_magic_sender_plus_15005550006_is_an_ordinary_sender(api: TwilioHTTP):
    created = api.send("+15551230011")
    assert api.fetch(created["sid"])["status"] == "delivered"


def test_auth_is_checked_on_every_request(api: TwilioHTTP, instant_sandbox):
    path = api.messages_path
    for auth in (None, (api.account, "wrong-token"), ("AC" + "1" * 32, instant_sandbox.auth_token)):
        for method, data in (("get", None), ("post", {"To": "+15551230012", "From": SENDER, "Body": "x"})):
            response = requests.request(method, api.base + path, data=data, auth=auth, timeout=10)
            body = assert_error(response, 401, 20003)
            assert "sandbox-auth-token" not in response.text and "wrong-token" not in body["message"]
    # another account's path with valid credentials
    other = f"/2010-04-01/Accounts/AC{'2' * 32}/Messages.json"
    assert_error(api.get(other), 401, 20003)
    # admin endpoints want the same credentials
    assert requests.get(api.base + "/_sandbox/stats", timeout=10).status_code == 401
    assert instant_sandbox.messages() == []


def test_api_key_authenticates(api: TwilioHTTP):
    response = requests.post(
        api.base + api.messages_path, auth=(API_KEY_SID, API_KEY_SECRET),
        data={"To": "+15551230013", "From": SENDER, "Body": "via API key"}, timeout=10,
    )
    assert response.status_code == 201, response.text
    bad = requests.get(api.base + api.messages_path, auth=(API_KEY_SID, "nope"), timeout=10)
    assert_error(bad, 401, 20003)


def test_unencoded_plus_in_phone_numbers_is_understood(api: TwilioHTTP):
    response = api.session.post(
        api.base + api.messages_path, data="To=+15551230014&From=+15005550006&Body=hi",
        headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10,
    )
    assert response.status_code == 201, response.text
    assert response.json()["to"] == "+15551230014"


def test_incoming_phone_numbers_and_account(api: TwilioHTTP):
    page = api.get(f"/2010-04-01/Accounts/{api.account}/IncomingPhoneNumbers.json", params={"PageSize": 1})
    assert page.status_code == 200, page.text
    body = page.json()
    assert len(body["incoming_phone_numbers"]) == 1
    assert body["incoming_phone_numbers"][0]["phone_number"] == SENDER
    assert body["next_page_uri"]
    numbers = [body["incoming_phone_numbers"][0]["phone_number"]]
    while body["next_page_uri"]:
        body = api.get(body["next_page_uri"]).json()
        numbers += [n["phone_number"] for n in body["incoming_phone_numbers"]]
    assert numbers == [SENDER, *SANDBOX_POOL_NUMBERS]
    account = api.get(f"/2010-04-01/Accounts/{api.account}.json").json()
    assert account["sid"] == api.account and account["status"] == "active"


def test_messaging_service_resources(api: TwilioHTTP):
    service = api.get(f"/v1/Services/{SANDBOX_MESSAGING_SERVICE_SID}").json()
    assert service["sid"] == SANDBOX_MESSAGING_SERVICE_SID
    assert service["links"]["phone_numbers"] == f"{api.base}/v1/Services/{SANDBOX_MESSAGING_SERVICE_SID}/PhoneNumbers"
    numbers = api.get(f"/v1/Services/{SANDBOX_MESSAGING_SERVICE_SID}/PhoneNumbers").json()
    assert [n["phone_number"] for n in numbers["phone_numbers"]] == list(SANDBOX_POOL_NUMBERS)
    assert numbers["meta"]["key"] == "phone_numbers"
    assert numbers["meta"]["url"].startswith(api.base + "/v1/Services/")
    one = numbers["phone_numbers"][0]
    assert api.get(f"/v1/Services/{SANDBOX_MESSAGING_SERVICE_SID}/PhoneNumbers/{one['sid']}").json() == one
    assert_error(api.get(f"/v1/Services/MG{'f' * 32}"), 404, 20404)
    assert_error(api.post(f"/v1/Services/{SANDBOX_MESSAGING_SERVICE_SID}", data={}), 405, 20004)


def test_requests_are_logged_without_credentials(make_sandbox):
    sandbox = make_sandbox(status_delay_ms=0)
    http = TwilioHTTP(sandbox)
    http.send("+15551230015")
    http.get(http.messages_path, params={"To": "+15551230015"})
    sandbox.stop()
    log = sandbox.log_path.read_text()
    assert "POST /2010-04-01/Accounts/" in log and " 201 " in log
    assert "GET /2010-04-01/Accounts/" in log
    assert sandbox.auth_token not in log
    assert "Basic " not in log
