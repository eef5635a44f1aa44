"""What Twilio refuses in a POST Messages form, checked in the order Twilio checks it: the first rule
that fails is the error the sandbox answers (with Twilio's code and wording), the test "magic" numbers
included. What passes becomes a `CreateRequest`, from which the model plans the message.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from twilio_pipeline.sandbox.errors import bad_request
from twilio_pipeline.sandbox.message import phone_param
from twilio_pipeline.sandbox.rules import is_e164, is_short_code, smart_encoded
from twilio_pipeline.sandbox.timefmt import DAY_S, parse_instant

_URL = re.compile(r"^https?://([A-Za-z0-9.-]+)(:\d{1,5})?(/\S*)?$")

# Twilio's test "magic" numbers keep their documented errors on the live-account simulation.
MAGIC_TO = {
    "+15005550001": (21211, "The 'To' number {to} is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number via SMS."),
    "+15005550003": (21408, "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}
MAGIC_FROM = {
    "+15005550001": (21212, "The 'From' number {frm} is not a valid phone number, shortcode, or alphanumeric sender ID."),
    "+15005550007": (21606, "The 'From' phone number provided ({frm}) is not a valid message-capable Twilio phone number for this destination."),
    "+15005550008": (21611, "This 'From' number has exceeded the maximum number of queued messages."),
}

MAX_BODY = 1600
VALIDITY_MAX_S = 36000
SCHEDULE_MIN_S = 300
SCHEDULE_MAX_S = 35 * DAY_S


@dataclass(frozen=True)
class CreateRequest:
    """A create request Twilio would accept: who to, from which sender or service, what, and when."""

    to: str
    frm: str | None
    service: str | None
    body: str
    media: list[str]
    callback: str | None
    validity_s: float | None
    send_at: float | None


def read_create_request(form: dict[str, list[str]], now: float, *, service_sid: str, senders: Collection[str],
                        alpha_senders: Collection[str]) -> CreateRequest:
    """The form as a `CreateRequest`, or the ApiError Twilio answers. `senders`: what the account may send
    from (owned numbers, short codes, alphanumeric IDs); `now`: the sandbox clock, for SendAt."""

    def first(name: str) -> str | None:
        values = form.get(name)
        return values[0] if values else None

    to = phone_param(first("To"))
    frm = phone_param(first("From"))
    service = (first("MessagingServiceSid") or "").strip() or None
    body = first("Body")
    media = [u for u in form.get("MediaUrl", []) if u.strip()]
    if not to:
        raise bad_request(21604, "A 'To' phone number is required.")
    if frm and frm.startswith("MG"):
        service, frm = service or frm, None
    if not frm and not service:
        raise bad_request(21603, "A 'From' or 'MessagingServiceSid' parameter is required")
    if service is not None and service != service_sid:
        raise bad_request(21701, f"The Messaging Service Sid {service} is invalid.")
    if frm:
        if frm in MAGIC_FROM:
            code, text = MAGIC_FROM[frm]
            raise bad_request(code, text.format(frm=frm))
        if not (is_e164(frm) or is_short_code(frm) or frm in alpha_senders):
            raise bad_request(21212, f"The 'From' number {frm} is not a valid phone number, shortcode, or alphanumeric sender ID.")
    if to in MAGIC_TO:
        code, text = MAGIC_TO[to]
        raise bad_request(code, text.format(to=to))
    if not is_e164(to):
        raise bad_request(21211, f"The 'To' number {to} is not a valid phone number.")
    if frm and to == frm:
        raise bad_request(21266, f"'To' and 'From' number cannot be the same: {to}")
    if frm and frm not in senders:  # a From this account does not own
        code, text = MAGIC_FROM["+15005550007"]
        raise bad_request(code, text.format(frm=frm))
    if not body and not media:
        raise bad_request(21602, "Message body is required.")
    body = body or ""
    if len(body) > MAX_BODY:
        raise bad_request(21617, "The concatenated message body exceeds the 1600 character limit.")
    callback = first("StatusCallback")
    if callback and (not _URL.match(callback) or "_" in (_URL.match(callback).group(1) or "")):
        raise bad_request(21609, f"The StatusCallback URL {callback} is not a valid URL.")
    validity = first("ValidityPeriod")
    validity_s: float | None = None
    if validity not in (None, ""):
        try:
            validity_s = float(int(validity))
        except ValueError:
            validity_s = -1.0
        if not 1 <= validity_s <= VALIDITY_MAX_S:
            raise bad_request(20001, f"ValidityPeriod must be an integer between 1 and {VALIDITY_MAX_S} seconds.")
    send_at: float | None = None
    schedule_type = first("ScheduleType")
    if schedule_type:
        if schedule_type != "fixed":
            raise bad_request(20001, f"ScheduleType {schedule_type!r} is not supported; use 'fixed'.")
        if not service:
            raise bad_request(35118, "MessagingServiceSid is required to schedule a message")
        raw = first("SendAt")
        if not raw:
            raise bad_request(35111, "SendAt timestamp is missing")
        try:
            send_at = parse_instant(raw)
        except ValueError:
            raise bad_request(35114, "Scheduling does not support this timestamp") from None
        if not SCHEDULE_MIN_S <= send_at - now <= SCHEDULE_MAX_S:
            raise bad_request(35114, "SendAt time must be between 300 seconds and 35 days (3024000 seconds) in the future, inclusive.")
    if first("SmartEncoded") in ("true", "True", "1"):
        body = smart_encoded(body)
    return CreateRequest(to, frm, service, body, media, callback, validity_s, send_at)
