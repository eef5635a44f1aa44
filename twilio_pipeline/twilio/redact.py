"""Secret redaction for anything that may reach a log, a trace line or an exception.

The client never formats the Authorization header or the secrets into text, but a server (or a
proxy) can echo them back in an error body; every text the client produces passes through here
once more. The rest of the pipeline reuses it for its own log lines.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
_MIN_SECRET_LEN = 4  # shorter "secrets" would garble ordinary text and protect nothing


class Redactor:
    """Replaces every known secret (and its URL-encoded / Basic-auth forms) with `[REDACTED]`."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._needles: list[str] = []
        for secret in secrets:
            self.add(secret)

    @classmethod
    def for_basic_auth(cls, username: str, password: str | None, *extra: str | None) -> Redactor:
        """Redacts the password, the base64 `user:password` Authorization value and any extra secrets."""
        red = cls([password, *extra])
        if password:
            red.add(base64.b64encode(f"{username}:{password}".encode()).decode("ascii"))
        return red

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < _MIN_SECRET_LEN:
            return
        for form in (secret, quote(secret, safe=""), quote_plus(secret)):
            if form not in self._needles:
                self._needles.append(form)
        # longest first, so a secret that contains another is replaced whole
        self._needles.sort(key=len, reverse=True)

    def redact(self, text: object) -> str:
        s = text if isinstance(text, str) else str(text)
        for needle in self._needles:
            if needle in s:
                s = s.replace(needle, REDACTED)
        return s

    def __repr__(self) -> str:
        return f"Redactor({len(self._needles)} patterns)"
