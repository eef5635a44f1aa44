"""`twilio-pipeline demo` / `make demo`: a whole campaign on the embedded default (SQLite + sandbox).

Creates an execution of a few thousand contacts (duplicates, formatted duplicates, invalid numbers,
opted-out and opted-back-in numbers, a seed from the channel file), sends it, lets the sandbox's clock
run so messages are delivered and recipients reply, syncs, and prints the results.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import requests
import sqlalchemy as sa

from twilio_pipeline.audience import create_execution, demo_audience
from twilio_pipeline.channels import ChannelFile
from twilio_pipeline.db import Database
from twilio_pipeline.rules.phones import normalise_number
from twilio_pipeline.settings import Settings

DEMO_BODY = "Hi {{FirstName}}, our spring sale starts today: 20% off everything in store and online."
FIRST_DEMO_ID = 1001
CLOCK_ADVANCE_S = 600


def next_execution_id(db: Database) -> int:
    ex = db.tables.executions
    with db.connect() as conn:
        highest = conn.execute(sa.select(sa.func.max(ex.c.ChannelExecutionID))).scalar()
    return max(FIRST_DEMO_ID, (highest or 0) + 1)


def _admin(base_url: str, auth: tuple[str, str], path: str, **form) -> None:
    resp = requests.post(f"{base_url}/_sandbox/{path}", data=form, auth=auth, timeout=30)
    resp.raise_for_status()


def _sandbox_now(base_url: str, auth: tuple[str, str]) -> datetime:
    """The sandbox's clock, which earlier demos moved on: replies must be dated on it."""
    resp = requests.get(f"{base_url}/_sandbox/clock", auth=auth, timeout=30)
    resp.raise_for_status()
    return datetime.fromtimestamp(resp.json()["now_epoch"], tz=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_demo(settings: Settings, db: Database, channels: ChannelFile, contacts: int,
             say: Callable[[str], None]) -> int:
    from twilio_pipeline.defs.runner import print_results, run_send, run_sync
    from twilio_pipeline.sandbox.embedded import ensure_embedded_sandbox

    channel = channels.channels[0]
    sandbox = ensure_embedded_sandbox(settings.data_dir, senders=[channel.from_number or ""])
    auth = (sandbox.account_sid, sandbox.auth_token)
    say(f"Demo: channel {channel.name!r}, sandbox at {sandbox.base_url}, database {settings.database_url}")

    audience = list(demo_audience(max(10, contacts), seed=random.randrange(1 << 30)))
    valid = [n for n in dict.fromkeys(normalise_number(a, channel.default_region).e164 for _, a, _ in audience) if n]
    opted_out, opted_back_in = valid[:5], valid[5:8]
    sender = channel.from_number or (sandbox.pool_numbers[0] if sandbox.pool_numbers else None)
    if sender:
        # Dated minutes ago on the sandbox clock, so the suppression refresh before the send reads them
        # whatever earlier demos did: replies dated before the sender's watermark are never re-read, and
        # these STOPs would surface as 21610 refusals instead of Unsubscribed.
        now = _sandbox_now(sandbox.base_url, auth)
        for number in opted_out + opted_back_in:
            _admin(sandbox.base_url, auth, "inbound", From=number, To=sender, Body="STOP",
                   DateSent=_iso(now - timedelta(minutes=3)))
        for number in opted_back_in:
            _admin(sandbox.base_url, auth, "inbound", From=number, To=sender, Body="start",
                   DateSent=_iso(now - timedelta(minutes=2)))
        say(f"Demo: {len(opted_out)} recipients replied STOP before this campaign and are not texted "
            f"(Unsubscribed); {len(opted_back_in)} replied STOP then START and are texted")

    execution_id = next_execution_id(db)
    create_execution(db, execution_id, channel.name, DEMO_BODY, audience)
    say(f"Demo: execution {execution_id} created with {len(audience):,} contacts")

    code = run_send(settings, db, channel, execution_id, say)
    if code != 0:
        return code
    say(f"Demo: moving the sandbox clock {CLOCK_ADVANCE_S} s on, so messages are delivered and recipients reply")
    _admin(sandbox.base_url, auth, "clock", advance_s=str(CLOCK_ADVANCE_S))
    code = run_sync(settings, db, channels, channel.name, say)
    if code != 0:
        return code
    print_results(db, execution_id, say)
    say("Next: `make ui` and open http://127.0.0.1:3000 to see the runs, assets, checks, sensor and schedules.")
    return 0
