"""Segment counting: GSM-7 160/153 with the extension table counting double, UCS-2 70/67."""

import pytest

from twilio_pipeline.rules.segments import SegmentCount, count_segments, is_gsm7, smart_encode


@pytest.mark.parametrize(
    ("body", "encoding", "segments", "units"),
    [
        ("", "GSM-7", 0, 0),
        ("a", "GSM-7", 1, 1),
        ("a" * 160, "GSM-7", 1, 160),
        ("a" * 161, "GSM-7", 2, 161),
        ("a" * 306, "GSM-7", 2, 306),
        ("a" * 307, "GSM-7", 3, 307),
        ("€" * 80, "GSM-7", 1, 160),
        ("€" * 81, "GSM-7", 2, 162),
        ("[]{}~^|\\\f€", "GSM-7", 1, 20),
        ("Ünïcödé? no: ï is not GSM", "UCS-2", 1, 25),
        ("x" * 70 + "ł", "UCS-2", 2, 71),
        ("ł" * 70, "UCS-2", 1, 70),
        ("ł" * 134, "UCS-2", 2, 134),
        ("ł" * 135, "UCS-2", 3, 135),
        ("👍", "UCS-2", 1, 2),
        ("👍" * 35, "UCS-2", 1, 70),
        ("👍" * 36, "UCS-2", 2, 72),
    ],
)
def test_counts(body, encoding, segments, units):
    result = count_segments(body)
    assert (result.encoding, result.segments, result.units) == (encoding, segments, units)


def test_escape_pair_never_straddles_a_segment():
    # 152 plain septets then a 2-septet "€": the pair cannot split across parts 1 and 2
    body = "a" * 152 + "€" + "a" * 152
    result = count_segments(body)
    assert result.units == 306
    assert result.segments == 3  # 152 | 2+151 | 1: the first part holds only 152


def test_surrogate_pair_never_straddles_a_segment():
    body = "ł" * 66 + "👍" + "ł" * 66
    result = count_segments(body)
    assert result.units == 134
    assert result.segments == 3


def test_first_non_gsm_character_is_reported():
    assert count_segments("Hello “world”").first_non_gsm == "“"
    assert count_segments("Hello world").first_non_gsm is None
    assert count_segments("café olá").first_non_gsm == "á"  # é is GSM-7, á is not


def test_is_gsm7():
    assert is_gsm7("Reply STOP to opt out @ £5 ¥ è")
    assert not is_gsm7("smart ’quote’")
    assert not is_gsm7("emoji 🎉")
    assert is_gsm7("")


def test_smart_encoding_brings_look_alikes_back_to_gsm7():
    text = "“Hi” – it’s 50% off… "
    encoded = smart_encode(text)
    assert encoded == '"Hi" - it\'s 50% off... '
    assert is_gsm7(encoded)
    assert count_segments(encoded).encoding == "GSM-7"


def test_result_is_a_frozen_dataclass():
    result = count_segments("hi")
    assert result == SegmentCount("GSM-7", 1, 2, None)
    with pytest.raises(AttributeError):
        result.segments = 3  # type: ignore[misc]
