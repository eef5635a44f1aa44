"""Outbound test helpers: a real sandbox process per test, channels, clients and a log that keeps lines."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from twilio_pipeline.channels import parse_channels
from twilio_pipeline.logs import ListLog
from twilio_pipeline.sandbox.process import SandboxProcess
from twilio_pipeline.twilio import Endpoints, TwilioCredentials
from twilio_pipeline.twilio.channel_client import client_for_channel

SENDER = "+15005550006"


@pytest.fixture
def log():
    return ListLog()


@pytest.fixture
def sandbox(make_sandbox):
    return make_sandbox()


def channels(**overrides):
    spec = {"name": "Test SMS Channel", "from_number": SENDER, "max_concurrency": 10,
            "retry": {"max_attempts": 5, "min_delay_s": 0.01, "max_delay_s": 0.2, "throttle_budget_s": 60}}
    spec.update(overrides)
    if "messaging_service_sid" in overrides:
        spec.pop("from_number", None)
    return parse_channels({"channels": [spec]})


def client_for(sb: SandboxProcess, channel, auth_token: str | None = None, **options):
    creds = TwilioCredentials(sb.account_sid, auth_token or sb.auth_token)
    return client_for_channel(creds, channel, Endpoints(sb.base_url, sb.base_url, sb.base_url), **options)


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def days_ago(n: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=n)


def ledger_rows(db, execution_id: int) -> list[dict]:
    led = db.tables.ledger
    with db.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(led).where(led.c.ChannelExecutionID == execution_id).order_by(led.c.RPContactID)).mappings()]


def message_ids(db, execution_id: int) -> list[dict]:
    ids = db.tables.message_ids
    with db.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(ids).where(ids.c.ChannelExecutionID == execution_id)).mappings()]


def outbound_created(sb: SandboxProcess) -> dict[str, int]:
    return sb.stats()["messages_created_by_to"]


def assert_exactly_once(db, sb, execution_id: int) -> list[dict]:
    """Every recipient the ledger says was sent has exactly one message at the sandbox (and its SID is
    the one recorded); nobody else got one; every non-seed SID is staged."""
    rows = ledger_rows(db, execution_id)
    created = outbound_created(sb)
    sent = [r for r in rows if r["Outcome"] == "sent"]
    for r in sent:
        assert created.get(r["ToNumber"]) == 1, (r["RPContactID"], r["ToNumber"], created.get(r["ToNumber"]))
    assert sum(created.values()) == len(sent), (sum(created.values()), len(sent))
    by_sid = {m["sid"]: m for m in sb.messages(direction="outbound-api")}
    for r in sent:
        assert r["MessageSID"] in by_sid and by_sid[r["MessageSID"]]["to"] == r["ToNumber"]
    staged = {m["MessageID"] for m in message_ids(db, execution_id)}
    assert staged == {r["MessageSID"] for r in sent if not r["IsSeed"]}
    assert not [r for r in rows if r["Outcome"] in ("inflight", "planned")]
    return rows


def identities(results: dict) -> None:
    parts = sum(results[k] for k in ("InvalidNumbers", "Duplicates", "Unsubscribed", "NotRendered", "Targeted",
                                    "Pending"))
    assert results["CountBeforeDedup"] == parts, results
    assert results["Targeted"] == results["Sent"] + results["SendFailed"] + results["Unresolved"], results
