"""Phone-number rules: recipients to E.164, senders checked for shape, sender throughput class.

Pure functions; the audience planner applies them per distinct raw value (with a cache), so a
million-row audience with repeated numbers parses each spelling once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SHORT_CODE = re.compile(r"^\d{5,6}$")
_LETTERS = re.compile(r"[A-Za-z]")
_ALLOWED_PUNCT = re.compile(r"[\s\-().\u00a0/]")
MAX_RAW_LENGTH = 64


@dataclass(frozen=True, slots=True)
class PhoneResult:
    e164: str | None
    reason: str | None  # why the number is invalid; None when valid


@lru_cache(maxsize=200_000)
def normalise_number(raw: str | None, default_region: str | None = None) -> PhoneResult:
    """A recipient's AddressKey -> E.164, or the reason it cannot be texted.

    National formats are accepted only with the channel's default_region; a leading 00 is read as
    the international prefix. Letters are refused (no vanity-number guessing on a paid send).
    """
    if raw is None:
        return PhoneResult(None, "no phone number (NULL)")
    text = str(raw).strip()
    if not text:
        return PhoneResult(None, "empty phone number")
    if len(text) > MAX_RAW_LENGTH:
        return PhoneResult(None, f"too long to be a phone number ({len(text)} characters)")
    if _LETTERS.search(text):
        return PhoneResult(None, "contains letters")
    compact = _ALLOWED_PUNCT.sub("", text)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not re.fullmatch(r"\+?\d+", compact):
        return PhoneResult(None, "contains characters that are not digits")
    digits = compact.lstrip("+")
    if len(digits) < 5:
        return PhoneResult(None, "too short")
    if len(digits) > 15:
        return PhoneResult(None, "too long (E.164 allows 15 digits)")
    if not compact.startswith("+") and default_region is None:
        return PhoneResult(None, "no country code (national format needs the channel's default_region)")
    try:
        parsed = phonenumbers.parse(compact, None if compact.startswith("+") else default_region)
    except NumberParseException as exc:
        if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE:
            return PhoneResult(None, "invalid country code")
        return PhoneResult(None, f"not parseable: {exc._msg}")
    result = phonenumbers.is_possible_number_with_reason(parsed)
    if result != phonenumbers.ValidationResult.IS_POSSIBLE:
        reason = {
            phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "invalid country code",
            phonenumbers.ValidationResult.TOO_SHORT: "too short",
            phonenumbers.ValidationResult.TOO_LONG: "too long",
            phonenumbers.ValidationResult.INVALID_LENGTH: "invalid length for its country",
        }.get(result, "not a possible number")
        return PhoneResult(None, reason)
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not _E164.match(e164):
        # "Possible" is a length check per country; a national number can still come out shorter than any
        # international number (7 digits at least, e.g. "01000" in DE -> +491000): Twilio would refuse it.
        return PhoneResult(None, "too short for an international number (E.164 has at least 7 digits)")
    return PhoneResult(e164, None)


def validate_sender(value: str) -> str | None:
    """None when `value` is an E.164 long code / toll-free number or a 5-6 digit short code, else the problem."""
    if _SHORT_CODE.match(value):
        return None
    if not _E164.match(value):
        return "must be an E.164 number like +15005550006 or a 5-6 digit short code"
    try:
        parsed = phonenumbers.parse(value, None)
    except NumberParseException:
        return "is not a parseable phone number"
    if not phonenumbers.is_possible_number(parsed):
        return "is not a possible phone number for its country"
    return None


def sender_kind(sender: str) -> str:
    """'short_code', 'toll_free' or 'long_code': decides how fast Twilio drains its queue."""
    if _SHORT_CODE.match(sender):
        return "short_code"
    try:
        if phonenumbers.number_type(phonenumbers.parse(sender, None)) == PhoneNumberType.TOLL_FREE:
            return "toll_free"
    except NumberParseException:
        pass
    return "long_code"


# Segments per second Twilio sends to carriers, per sender (twilio-api-notes.md section 10).
SEGMENTS_PER_SECOND = {"long_code": 1.0, "toll_free": 3.0, "short_code": 100.0}
TWILIO_QUEUE_HOURS = 10


def drain_capacity(kinds: list[str]) -> float:
    """Segments the senders can hand to carriers within Twilio's 10-hour queue."""
    return sum(SEGMENTS_PER_SECOND[k] for k in kinds) * TWILIO_QUEUE_HOURS * 3600
