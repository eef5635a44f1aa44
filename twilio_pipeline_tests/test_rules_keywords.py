"""Reply keywords: single words, case-insensitive, trailing punctuation trimmed."""

import pytest

from twilio_pipeline.rules.keywords import (
    HELP_KEYWORDS,
    OPT_IN_KEYWORDS,
    OPT_OUT_KEYWORDS,
    is_opt_in,
    is_opt_out,
    keyword_class,
    normalise_keyword,
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("STOP", "STOP"),
        ("stop", "STOP"),
        ("  Stop.  ", "STOP"),
        ("stop!", "STOP"),
        ("Unsubscribe?!", "UNSUBSCRIBE"),
        ("optout", "OPTOUT"),
        ("revoke", "REVOKE"),
        ("start", "START"),
        ("Yes", "YES"),
        ("unstop", "UNSTOP"),
        ("help", "HELP"),
        ("info.", "INFO"),
        ("STOP PLEASE", None),
        ("please stop", None),
        ("thanks!", None),
        ("", None),
        ("   ", None),
        ("!!!", None),
        (None, None),
        ("MORE", None),
    ],
)
def test_twilio_keywords(body, expected):
    assert normalise_keyword(body) == expected


def test_channel_keywords_are_recognised_case_insensitively():
    assert normalise_keyword("more", ["MORE"]) == "MORE"
    assert normalise_keyword(" More! ", ["more"]) == "MORE"
    assert normalise_keyword("more info", ["MORE"]) is None
    assert normalise_keyword("deals", ["MORE", "DEALS"]) == "DEALS"
    assert normalise_keyword("other", ["MORE"]) is None


def test_keyword_classes():
    for k in OPT_OUT_KEYWORDS:
        assert keyword_class(k) == "opt_out" and is_opt_out(k) and not is_opt_in(k)
    for k in OPT_IN_KEYWORDS:
        assert keyword_class(k) == "opt_in" and is_opt_in(k) and not is_opt_out(k)
    for k in HELP_KEYWORDS:
        assert keyword_class(k) == "help"
    assert keyword_class("MORE") == "custom"
    assert keyword_class("stop") == "opt_out"
    assert keyword_class(None) is None
    assert keyword_class("") is None
    assert not is_opt_out(None)


def test_keyword_lists_match_twilio_defaults():
    assert OPT_OUT_KEYWORDS == ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT")
    assert OPT_IN_KEYWORDS == ("START", "YES", "UNSTOP")
    assert HELP_KEYWORDS == ("HELP", "INFO")
