"""Property tests of the rules every send and sync rests on: phone numbers, reply keywords, segments.

Each property is a guarantee a user relies on (a formatted number is the same recipient, a STOP is a
STOP however it is typed, a body is never billed below its real segments), checked over generated
inputs, not a handful of examples.
"""

from __future__ import annotations

import math
import re
import string

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from twilio_pipeline.outbound.plan import _parse_number
from twilio_pipeline.rules.keywords import (
    HELP_KEYWORDS,
    OPT_IN_KEYWORDS,
    OPT_OUT_KEYWORDS,
    TWILIO_KEYWORDS,
    is_opt_in,
    is_opt_out,
    keyword_class,
    normalise_keyword,
)
from twilio_pipeline.rules.phones import normalise_number
from twilio_pipeline.rules.render import MAX_BODY, render_body
from twilio_pipeline.rules.segments import (
    GSM7_ALL,
    GSM7_BASIC,
    GSM7_EXTENSION,
    GSM7_MULTI,
    GSM7_SINGLE,
    SMART_ENCODING,
    UCS2_MULTI,
    UCS2_SINGLE,
    count_segments,
    is_gsm7,
    smart_encode,
)

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- phone numbers -------------------------------------------------------------------------------

nanp = st.builds(lambda a, e, line: f"{a}{e}{line:04d}", st.integers(201, 989), st.integers(200, 999),
                 st.integers(0, 9999))


def _spellings(digits10: str) -> list[str]:
    a, e, line = digits10[:3], digits10[3:6], digits10[6:]
    return [f"+1{digits10}", f"+1 ({a}) {e}-{line}", f"+1.{a}.{e}.{line}", f" +1-{a}-{e}-{line} ",
            f"001 {a} {e} {line}", f"+1 {a} {e} {line}\u00a0", f"(+1) {a}/{e}/{line}"]


@PROFILE
@given(st.one_of(st.none(), st.text(max_size=80), st.from_regex(r"[+0-9 ()\-.]{0,25}", fullmatch=True)),
       st.sampled_from([None, "US", "GB", "DE"]))
@example("1" * 10_000, None)
@example("\U0001F4DE+14155550100", None)
@example("01000", "DE")  # found by this test: a "possible" national number shorter than any E.164 number
@example("+491000", None)
def test_any_address_is_either_e164_or_invalid_with_a_reason(raw, region):
    result = normalise_number(raw, region)
    if result.e164 is None:
        assert result.reason, raw
    else:
        assert result.reason is None and E164.match(result.e164), (raw, result)
        assert normalise_number(result.e164, None).e164 == result.e164, "E.164 output must be a fixed point"


@PROFILE
@given(nanp)
def test_every_spelling_of_a_number_is_the_same_recipient(digits10):
    results = {normalise_number(s, None).e164 for s in _spellings(digits10)}
    assert results == {f"+1{digits10}"}, (digits10, results)
    national = f"({digits10[:3]}) {digits10[3:6]}-{digits10[6:]}"
    assert normalise_number(national, "US").e164 == f"+1{digits10}"
    assert normalise_number(national, None).e164 is None, "national format needs the channel's default_region"


@PROFILE
@given(st.text(max_size=30), st.sampled_from(string.ascii_letters), st.text(max_size=30))
def test_letters_are_never_guessed_into_a_number(head, letter, tail):
    assert normalise_number(head + letter + tail, "US").e164 is None


@PROFILE
@given(st.one_of(st.from_regex(r"\+1[0-9]{10}", fullmatch=True), st.from_regex(r"\+[0-9]{6,16}", fullmatch=True),
                 st.text(max_size=20)),
       st.sampled_from([None, "US"]))
def test_the_planner_fast_path_agrees_with_the_rule(raw, region):
    """plan._parse_number short-cuts canonical +1 numbers; it must never disagree with the full rule."""
    assert _parse_number(raw, region) == normalise_number.__wrapped__(raw, region)


# ---- reply keywords ------------------------------------------------------------------------------

CHANNEL_KEYWORDS = ("MORE", "DEALS2")
keyword = st.sampled_from(TWILIO_KEYWORDS + CHANNEL_KEYWORDS)
spaces = st.text(alphabet=" \t\r\n\u00a0", max_size=3)
trailing = st.text(alphabet=".!?,;:", max_size=3)


def _mixed_case(word: str, flips: list[bool]) -> str:
    return "".join(c.lower() if f else c for c, f in zip(word, flips + [False] * len(word), strict=False))


@PROFILE
@given(keyword, st.lists(st.booleans(), max_size=12), spaces, trailing, spaces)
def test_a_keyword_is_recognised_however_it_is_typed(word, flips, before, punct, after):
    body = before + _mixed_case(word, flips) + punct + after
    assert normalise_keyword(body, CHANNEL_KEYWORDS) == word, repr(body)


@PROFILE
@given(keyword, st.text(alphabet=string.ascii_letters, min_size=1, max_size=8), st.booleans())
def test_a_keyword_inside_a_sentence_is_free_text(word, other, keyword_first):
    body = f"{word} {other}" if keyword_first else f"{other} {word}"
    assert normalise_keyword(body, CHANNEL_KEYWORDS) is None, body


@PROFILE
@given(st.one_of(st.none(), st.text(max_size=40)))
def test_any_body_is_a_known_keyword_or_free_text(body):
    word = normalise_keyword(body, CHANNEL_KEYWORDS)
    assert word is None or word in TWILIO_KEYWORDS + CHANNEL_KEYWORDS
    cls = keyword_class(word)
    assert (cls == "opt_out") == (word in OPT_OUT_KEYWORDS) == is_opt_out(word)
    assert (cls == "opt_in") == (word in OPT_IN_KEYWORDS) == is_opt_in(word)
    assert (cls == "help") == (word in HELP_KEYWORDS)
    assert normalise_keyword(body, ()) in (None, *TWILIO_KEYWORDS)


# ---- segments ------------------------------------------------------------------------------------

gsm_basic = st.text(alphabet=sorted(GSM7_BASIC), max_size=700)
gsm_any = st.text(alphabet=sorted(GSM7_ALL), max_size=700)
anything = st.text(max_size=400)


@PROFILE
@given(st.one_of(gsm_basic, gsm_any, anything))
def test_segments_bound_what_twilio_bills(body):
    count = count_segments(body)
    if not body:
        assert count.segments == 0
        return
    single, multi = (GSM7_SINGLE, GSM7_MULTI) if count.encoding == "GSM-7" else (UCS2_SINGLE, UCS2_MULTI)
    assert (count.encoding == "GSM-7") == is_gsm7(body)
    if count.units <= single:
        assert count.segments == 1
    else:
        # never fewer than the units allow, never more than one unit wasted per segment (a pair moved whole)
        assert math.ceil(count.units / multi) <= count.segments <= math.ceil(count.units / (multi - 1))


@PROFILE
@given(gsm_basic)
def test_plain_gsm_bodies_follow_160_and_153(body):
    assume(body)
    expected = 1 if len(body) <= GSM7_SINGLE else math.ceil(len(body) / GSM7_MULTI)
    assert (count_segments(body).segments, count_segments(body).units) == (expected, len(body))


@PROFILE
@given(st.one_of(gsm_any, anything), st.characters())
def test_a_longer_body_never_costs_fewer_segments(body, ch):
    assert count_segments(body + ch).segments >= count_segments(body).segments


@PROFILE
@given(st.text(alphabet=sorted(GSM7_EXTENSION), min_size=1, max_size=200))
def test_extension_characters_count_double(body):
    assert count_segments(body).units == 2 * len(body)


@PROFILE
@given(anything, st.text(alphabet=sorted(SMART_ENCODING), max_size=20))
def test_smart_encoding_is_stable_and_only_replaces_look_alikes(body, look_alikes):
    once = smart_encode(body)
    assert smart_encode(once) == once
    if is_gsm7(body):
        assert once == body, "a GSM-7 body is sent as written"
    plain = "".join(c for c in body if c in GSM7_ALL)
    assert is_gsm7(smart_encode(plain + look_alikes)), "look-alikes bring a body back to GSM-7"


@PROFILE
@given(st.dictionaries(st.sampled_from(["A", "B", "Name"]), st.one_of(st.none(), st.text(max_size=900)), max_size=3),
       st.sampled_from(["{{A}}", "Hi {{Name}}, {{B}}", "{{A}}{{B}}", "Static text"]))
def test_a_rendered_body_is_sendable_or_has_a_reason(attributes, template):
    rendered = render_body(template, attributes)
    assert (rendered.body is None) != (rendered.reason is None)
    if rendered.body is not None:
        assert rendered.body.strip() and len(rendered.body) <= MAX_BODY
        rendered.body.encode("utf-8")
