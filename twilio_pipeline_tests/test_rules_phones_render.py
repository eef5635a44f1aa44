"""Recipient numbers, sender shapes and body rendering: the rules a send is planned by."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twilio_pipeline.rules.phones import drain_capacity, normalise_number, sender_kind, validate_sender
from twilio_pipeline.rules.render import merge_fields, parse_attributes, render_body, template_problem
from twilio_pipeline.rules.states import event_name, later_status, state_name


@pytest.mark.parametrize("raw, region, e164", [
    ("+14155550100", None, "+14155550100"),
    ("+1 (415) 555-0100", None, "+14155550100"),
    (" +1.415.555.0100 ", None, "+14155550100"),
    ("0014155550100", None, "+14155550100"),
    ("(415) 555-0100", "US", "+14155550100"),
    ("020 7946 0958", "GB", "+442079460958"),
])
def test_valid_numbers_normalise_to_e164(raw, region, e164):
    assert normalise_number(raw, region).e164 == e164


@pytest.mark.parametrize("raw, region, reason", [
    (None, None, "NULL"), ("", None, "empty"), ("   ", None, "empty"), ("call me", None, "letters"),
    ("123", None, "too short"), ("+1234567890123456", None, "too long"),
    ("(415) 555-0100", None, "no country code"), ("📞+14155550100", None, "not digits"),
    ("'; DROP TABLE x; --", None, "letters"), ("9" * 10000, None, "too long"),
    ("+999 1234 5678", None, "invalid country code"),
])
def test_invalid_numbers_carry_a_reason(raw, region, reason):
    result = normalise_number(raw, region)
    assert result.e164 is None and reason in result.reason


def test_sender_shapes_and_kinds():
    assert validate_sender("+15005550006") is None and validate_sender("12345") is None
    assert validate_sender("1500555") and validate_sender("+1") and validate_sender("abc")
    assert sender_kind("12345") == "short_code" and sender_kind("+18005550100") == "toll_free"
    assert sender_kind("+14155550100") == "long_code"
    assert drain_capacity(["long_code"]) == 36000 and drain_capacity(["long_code"] * 3) == 108000


def test_render_fills_fields_and_refuses_missing_or_null():
    assert render_body("Hi {{FirstName}}!", {"FirstName": "Ada"}).body == "Hi Ada!"
    assert render_body("Hi {{ FirstName }}", {"FirstName": "Ada"}).body == "Hi Ada"
    assert "missing" in render_body("Hi {{FirstName}}", {}).reason
    assert "NULL" in render_body("Hi {{FirstName}}", {"FirstName": None}).reason
    assert render_body("Hi {{FirstName}}", {}, missing_as_placeholder=True).body == "Hi [FirstName]"


def test_render_opt_out_line_length_and_encoding_limits():
    assert render_body("Sale today", {}, "Reply STOP to opt out").body == "Sale today Reply STOP to opt out"
    assert render_body("Sale. Text STOP to end", {}, "Reply STOP to opt out").body == "Sale. Text STOP to end"
    assert render_body("", {}).reason == "body is empty"
    assert "1601 characters" in render_body("x" * 1601, {}).reason
    assert render_body("x" * 1600, {}).body
    assert "lone surrogate" in render_body("bad \ud800 text", {}).reason
    assert parse_attributes("{bad")[1] == "Attributes is not valid JSON"
    assert parse_attributes(None) == ({}, None)


def test_statuses_never_move_back_and_map_to_contract_states():
    assert later_status("delivered", "sent") == "delivered"
    assert later_status("queued", "sent") == "sent"
    assert later_status(None, "queued") == "queued"
    assert state_name("partially_delivered") == "PartiallyDelivered" and state_name("canceled") == "Canceled"
    assert event_name("failed", 30007) == "30007" and event_name("delivered", None) is None


def test_merge_field_names_are_unicode_words_and_values_are_texted_as_written():
    assert merge_fields("{{Prénom}} {{1st}} {{first.name}} {{ first-name }} {{Na@me}} {{}}") == [
        "Prénom", "1st", "first.name", "first-name"]
    attrs, problem = parse_attributes('{"A": 10.50, "B": true, "C": false, "D": 12345678901234567890, "E": {}}')
    assert problem is None
    assert render_body("{{A}} {{B}} {{C}} {{D}}", attrs).body == "10.50 true false 12345678901234567890"
    assert render_body("{{E}}", attrs).reason == "merge field E is a JSON object, not text"
    assert render_body("{{Prénom}}", {"Pre\u0301nom": "Zoé"}).body == "Zoé"
    assert "NUL" in render_body("{{A}}", {"A": "x\x00y"}).reason
    assert parse_attributes('{"A": Infinity}')[1] == "Attributes is not valid JSON"
    assert template_problem("Hi {{Name}") and template_problem("Hi {{Name}}") is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.sampled_from(["{{A}}", "x {{A}} {{B}}", "{{ A }}!"]))
def test_no_attributes_text_ever_renders_a_nul_or_invalid_unicode(text, template):
    """Whatever an upstream stores as Attributes (any text, any JSON value), a body is sendable - no NUL,
    no other control character but tab/LF/CR, no lone surrogate - or NotRendered with a reason."""
    for attributes_text in (text, json.dumps({"A": text, "B": 1}), '{"A": "' + text + '", "B": true}'):
        attributes, problem = parse_attributes(attributes_text)
        rendered = render_body(template, attributes) if problem is None else None
        if rendered is None or rendered.body is None:
            continue
        assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]", rendered.body), rendered.body
