"""The guide's Interaction log on the production path: the outbound job, as `twilio-pipeline send`, a sensor
or the UI runs it, writes the guide's lifecycle lines around the action's own, in the guide's order."""

from __future__ import annotations

import os
import uuid

import dagster as dg
import pytest
import yaml

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import Database
from twilio_pipeline.defs.outbound import OUTBOUND_ASSETS
from twilio_pipeline.defs.partitions import execution_partitions
from twilio_pipeline.defs.resources import build_resources

CHANNEL = "New Twilio SMS Channel 1"


def _action(text: str) -> str:
    return f"Action: {CHANNEL} Activity: {text}"


# The guide's log ("Logging"), oldest first; the lines between these are the action's own details.
GUIDE_ORDER = [
    "Preparing to execute",
    "Fulfillment Action preparing to start",
    "Completing Fulfillment Action execution",
    "Preparing to run any actions",
    f"Starting action {CHANNEL}",
    _action("Testing channel availability, attempt 1"),
    _action("Connect to Twilio: - Success"),
    _action("Channel availability test completed successfully"),
    _action("Retrieving SMS subscription data"),
    _action("Deduplicating on contact key"),
    _action("Committing offer history data"),
    _action("About to send SMS campaign"),
    _action("Preparing to send Twilio messages"),
    _action("Sending first batch of SMS campaign: 2 messages"),
    _action("2 SMS(s) have been sent"),
    _action("0 unsubscribed seed SMS numbers"),
    "Tidying up Fulfillment Action",
    "Generating any Fulfillment Action reports",
    "Fulfillment Action complete",
]


@pytest.mark.slow
def test_the_outbound_job_writes_the_guides_lifecycle_lines_in_order(make_sandbox, tmp_path, monkeypatch):
    sb = make_sandbox()
    channels = tmp_path / "channels.yaml"
    channels.write_text(yaml.safe_dump({"channels": [{"name": CHANNEL, "from_number": "+15005550006"}]}))
    db_url = f"sqlite:///{tmp_path / 'pipeline.db'}"
    prefix = f"l{uuid.uuid4().hex[:6]}_"
    for key in [k for k in os.environ if k.startswith("TWILIO_") and k != "TWILIO_PIPELINE_TEST_POSTGRES_URL"]:
        monkeypatch.delenv(key)
    for key, value in {"TWILIO_PIPELINE_DATABASE_URL": db_url, "TWILIO_PIPELINE_TABLE_PREFIX": prefix,
                       "TWILIO_PIPELINE_CHANNELS": str(channels), "TWILIO_PIPELINE_DATA_DIR": str(tmp_path / "data"),
                       "TWILIO_ACCOUNT_SID": sb.account_sid, "TWILIO_AUTH_TOKEN": sb.auth_token,
                       "TWILIO_API_BASE_URL": sb.base_url, "TWILIO_BULKEXPORTS_BASE_URL": sb.base_url,
                       "TWILIO_MESSAGING_BASE_URL": sb.base_url}.items():
        monkeypatch.setenv(key, value)
    db = Database(db_url, prefix=prefix)
    try:
        create_execution(db, 7, CHANNEL, "Hello", [(1, "+14155550101", None), (2, "+14155550102", None)])
    finally:
        db.dispose()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(execution_partitions.name, ["7"])
        result = dg.materialize(OUTBOUND_ASSETS, partition_key="7", instance=instance, resources=build_resources())
        assert result.success
        messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    found = [m for m in messages if m in GUIDE_ORDER]
    assert found == GUIDE_ORDER, "\n".join(found)
    assert messages.index("Fulfillment Action complete") > messages.index(_action("0 unsubscribed SMS numbers"))
