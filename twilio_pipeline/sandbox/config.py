"""The sandbox's settings, built by the CLI from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from twilio_pipeline.sandbox.credentials import (
    SANDBOX_ACCOUNT_SID,
    SANDBOX_AUTH_TOKEN,
    SANDBOX_MESSAGING_SERVICE_SID,
    SANDBOX_OWNED_NUMBERS,
    SANDBOX_POOL_NUMBERS,
)


@dataclass
class SandboxConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    store: Path | None = None
    port_file: Path | None = None
    account_sid: str = SANDBOX_ACCOUNT_SID
    auth_token: str = SANDBOX_AUTH_TOKEN
    api_key_sid: str | None = None
    api_key_secret: str | None = None
    latency_s: float = 0.0
    max_concurrency: int = 100
    status_delay_s: float = 1.0
    undelivered_rate: float = 0.0
    failed_rate: float = 0.0
    reply_rate: float = 0.0
    reply_keywords: tuple[str, ...] = ("MORE",)
    seed: int = 0
    fault_429_rate: float = 0.0
    fault_500_rate: float = 0.0
    fault_reset_rate: float = 0.0
    fault_timeout_rate: float = 0.0
    fault_after_create: float = 0.5
    timeout_s: float = 60.0
    messaging_service_sid: str = SANDBOX_MESSAGING_SERVICE_SID
    pool_numbers: tuple[str, ...] = field(default_factory=lambda: tuple(SANDBOX_POOL_NUMBERS))
    access_log: bool = True
    # the account's own numbers besides the pool's (a From outside them and the pool is 21606)
    owned_numbers: tuple[str, ...] = SANDBOX_OWNED_NUMBERS
    pool_short_codes: tuple[str, ...] = ()
    pool_alpha_senders: tuple[str, ...] = ()
    subaccounts: tuple[tuple[str, str], ...] = ()  # (SID, auth token) each
    sent_final_rate: float = 0.0
    list_lag_s: float = 0.0  # on the sandbox clock (so POST /_sandbox/clock also ages it)
    redact_bodies: bool = False
