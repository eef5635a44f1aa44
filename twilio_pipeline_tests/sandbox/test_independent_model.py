"""The sandbox as an independent model of Twilio: its own rules, owned numbers, accounts, pools,
final `sent`, list lag and body redaction (docs/reference.md "Sandbox")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import twilio_pipeline.sandbox as sandbox_package
from twilio_pipeline.sandbox.credentials import SANDBOX_MESSAGING_SERVICE_SID, SANDBOX_POOL_NUMBERS

from .conftest import SENDER, TwilioHTTP
from .test_messages import assert_error

SUB_SID = "AC" + "5" * 32
SUB_TOKEN = "subaccount-token"
OWNED = "+15017120001"
SHORT_CODES = ("24680", "135791")
ALPHA = ("ACME", "Acme Shop")


def test_the_sandbox_imports_nothing_of_the_pipeline():
    """Tests compare the pipeline with an independent model, never with itself."""
    root = Path(sandbox_package.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                if (name == "twilio_pipeline" or name.startswith("twilio_pipeline.")) and not (
                    name == "twilio_pipeline.sandbox" or name.startswith("twilio_pipeline.sandbox.")
                ):
                    offenders.append(f"{path.name}:{node.lineno} imports {name}")
    assert offenders == []


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension table: 2 septets each, 160 in all
        ("€" * 81, 2),
        ("a" * 152 + "€" + "a" * 152, 3),  # 306 septets, but the escape pair cannot straddle segments
        ("ж" * 70, 1),
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("😀" * 35, 1),  # surrogate pairs: 2 UTF-16 units each
        ("ж" * 66 + "😀" + "ж" * 66, 3),  # 134 units, but the pair cannot straddle segments
        ("a" * 100 + "ж", 2),  # one non-GSM character makes the whole body UCS-2
    ],
)
def test_segments_follow_twilios_encoding_rules(api: TwilioHTTP, body, segments):
    assert api.send("+15559100001", body)["num_segments"] == str(segments)


def test_help_and_info_do_not_block(api: TwilioHTTP):
    for word in ("HELP", "info"):
        api.sandbox.inbound("+15559100002", SENDER, word)
        api.send("+15559100002")


@pytest.fixture(scope="module")
def accounts_sandbox(tmp_path_factory):
    from twilio_pipeline.sandbox.process import SandboxProcess

    sandbox = SandboxProcess(
        tmp_path_factory.mktemp("accounts"), status_delay_ms=1000, owned_numbers=f"{SENDER},{OWNED}",
        subaccount=[(SUB_SID, SUB_TOKEN)], pool_short_codes=",".join(SHORT_CODES),
        pool_alpha_senders=",".join(ALPHA), sent_final_rate=1,
    ).start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def main(accounts_sandbox) -> TwilioHTTP:
    accounts_sandbox.reset()
    return TwilioHTTP(accounts_sandbox)


def as_subaccount(http: TwilioHTTP) -> TwilioHTTP:
    sub = TwilioHTTP(http.sandbox)
    sub.account = SUB_SID
    sub.session.auth = (SUB_SID, SUB_TOKEN)
    return sub


def test_only_owned_numbers_send_and_incoming_phone_numbers_lists_them(main: TwilioHTTP):
    listed = [n["phone_number"] for n in main.get(
        f"/2010-04-01/Accounts/{main.account}/IncomingPhoneNumbers.json").json()["incoming_phone_numbers"]]
    assert listed == [SENDER, OWNED, *SANDBOX_POOL_NUMBERS]
    for sender in (SENDER, OWNED, SANDBOX_POOL_NUMBERS[1], SHORT_CODES[1], ALPHA[1]):
        assert main.send("+15559200001", frm=sender)["from"] == sender
    error = assert_error(main.create(To="+15559200001", From="+15017129999", Body="x"), 400, 21606)
    assert "+15017129999" in error["message"]
    # Twilio's magic From numbers keep their documented errors
    assert_error(main.create(To="+15559200001", From="+15005550001", Body="x"), 400, 21212)
    assert_error(main.create(To="+15559200001", From="+15005550008", Body="x"), 400, 21611)


def test_a_subaccount_sees_only_its_own_messages(main: TwilioHTTP):
    sub = as_subaccount(main)
    mine = sub.send("+15559300001", "from the subaccount", frm=OWNED)
    theirs = main.send("+15559300002", "from the main account", frm=OWNED)
    assert mine["account_sid"] == SUB_SID and theirs["account_sid"] == main.account
    assert [m["sid"] for m in sub.list_all()] == [mine["sid"]]
    assert [m["sid"] for m in main.list_all()] == [theirs["sid"]]
    assert sub.get(f"/2010-04-01/Accounts/{SUB_SID}/Messages/{theirs['sid']}.json").status_code == 404
    # a subaccount's credentials open only its own account
    assert_error(sub.get(f"/2010-04-01/Accounts/{main.account}/Messages.json"), 401, 20003)
    # the same owned numbers
    assert SENDER in [n["phone_number"] for n in sub.get(
        f"/2010-04-01/Accounts/{SUB_SID}/IncomingPhoneNumbers.json").json()["incoming_phone_numbers"]]
    # a STOP to one account's number blocks that account only
    sub.sandbox.request("POST", "/_sandbox/inbound", form={"From": "+15559300003", "To": OWNED, "Body": "STOP"})
    assert_error(main.create(To="+15559300003", From=OWNED, Body="x"), 400, 21610)
    sub.send("+15559300003", frm=OWNED)
    # the admin view shows every account's messages, bodies unredacted
    dump = {m["sid"]: m for m in main.sandbox.messages()}
    assert dump[mine["sid"]]["account_sid"] == SUB_SID and dump[theirs["sid"]]["account_sid"] == main.account
    assert dump[mine["sid"]]["body"] == "from the subaccount"
    for m in dump.values():
        assert {"sid", "account_sid", "to", "from", "body", "status", "direction"} <= set(m)


def test_sent_final_rate_one_keeps_every_message_sent_for_good(main: TwilioHTTP):
    sid = main.send("+15559400001")["sid"]
    main.sandbox.advance_clock(3 * 24 * 3600)
    message = main.fetch(sid)
    assert message["status"] == "sent" and message["error_code"] is None


def test_the_service_lists_its_short_codes_and_alpha_senders(main: TwilioHTTP):
    svc = SANDBOX_MESSAGING_SERVICE_SID
    codes = main.get(f"/v1/Services/{svc}/ShortCodes").json()
    assert [c["short_code"] for c in codes["short_codes"]] == list(SHORT_CODES)
    assert codes["meta"]["key"] == "short_codes" and codes["short_codes"][0]["sid"].startswith("SC")
    alpha = main.get(f"/v1/Services/{svc}/AlphaSenders").json()
    assert [a["alpha_sender"] for a in alpha["alpha_senders"]] == list(ALPHA)
    one = main.get(f"/v1/Services/{svc}/AlphaSenders/{alpha['alpha_senders'][0]['sid']}")
    assert one.status_code == 200 and one.json()["alpha_sender"] == ALPHA[0]
    # a reply to a pool short code belongs to the service
    reply = main.sandbox.inbound("+15559500001", SHORT_CODES[0], "STOP")
    assert reply["messaging_service_sid"] == svc
    assert_error(main.create(To="+15559500001", MessagingServiceSid=svc, Body="x"), 400, 21610)


def test_list_lag_and_redacted_bodies(make_sandbox):
    api = TwilioHTTP(make_sandbox(status_delay_ms=0, list_lag_ms=5000, redact_bodies=True))
    created = api.send("+15559600001", "a secret offer")
    assert created["body"] == "a secret offer"  # the create response echoes it
    assert api.list_all() == []  # not listed yet, on the sandbox clock
    assert api.fetch(created["sid"])["body"] == ""  # found by SID at once, body redacted
    api.sandbox.advance_clock(5)
    listed = api.list_all()
    assert [m["sid"] for m in listed] == [created["sid"]] and listed[0]["body"] == ""
    assert api.sandbox.messages()[0]["body"] == "a secret offer"
    # inbound bodies stay readable (replies and STOPs must be)
    api.sandbox.inbound("+15559600001", SENDER, "STOP")
    assert [m["body"] for m in api.list_all(To=SENDER)] == ["STOP"]


def test_accounts_and_bought_numbers_survive_a_restart(main: TwilioHTTP):
    sub = as_subaccount(main)
    bought = main.post(f"/2010-04-01/Accounts/{main.account}/IncomingPhoneNumbers.json",
                       data={"PhoneNumber": "+15017128888"})
    assert bought.status_code == 201 and bought.json()["phone_number"] == "+15017128888"
    mine = sub.send("+15559700001", frm="+15017128888")["sid"]
    main.sandbox.stop()
    main.sandbox.start()
    main, sub = TwilioHTTP(main.sandbox), as_subaccount(TwilioHTTP(main.sandbox))
    assert [m["sid"] for m in sub.list_all()] == [mine] and main.list_all() == []
    assert main.send("+15559700002", frm="+15017128888")["from"] == "+15017128888"
