"""One message of the sandbox's account, its journal records, and how Twilio shows it.

A message's whole lifecycle is planned when it is created (`Model.create_message`): `steps` holds its
statuses with their times, and its status at any moment is read from them (`step_at`). It is shown
three ways: the Message resource of the 2010 API (RFC 2822 dates, the sender hidden while a Messaging
Service has not picked one), a Bulk Export day-file record (ISO 8601, no URIs) and the sandbox's own
`/_sandbox/messages` dump.
"""

from __future__ import annotations

import re

from twilio_pipeline.sandbox.config import SandboxConfig
from twilio_pipeline.sandbox.errors import DELIVERY_ERRORS
from twilio_pipeline.sandbox.timefmt import iso8601, rfc2822

MESSAGE_SID = re.compile(r"^(SM|MM)[0-9a-fA-F]{32}$")
PRICE_PER_SEGMENT = 0.0079  # USD, a US long-code SMS
_HIDDEN_SENDER = ("accepted", "scheduled")


def phone_param(value: str | None) -> str | None:
    """A phone parameter as sent: an unencoded '+' in a form arrives as a space."""
    if value is None:
        return None
    if value[:1] == " ":
        return "+" + value[1:].strip()
    return value.strip()


class Msg:
    """One message and its planned lifecycle. `key` is when its date_sent is (or will be) set."""

    __slots__ = (
        "sid", "direction", "to", "frm", "pinned", "service_sid", "body", "media", "segments",
        "created", "steps", "err", "key", "reply", "status_callback", "acct",
    )

    def __init__(self, sid, direction, to, frm, pinned, service_sid, body, media, segments,
                 created, steps, err, key, reply=None, status_callback=None, acct=None):
        self.sid = sid
        self.direction = direction
        self.to = to
        self.frm = frm  # the sender (outbound) or the remote number (inbound)
        self.pinned = pinned  # outbound: From given by the client, so shown from the start
        self.service_sid = service_sid
        self.body = body
        self.media = media
        self.segments = segments
        self.created = created
        self.steps = steps  # ((status, time), ...) ascending
        self.err = err
        self.key = key
        self.reply = reply  # (time, body) of the recipient's reply, outbound only
        self.status_callback = status_callback
        self.acct = acct  # the account that owns it; None: the main account

    def step_at(self, now: float) -> tuple[str, float]:
        current = self.steps[0]
        for step in self.steps:
            if step[1] <= now:
                current = step
            else:
                break
        return current

    def record(self) -> dict:
        return {
            "k": "m", "sid": self.sid, "dir": self.direction, "to": self.to, "from": self.frm,
            "pinned": self.pinned, "svc": self.service_sid, "body": self.body, "media": self.media,
            "seg": self.segments, "t0": self.created, "steps": self.steps,
            "err": self.err, "key": self.key, "reply": list(self.reply) if self.reply else None,
            "cb": self.status_callback, **({"acct": self.acct} if self.acct else {}),
        }

    def inbound_row(self) -> list:
        """An inbound message as a compact row: bulk inbound is journaled as one record of rows."""
        row = [self.sid, self.to, self.frm, self.service_sid, self.body, self.segments, self.key]
        return row + [self.acct] if self.acct else row

    @classmethod
    def from_inbound_row(cls, row: list) -> Msg:
        sid, to, frm, service, body, seg, t = row[:7]
        acct = row[7] if len(row) > 7 else None
        return cls(sid, "inbound", to, frm, True, service, body, [], seg, t, (("received", t),), None, t,
                   acct=acct)

    @classmethod
    def from_record(cls, r: dict) -> Msg:
        return cls(
            r["sid"], r["dir"], r["to"], r["from"], r["pinned"], r["svc"], r["body"], r["media"],
            r["seg"], r["t0"], tuple((s, t) for s, t in r["steps"]), r["err"], r["key"],
            tuple(r["reply"]) if r.get("reply") else None, r.get("cb"), r.get("acct"),
        )


def message_json(m: Msg, now: float, config: SandboxConfig, initial: bool = False) -> dict:
    """The Message resource at `now`; `initial`: as the create response shows it (first status)."""
    status, t_status = m.steps[0] if initial else m.step_at(now)
    acct = m.acct or config.account_sid
    hidden = m.direction != "inbound" and not m.pinned and status in _HIDDEN_SENDER
    sent = m.key <= now and not initial
    uri = f"/2010-04-01/Accounts/{acct}/Messages/{m.sid}"
    charged = sent and status != "failed"
    return {
        "account_sid": acct,
        "api_version": "2010-04-01",
        "body": _shown_body(m, config, initial),
        "date_created": rfc2822(m.created),
        "date_sent": rfc2822(m.key) if sent else None,
        "date_updated": rfc2822(t_status),
        "direction": m.direction,
        "error_code": m.err if status in ("failed", "undelivered") else None,
        "error_message": DELIVERY_ERRORS.get(m.err) if status in ("failed", "undelivered") else None,
        "from": None if hidden else m.frm,
        "messaging_service_sid": m.service_sid,
        "num_media": str(len(m.media)),
        "num_segments": "0" if hidden else str(m.segments),
        "price": f"-{PRICE_PER_SEGMENT * m.segments:.5f}" if charged else None,
        "price_unit": "USD",
        "sid": m.sid,
        "status": status,
        "subresource_uris": {"media": uri + "/Media.json", "feedback": uri + "/Feedback.json"},
        "to": m.to,
        "uri": uri + ".json",
    }

def _shown_body(m: Msg, config: SandboxConfig, initial: bool = False) -> str:
    """With --redact-bodies an outbound body reads as "" once sent on (Twilio's Message Redaction:
    the create response still echoes it; listings, fetches and exports do not)."""
    if config.redact_bodies and not initial and m.direction != "inbound":
        return ""
    return m.body

def export_record(m: Msg, now: float, config: SandboxConfig) -> dict:
    """A message as a Bulk Export day file writes it: ISO 8601 dates, no URIs or price unit."""
    status, t_status = m.step_at(now)
    sent = m.key <= now
    return {
        "sid": m.sid,
        "account_sid": m.acct or config.account_sid,
        "messaging_service_sid": m.service_sid,
        "from": m.frm,
        "to": m.to,
        "body": _shown_body(m, config),
        "status": status,
        "direction": m.direction,
        "num_segments": str(m.segments),
        "num_media": str(len(m.media)),
        "price": f"-{PRICE_PER_SEGMENT * m.segments:.5f}" if sent and status != "failed" else None,
        "error_code": m.err if status in ("failed", "undelivered") else None,
        "date_created": iso8601(m.created),
        "date_sent": iso8601(m.key) if sent else None,
        "date_updated": iso8601(t_status),
    }

def dump_json(m: Msg, now: float, config: SandboxConfig) -> dict:
    """A message for /_sandbox/messages: the facts tests check, ISO 8601 dates."""
    status, t_status = m.step_at(now)
    return {
        "sid": m.sid,
        "account_sid": m.acct or config.account_sid,
        "direction": m.direction,
        "to": m.to,
        "from": m.frm,
        "status": status,
        "body": m.body,
        "messaging_service_sid": m.service_sid,
        "num_segments": m.segments,
        "error_code": m.err if status in ("failed", "undelivered") else None,
        "date_created": iso8601(m.created),
        "date_sent": iso8601(m.key) if m.key <= now else None,
        "date_updated": iso8601(t_status),
    }
