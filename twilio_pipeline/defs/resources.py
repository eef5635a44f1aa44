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
from twilio_pipeline.settings import SANDBOX_MODE_NOTICE, load_settings
from twilio_pipeline.twilio import (
    Endpoints,
    RetrySettings,
    TwilioClient,
    TwilioCredentials,
)

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
        return not self.account_sid

    @property
    def mode_tag(self) -> str:
        return "sandbox" if self.sandbox_mode else "live"

    def get_channels(self) -> ChannelFile:
        return load_channels(self.channels_path)

    @cached_method
    def _connection(self) -> tuple[TwilioCredentials, Endpoints]:
        if self.sandbox_mode:
            from pathlib import Path

            from twilio_pipeline.sandbox.embedded import ensure_embedded_sandbox

            sb = ensure_embedded_sandbox(Path(self.data_dir))
            return (TwilioCredentials(sb.account_sid, sb.auth_token),
                    Endpoints(sb.base_url, sb.base_url, sb.base_url))
        creds = TwilioCredentials(self.account_sid, self.auth_token, self.api_key_sid, self.api_key_secret)
        return creds, Endpoints(self.api_base_url, self.bulkexports_base_url, self.messaging_base_url)

    def get_client(self, channel: Channel, trace=None) -> TwilioClient:
        """A client with the channel's concurrency, rate and retry settings (one per step)."""
        creds, endpoints = self._connection()
        r = channel.retry
        return TwilioClient(
            creds,
            endpoints=endpoints,
            retry=RetrySettings(r.max_attempts, r.min_delay_s, r.max_delay_s, r.throttle_budget_s),
            max_concurrency=channel.max_concurrency,
            requests_per_second=channel.requests_per_second,
            trace=trace if channel.trace else None,
        )

    def notice(self) -> str | None:
        return SANDBOX_MODE_NOTICE if self.sandbox_mode else None


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
