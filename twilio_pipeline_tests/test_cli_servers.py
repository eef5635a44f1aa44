"""A campaign as a user runs it against a database server: `twilio-pipeline send`, a STOP reply, `sync` and
`results` as real processes, with the database URL taken from the environment, on PostgreSQL and on MariaDB
(whose bulk loads go through LOAD DATA LOCAL INFILE and whose state load empties the pending table with
TRUNCATE: both in these processes, as deployed)."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
import sqlalchemy as sa
import yaml

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import Database
from twilio_pipeline.sandbox.process import SandboxProcess
from twilio_pipeline.settings import project_root
from twilio_pipeline_tests.test_cli import _results, cli

pytestmark = pytest.mark.slow
CHANNEL = "Server Channel"
SENDER = "+15005550006"
STOPPER = "+14155550003"


@pytest.fixture(params=["postgres_url", "mysql_url"])
def server_url(request):
    return request.getfixturevalue(request.param)


def test_a_campaign_sent_replied_to_and_synced_from_the_cli_on_a_database_server(server_url, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(project_root() / "dagster.yaml", home / "dagster.yaml")
    channels = tmp_path / "channels.yaml"
    channels.write_text(yaml.safe_dump({"channels": [{"name": CHANNEL, "from_number": SENDER}]}))
    prefix = f"c{uuid.uuid4().hex[:6]}_"
    db = Database(server_url, prefix=prefix)
    try:
        create_execution(db, 501, CHANNEL, "Hi {{FirstName}} \N{ROCKET}",
                         [(i, f"+1415555{i:04d}", {"FirstName": "Zoë"}) for i in range(1, 41)]
                         + [(41, "+1 (415) 555-0001", None), (42, "not a number", None)])
        with SandboxProcess(tmp_path / "sandbox", status_delay_ms=50) as sb:
            env = {**os.environ, "DAGSTER_HOME": str(home), "TWILIO_PIPELINE_DATABASE_URL": server_url,
                   "TWILIO_PIPELINE_TABLE_PREFIX": prefix, "TWILIO_PIPELINE_CHANNELS": str(channels),
                   "TWILIO_ACCOUNT_SID": sb.account_sid, "TWILIO_AUTH_TOKEN": sb.auth_token,
                   "TWILIO_API_BASE_URL": sb.base_url, "TWILIO_BULKEXPORTS_BASE_URL": sb.base_url,
                   "TWILIO_MESSAGING_BASE_URL": sb.base_url, "TWILIO_PIPELINE_DATA_DIR": str(tmp_path / "data")}
            code, out, err = cli(env, "send", "501")
            assert code == 0, out + err
            counts = _results(out)
            assert (counts["Duplicates"], counts["InvalidNumbers"], counts["Targeted"]) == (1, 1, 40)
            assert all(m["body"] == "Hi Zoë \N{ROCKET}" for m in sb.messages() if m["direction"] != "inbound")

            sb.inbound(STOPPER, SENDER, "STOP")
            sb.advance_clock(60)
            code, out, err = cli(env, "sync")
            assert code == 0, out + err
            code, out, err = cli(env, "results", "501")
            assert code == 0, out + err
            results = _results(out)
            assert sum(v for k, v in results.items() if k.startswith("Status:")) == results["Sent"] == 40
            assert results["Reply:STOP"] == 1

            t = db.tables
            with db.connect() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(t.pending_states)).scalar() == 0
                assert conn.execute(sa.select(sa.func.count()).select_from(t.message_ids)).scalar() == 0
                stops = conn.execute(sa.select(t.suppression.c.PhoneNumber).where(
                    t.suppression.c.Activity == "STOP")).scalars().all()
            assert stops == [STOPPER]

            # A second sync finds nothing new and changes nothing; a second send sends nothing.
            code, out, err = cli(env, "sync")
            assert code == 0, out + err
            code, out, err = cli(env, "results", "501")
            assert _results(out) == results
            sent = len([m for m in sb.messages() if m["direction"] != "inbound"])
            code, out, err = cli(env, "send", "501")
            assert code == 0 and "nothing new to send" in out, out + err
            assert len([m for m in sb.messages() if m["direction"] != "inbound"]) == sent
    finally:
        db.dispose()
