"""Process environment -> typed settings (CONTRACT.md "Environment").

Read once per process; nothing here talks to the network or the database. With no account SID the
pipeline runs in *sandbox mode* against the embedded sandbox, and says so everywhere: a missing
credential in production must never pass for a successful send.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from twilio_pipeline.twilio.account import Endpoints, TwilioCredentials

SANDBOX_MODE_NOTICE = "sandbox mode: no TWILIO_ACCOUNT_SID set, messages go to the local Twilio sandbox, not to phones"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_ACCOUNT_SID_VAR = re.compile(r"TWILIO_(\w+)_ACCOUNT_SID")


class SettingsError(ValueError):
    """A bad environment variable; the message names it."""


def project_root() -> Path:
    """The repo root (holds pyproject.toml); the default home of channels.yaml, .data/ and .dagster/."""
    env = os.environ.get("TWILIO_PIPELINE_HOME")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


@dataclass(frozen=True)
class Settings:
    database_url: str
    channels_path: Path
    data_dir: Path
    credentials: TwilioCredentials | None
    endpoints: Endpoints
    db_schema: str | None = None
    table_prefix: str = ""
    extra: dict = field(default_factory=dict)
    named_accounts: tuple[str, ...] = ()  # NAME of every TWILIO_<NAME>_ACCOUNT_SID set

    @property
    def sandbox_mode(self) -> bool:
        """No account at all: neither TWILIO_ACCOUNT_SID nor a named account's SID."""
        return self.credentials is None and not self.named_accounts


def validate_identifier(value: str, what: str, allow_empty: bool = False) -> str:
    """Schema names and table prefixes come from configuration: only plain identifiers get through."""
    if allow_empty and value == "":
        return value
    if not _IDENT.match(value):
        raise SettingsError(f"{what} {value!r} is not a plain SQL identifier (letters, digits, underscore)")
    return value


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    root = project_root()
    data_dir = Path(env.get("TWILIO_PIPELINE_DATA_DIR") or root / ".data")
    database_url = env.get("TWILIO_PIPELINE_DATABASE_URL") or f"sqlite:///{data_dir / 'twilio_pipeline.db'}"
    channels_path = Path(env.get("TWILIO_PIPELINE_CHANNELS") or root / "channels.yaml")

    credentials = _credentials(env, "TWILIO_")
    accounts = named_accounts(env)
    endpoints = Endpoints(
        api_base=(env.get("TWILIO_API_BASE_URL") or "https://api.twilio.com").rstrip("/"),
        bulkexports_base=(env.get("TWILIO_BULKEXPORTS_BASE_URL") or "https://bulkexports.twilio.com").rstrip("/"),
        messaging_base=(env.get("TWILIO_MESSAGING_BASE_URL") or "https://messaging.twilio.com").rstrip("/"),
    )
    schema = env.get("TWILIO_PIPELINE_DB_SCHEMA") or None
    if schema:
        validate_identifier(schema, "TWILIO_PIPELINE_DB_SCHEMA")
    prefix = validate_identifier(env.get("TWILIO_PIPELINE_TABLE_PREFIX", ""), "TWILIO_PIPELINE_TABLE_PREFIX", True)
    return Settings(database_url, channels_path, data_dir, credentials, endpoints, schema, prefix,
                    named_accounts=accounts)


def _credentials(env: Mapping[str, str], prefix: str) -> TwilioCredentials | None:
    """`<prefix>ACCOUNT_SID` with `<prefix>AUTH_TOKEN` or `<prefix>API_KEY_SID` + `<prefix>API_KEY_SECRET`;
    None when the SID is unset. Every problem is one line naming the variable, never its value."""
    account_sid = (env.get(f"{prefix}ACCOUNT_SID") or "").strip()
    if not account_sid:
        return None
    if not re.fullmatch(r"AC[0-9a-fA-F]{32}", account_sid):
        raise SettingsError(f"{prefix}ACCOUNT_SID must be 'AC' followed by 32 hex characters")
    token = env.get(f"{prefix}AUTH_TOKEN") or None
    key_sid = env.get(f"{prefix}API_KEY_SID") or None
    key_secret = env.get(f"{prefix}API_KEY_SECRET") or None
    if key_sid or key_secret:
        if not (key_sid and key_secret):
            raise SettingsError(f"{prefix}API_KEY_SID and {prefix}API_KEY_SECRET must be set together")
        if not re.fullmatch(r"SK[0-9a-fA-F]{32}", key_sid):
            raise SettingsError(f"{prefix}API_KEY_SID must be 'SK' followed by 32 hex characters")
    elif not token:
        raise SettingsError(f"{prefix}ACCOUNT_SID is set but neither {prefix}AUTH_TOKEN nor an API key is")
    return TwilioCredentials(account_sid, token, key_sid, key_secret)


def named_accounts(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """NAME of every TWILIO_<NAME>_ACCOUNT_SID that is set (the channels' named accounts)."""
    env = os.environ if env is None else env
    return tuple(sorted(m.group(1) for k, v in env.items() if (v or "").strip() and (m := _ACCOUNT_SID_VAR.fullmatch(k))))


def account_prefix(account: str) -> str:
    """`acme` -> `TWILIO_ACME_`: the environment variables of a channel's named account."""
    return f"TWILIO_{account.upper()}_"


def account_credentials(channel_name: str, account: str, env: Mapping[str, str] | None = None) -> TwilioCredentials:
    """The credentials of a channel's named account (channel key `account:`). An unset SID is a
    configuration error, never sandbox mode: the channel was meant to reach real phones."""
    env = os.environ if env is None else env
    prefix = account_prefix(account)
    credentials = _credentials(env, prefix)
    if credentials is None:
        raise SettingsError(f"channel {channel_name!r} uses account {account!r} but {prefix}ACCOUNT_SID is not set "
                            f"(set it with {prefix}AUTH_TOKEN, or {prefix}API_KEY_SID and {prefix}API_KEY_SECRET)")
    return credentials


def automation_on(env: dict[str, str] | None = None) -> bool:
    """TWILIO_PIPELINE_AUTOMATION: the default status of every sensor and schedule. Unset, it is on only in
    sandbox mode, so a fresh deployment with a real account sends and syncs nothing until someone decides to."""
    env = dict(os.environ if env is None else env)
    value = (env.get("TWILIO_PIPELINE_AUTOMATION") or "").strip().lower()
    if value in ("on", "off"):
        return value == "on"
    if value:
        raise SettingsError(f"TWILIO_PIPELINE_AUTOMATION must be 'on' or 'off', not {value!r}")
    account_configured = bool((env.get("TWILIO_ACCOUNT_SID") or "").strip() or named_accounts(env))
    return not account_configured


EXECUTORS = ("multiprocess", "in_process", "celery")
DEFAULT_CELERY_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_CELERY_BACKEND = "rpc://"


@dataclass(frozen=True)
class ExecutorSettings:
    name: str
    celery_broker: str = DEFAULT_CELERY_BROKER
    celery_backend: str = DEFAULT_CELERY_BACKEND


def executor_settings(env: dict[str, str] | None = None) -> ExecutorSettings:
    """TWILIO_PIPELINE_EXECUTOR (+ _CELERY_BROKER/_BACKEND): where every job's steps run, chosen by
    configuration so that a deployment scales out without a code change."""
    env = dict(os.environ if env is None else env)
    name = (env.get("TWILIO_PIPELINE_EXECUTOR") or "multiprocess").strip().lower().replace("-", "_")
    if name not in EXECUTORS:
        raise SettingsError(f"TWILIO_PIPELINE_EXECUTOR must be one of {', '.join(EXECUTORS)}, not "
                            f"{env.get('TWILIO_PIPELINE_EXECUTOR')!r}")
    broker = (env.get("TWILIO_PIPELINE_CELERY_BROKER") or DEFAULT_CELERY_BROKER).strip()
    backend = (env.get("TWILIO_PIPELINE_CELERY_BACKEND") or DEFAULT_CELERY_BACKEND).strip()
    for var, url in (("TWILIO_PIPELINE_CELERY_BROKER", broker), ("TWILIO_PIPELINE_CELERY_BACKEND", backend)):
        if "://" not in url:
            raise SettingsError(f"{var} must be a URL such as amqp://user:password@host:5672// or rpc://, "
                                f"not {url!r}")
    return ExecutorSettings(name, broker, backend)
