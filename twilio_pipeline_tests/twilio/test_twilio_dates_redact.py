"""Date helpers and the Redactor."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from twilio_pipeline.twilio import Redactor, TwilioCredentials, format_rfc3339, parse_twilio_date

UTC = UTC


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Fri, 09 Jul 2021 15:58:57 +0000", datetime(2021, 7, 9, 15, 58, 57, tzinfo=UTC)),
        ("Wed, 19 Jun 2019 22:04:00 -0000", datetime(2019, 6, 19, 22, 4, tzinfo=UTC)),
        ("Fri, 09 Jul 2021 17:58:57 +0200", datetime(2021, 7, 9, 15, 58, 57, tzinfo=UTC)),
        ("2021-07-09T16:26:05Z", datetime(2021, 7, 9, 16, 26, 5, tzinfo=UTC)),
        ("2021-03-15T20:20:14.547", datetime(2021, 3, 15, 20, 20, 14, 547000, tzinfo=UTC)),
        ("2021-07-09T18:26:05+02:00", datetime(2021, 7, 9, 16, 26, 5, tzinfo=UTC)),
        ("2021-07-09", datetime(2021, 7, 9, tzinfo=UTC)),
    ],
)
def test_parse_twilio_date(text, expected):
    got = parse_twilio_date(text)
    assert got == expected and got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", [None, "", "   ", "garbage", "Fri, 99 Foo 2021", "2021-13-45T99:00:00Z", 12345])
def test_parse_twilio_date_garbage_is_none(text):
    assert parse_twilio_date(text) is None


def test_format_rfc3339():
    assert format_rfc3339(datetime(2021, 7, 9, 16, 26, 5, 999, tzinfo=UTC)) == "2021-07-09T16:26:05Z"
    assert format_rfc3339(datetime(2021, 7, 9, 18, 26, 5, tzinfo=timezone(timedelta(hours=2)))) == "2021-07-09T16:26:05Z"
    assert format_rfc3339(datetime(2021, 7, 9, 16, 26, 5)) == "2021-07-09T16:26:05Z"  # naive is UTC
    assert format_rfc3339(date(2021, 7, 9)) == "2021-07-09T00:00:00Z"


def test_redactor_replaces_secret_and_its_encodings():
    red = Redactor.for_basic_auth("ACuser", "s3cr3t/+=token", None, "x")
    text = "token s3cr3t/+=token url s3cr3t%2F%2B%3Dtoken header Basic QUN1c2VyOnMzY3IzdC8rPXRva2Vu"
    out = red.redact(text)
    assert "s3cr3t" not in out and "QUN1c2VyOnMzY3IzdC8rPXRva2Vu" not in out
    assert out.count("[REDACTED]") == 3
    assert red.redact(ValueError("boom s3cr3t/+=token")) == "boom [REDACTED]"
    assert Redactor().redact("nothing to hide") == "nothing to hide"


def test_credentials_repr_hides_secrets():
    text = repr(TwilioCredentials("AC1", "authtok999", "SK1", "keysecret999"))
    assert "authtok999" not in text and "keysecret999" not in text and "AC1" in text and "SK1" in text
