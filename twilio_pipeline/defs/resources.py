"""Resources: configuration holders that hand out the plain Database and TwilioClient (the
dagster-fivetran split). Secrets arrive as EnvVar values, resolved at launch and never shown in the UI."""

from __future__ import annotations

import atexit
import os
import threading

import dagster as dg
from dagster._utils.cached_method import cached_method
from pydantic import Field

from twilio_pipeline.channels import Channel, ChannelFile, load_channels
from twilio_pipeline.db import Database
from twilio_pipeline.settings import (
    SANDBOX_MODE_NOTICE,
    SettingsError,
    account_credentials,
    load_settings,
    named_accounts,
)
from twilio_pipeline.twilio import Endpoints, TwilioClient, TwilioCredentials
from twilio_pipeline.twilio.channel_client import client_for_channel

_DATABASES: dict[tuple[str, str | None, str], Database] = {}
_DATABASES_LOCK = threading.Lock()


def shared_database(url: str, schema: str | None = None, prefix: str = "") -> Database:
    """One Database (engine and schema check) per process and URL: a code server evaluates sensors every
    few seconds and must not build an engine and re-inspect every table on each tick."""
    key = (url, schema, prefix)
    with _DATABASES_LOCK:
        db = _DATABASES.get(key)
        if db is None:
            db = _DATABASES[key] = Database(url, schema=schema, prefix=prefix)
        return db


@atexit.register
def dispose_databases() -> None:
    with _DATABASES_LOCK:
        for db in _DATABASES.values():
            db.dispose()


class DatabaseResource(dg.ConfigurableResource):
    """The pipeline's database (any SQLAlchemy URL)."""

    url: str = Field(description="SQLAlchemy URL (TWILIO_PIPELINE_DATABASE_URL); default a SQLite file under .data/")
    schema_name: str | None = Field(None, description="Database schema of the tables (TWILIO_PIPELINE_DB_SCHEMA)")
    table_prefix: str = Field("", description="Prefix of every table name (TWILIO_PIPELINE_TABLE_PREFIX)")

    def get_database(self) -> Database:
        return shared_database(self.url, self.schema_name, self.table_prefix)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Pooled connections are closed when the run or tick ends; the engine stays for the next one."""
        key = (self.url, self.schema_name, self.table_prefix)
        db = _DATABASES.get(key)
        if db is not None:
            db.dispose()


class TwilioResource(dg.ConfigurableResource):
    """The Twilio account and the channel file. No account SID means sandbox mode (the embedded sandbox)."""

    account_sid: str | None = Field(None, description="TWILIO_ACCOUNT_SID; unset = sandbox mode")
    auth_token: str | None = Field(None, description="TWILIO_AUTH_TOKEN")
    api_key_sid: str | None = Field(None, description="TWILIO_API_KEY_SID (instead of the auth token)")
    api_key_secret: str | None = Field(None, description="TWILIO_API_KEY_SECRET")
    api_base_url: str = "https://api.twilio.com"
    bulkexports_base_url: str = "https://bulkexports.twilio.com"
    messaging_base_url: str = "https://messaging.twilio.com"
    channels_path: str = Field(description="Channel file (TWILIO_PIPELINE_CHANNELS)")
    data_dir: str = Field(description="Where the embedded sandbox keeps its store (sandbox mode only)")

    @property
    def sandbox_mode(self) -> bool:
        """No account at all (neither TWILIO_ACCOUNT_SID nor a TWILIO_<NAME>_ACCOUNT_SID)."""
        return not self.account_sid and not named_accounts()

    @property
    def mode_tag(self) -> str:
        return "sandbox" if self.sandbox_mode else "live"

    def channel_sandboxed(self, channel: Channel) -> bool:
        """A channel without `account:` on a deployment without TWILIO_ACCOUNT_SID talks to the sandbox;
        a channel naming an account never does (an unset account is an error, see `get_client`)."""
        return channel.account is None and not self.account_sid

    def channel_mode_tag(self, channel: Channel) -> str:
        return "sandbox" if self.channel_sandboxed(channel) else "live"

    def get_channels(self) -> ChannelFile:
        return load_channels(self.channels_path)

    def _endpoints(self) -> Endpoints:
        return Endpoints(self.api_base_url, self.bulkexports_base_url, self.messaging_base_url)

    def account_problem(self, channel: Channel) -> str | None:
        """Why the channel's named account cannot be used (its TWILIO_<NAME>_* unset), or None."""
        if channel.account is None:
            return None
        try:
            account_credentials(channel.name, channel.account)
        except SettingsError as exc:
            return str(exc)
        return None

    def credentials_for(self, channel: Channel) -> tuple[TwilioCredentials, Endpoints]:
        """The channel's account: its named account (`account:`, TWILIO_<NAME>_*, read when the step runs,
        never shown in the UI), else the deployment's account, else the embedded sandbox. A named account
        whose SID is unset fails the step in one line: it never falls back to the sandbox."""
        if channel.account is None:
            return self._connection()
        try:
            creds = account_credentials(channel.name, channel.account)
        except SettingsError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        return creds, self._endpoints()

    @cached_method
    def _connection(self) -> tuple[TwilioCredentials, Endpoints]:
        if not self.account_sid:
            from pathlib import Path

            from twilio_pipeline.sandbox.embedded import ensure_embedded_sandbox

            # the channel file's numbers are this sandbox account's own, as a real account's would be
            senders = [c.from_number for c in self.get_channels().channels if c.from_number]
            sb = ensure_embedded_sandbox(Path(self.data_dir), senders=senders)
            return (TwilioCredentials(sb.account_sid, sb.auth_token),
                    Endpoints(sb.base_url, sb.base_url, sb.base_url))
        creds = TwilioCredentials(self.account_sid, self.auth_token, self.api_key_sid, self.api_key_secret)
        return creds, self._endpoints()

    def get_client(self, channel: Channel, trace=None) -> TwilioClient:
        """A client with the channel's concurrency, rate and retry settings (one per step)."""
        creds, endpoints = self.credentials_for(channel)
        return client_for_channel(creds, channel, endpoints, trace=trace)

    def notice(self, channel: Channel | None = None) -> str | None:
        sandboxed = self.sandbox_mode if channel is None else self.channel_sandboxed(channel)
        return SANDBOX_MODE_NOTICE if sandboxed else None


def _env_or(name: str, default=None):
    """EnvVar when the variable is set (resolved at launch, hidden in the UI), else the default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def build_resources() -> dict:
    settings = load_settings()
    return {
        "database": DatabaseResource(
            url=_env_or("TWILIO_PIPELINE_DATABASE_URL", settings.database_url),
            schema_name=settings.db_schema,
            table_prefix=settings.table_prefix,
        ),
        "twilio": TwilioResource(
            account_sid=_env_or("TWILIO_ACCOUNT_SID"),
            auth_token=_env_or("TWILIO_AUTH_TOKEN"),
            api_key_sid=_env_or("TWILIO_API_KEY_SID"),
            api_key_secret=_env_or("TWILIO_API_KEY_SECRET"),
            api_base_url=settings.endpoints.api_base,
            bulkexports_base_url=settings.endpoints.bulkexports_base,
            messaging_base_url=settings.endpoints.messaging_base,
            channels_path=str(settings.channels_path),
            data_dir=str(settings.data_dir),
        ),
    }
