"""Which Twilio account a client speaks for, and where: its credentials and the three base URLs.

Both come from the environment (`settings.py`); the sandbox serves all three bases on one port.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, repr=False)
class TwilioCredentials:
    """Account SID plus either its auth token or an API key (SID + secret); secrets never in repr."""

    account_sid: str
    auth_token: str | None = None
    api_key_sid: str | None = None
    api_key_secret: str | None = None

    @property
    def username(self) -> str:
        return self.api_key_sid or self.account_sid

    @property
    def password(self) -> str | None:
        return self.api_key_secret or self.auth_token

    def __repr__(self) -> str:
        parts = [f"account_sid={self.account_sid!r}"]
        if self.api_key_sid:
            parts.append(f"api_key_sid={self.api_key_sid!r}")
        parts.append("auth_token=***" if self.auth_token else "auth_token=None")
        if self.api_key_secret:
            parts.append("api_key_secret=***")
        return f"TwilioCredentials({', '.join(parts)})"


@dataclass(frozen=True)
class Endpoints:
    """Base URLs; the sandbox serves all three on one port."""

    api_base: str = "https://api.twilio.com"
    bulkexports_base: str = "https://bulkexports.twilio.com"
    messaging_base: str = "https://messaging.twilio.com"
