"""Typed Twilio errors.

Callers decide what to do from the class (stop the run, retry later, record a refusal), and
people read the text: Twilio's `code`, `message` and `more_info` plus the HTTP status, method and a
URL that never carries credentials. The client builds every text through its `Redactor`, so a secret
echoed by a server never ends up in an exception.
"""

from __future__ import annotations


class TwilioApiError(Exception):
    """A Twilio request failed; carries Twilio's error fields and where the request went."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        more_info: str | None = None,
        method: str | None = None,
        url: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.more_info = more_info
        self.method = method
        self.url = url
        self.attempts = attempts
        super().__init__(self._text())

    def _text(self) -> str:
        facts = []
        if self.status is not None:
            facts.append(f"HTTP {self.status}")
        if self.code is not None:
            facts.append(f"code {self.code}")
        if self.method and self.url:
            facts.append(f"{self.method} {self.url}")
        if self.attempts > 1:
            facts.append(f"{self.attempts} attempts")
        if self.more_info:
            facts.append(f"see {self.more_info}")
        return f"{self.message} ({'; '.join(facts)})" if facts else self.message

    def __reduce__(self):  # keep keyword fields when pickled across processes
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls, message, state):
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    err.args = (err._text(),)
    return err


class CredentialsRejected(TwilioApiError):
    """Twilio answered 401/403: the account SID / token or API key were rejected; the run must stop."""


class TwilioUnavailable(TwilioApiError):
    """A retriable failure (throttling, 5xx or timeouts on GET, connection failures) outlasted its retries."""


class AmbiguousRequest(TwilioUnavailable):
    """A non-idempotent POST (other than Messages) ended in a 5xx, read timeout or reset after sending:
    Twilio may have acted on it, so it was not repeated. Check the resource before trying again."""


class MalformedResponse(TwilioApiError):
    """Twilio answered 2xx with a body we cannot use: not JSON, truncated, an error body, or required
    fields missing."""


# Refusals on create that blame the sender or the account, not the recipient (Twilio's error dictionary,
# www.twilio.com/docs/api/errors/<code>): the next request from the same channel would very likely get the
# same answer, so the recipient is not at fault and must not be recorded as a final refusal.
SENDER_ERROR_CODES: dict[int, str] = {
    21601: "From is not an SMS-capable inbound number of this account",
    21212: "invalid From number",
    21606: "From is not a message-capable phone number of this account",
    21608: "trial account: the To number is not verified",
    21659: "From is not a Twilio number (or a short code of another country)",
    21660: "From does not belong to this account",
    21661: "From is not SMS-capable",
    21701: "the Messaging Service SID is invalid",
    21703: "the Messaging Service has no sender available for this message",
    21704: "the Messaging Service contains no phone numbers",
    21705: "the Messaging Service is invalid",
}


def is_sender_error(code: int | None) -> bool:
    """True for a create refusal that is the sender's or the account's fault (SENDER_ERROR_CODES)."""
    return code in SENDER_ERROR_CODES


class SenderRejected(TwilioApiError):
    """`sender_error_limit` creates in a row were refused for the sender's or the account's fault: the send
    stopped; the recipients refused that way stay unsent, to be sent once the channel is fixed."""
