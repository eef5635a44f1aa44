"""Per-channel Twilio accounts and Messaging Service pools, against a sandbox with a subaccount and a pool
of short codes and alphanumeric senders: what an agency or a multi-brand team running one deployment relies on."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import Database
from twilio_pipeline.defs.inbound import INBOUND_ASSETS
from twilio_pipeline.defs.outbound import OUTBOUND_ASSETS
from twilio_pipeline.defs.partitions import execution_partitions
from twilio_pipeline.defs.resources import build_resources
from twilio_pipeline.inbound import parse_keywords, refresh_inbound
from twilio_pipeline.outbound.execution import read_execution
from twilio_pipeline.sandbox.process import admin_call
from twilio_pipeline.settings import project_root
from twilio_pipeline_tests.inbound.helpers import make_client, suppressed

SENDER = "+15005550006"  # owned by the main account and, as subaccounts share them here, by the subaccount
SUB_SID = "AC" + "b" * 32
SUB_TOKEN = "subaccount-token-" + "7" * 15
X, Y = "+14155550111", "+14155550122"


def _env(monkeypatch, sb, tmp_path, db_url: str, channels: list[dict]) -> tuple[dict, Database]:
    """The code location's resources as deployed: no TWILIO_ACCOUNT_SID, one TWILIO_<NAME>_* set per account."""
    for key in [k for k in os.environ if k.startswith("TWILIO_") and k != "TWILIO_PIPELINE_TEST_POSTGRES_URL"]:
        monkeypatch.delenv(key)
    path = tmp_path / "channels.yaml"
    path.write_text(yaml.safe_dump({"channels": channels}))
    prefix = f"a{uuid.uuid4().hex[:6]}_"
    for key, value in {
        "TWILIO_PIPELINE_DATABASE_URL": db_url, "TWILIO_PIPELINE_TABLE_PREFIX": prefix,
        "TWILIO_PIPELINE_CHANNELS": str(path), "TWILIO_PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "TWILIO_API_BASE_URL": sb.base_url, "TWILIO_BULKEXPORTS_BASE_URL": sb.base_url,
        "TWILIO_MESSAGING_BASE_URL": sb.base_url,
        "TWILIO_BRANDA_ACCOUNT_SID": sb.account_sid, "TWILIO_BRANDA_AUTH_TOKEN": sb.auth_token,
        "TWILIO_BRANDB_ACCOUNT_SID": SUB_SID, "TWILIO_BRANDB_AUTH_TOKEN": SUB_TOKEN,
    }.items():
        monkeypatch.setenv(key, value)
    return build_resources(), Database(db_url, prefix=prefix)


def _send(instance, resources, execution_id: int) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(execution_partitions.name, [str(execution_id)])
    return dg.materialize(OUTBOUND_ASSETS, partition_key=str(execution_id), instance=instance,
                          resources=resources, raise_on_error=False)


def _results(db: Database, execution_id: int) -> dict[str, float]:
    return {k: float(v) for k, v in db.read_results(execution_id).items()}


@pytest.mark.slow
def test_two_channels_on_two_accounts_send_sync_and_keep_their_opt_outs_apart(make_sandbox, db_url, tmp_path,
                                                                               monkeypatch):
    sb = make_sandbox(subaccount=f"{SUB_SID}:{SUB_TOKEN}", status_delay_ms=50)
    resources, db = _env(monkeypatch, sb, tmp_path, db_url, [
        {"name": "Brand A", "from_number": SENDER, "account": "brandA"},
        {"name": "Brand B", "from_number": SENDER, "account": "brandb"},
    ])
    try:
        create_execution(db, 1, "Brand A", "Hello from A", [(1, X, None), (2, Y, None)])
        create_execution(db, 2, "Brand B", "Hello from B", [(1, X, None), (2, Y, None)])
        with dg.instance_for_test() as instance:
            first = [_send(instance, resources, e) for e in (1, 2)]
            assert all(r.success for r in first)
            assert instance.get_run_by_id(first[0].run_id).tags["twilio_pipeline/mode"] == "live"
            outbound = [m for m in sb.messages() if m["direction"] != "inbound"]
            assert sorted((m["body"], m["account_sid"]) for m in outbound) == sorted(
                [("Hello from A", sb.account_sid)] * 2 + [("Hello from B", SUB_SID)] * 2)

            # Each channel's sync reads its own account's messages: every SID gets its delivery state.
            sb.advance_clock(120)
            for e in (1, 2):
                instance.add_dynamic_partitions(execution_partitions.name, [str(e)])
                synced = dg.materialize(INBOUND_ASSETS, selection=["status_fetch", "state_bulk_load"],
                                        partition_key=str(e), instance=instance, resources=resources)
                assert synced.success
            st = db.tables.states
            with db.connect() as conn:
                delivered = dict(conn.execute(
                    sa.select(st.c.ChannelExecutionID, sa.func.count()).where(st.c.FulfillmentState == "Delivered")
                    .group_by(st.c.ChannelExecutionID)).all())
            assert delivered == {1: 2, 2: 2}

            # X replies STOP to the number on Brand B's account only.
            admin_call(sb.base_url, SUB_SID, SUB_TOKEN, "POST", "/_sandbox/inbound",
                       form={"From": X, "To": SENDER, "Body": "STOP"})
            create_execution(db, 3, "Brand B", "Again from B", [(1, X, None), (2, Y, None)])
            create_execution(db, 4, "Brand A", "Again from A", [(1, X, None), (2, Y, None)])
            assert all(_send(instance, resources, e).success for e in (3, 4))
            assert (_results(db, 3)["Unsubscribed"], _results(db, 3)["Sent"]) == (1, 1)
            assert (_results(db, 4)["Unsubscribed"], _results(db, 4)["Sent"]) == (0, 2)
            sent_to_x = {(m["body"], m["account_sid"]) for m in sb.messages(to=X) if m["direction"] != "inbound"}
            assert ("Again from A", sb.account_sid) in sent_to_x
            assert ("Again from B", SUB_SID) not in sent_to_x

            # Nothing a run logged shows a credential.
            for result in first:
                text = "\n".join(e.message for e in instance.all_logs(result.run_id))
                assert SUB_TOKEN not in text and sb.auth_token not in text
        s = db.tables.suppression
        with db.connect() as conn:
            rows = conn.execute(sa.select(s.c.PhoneNumber, s.c.TwilioNumber, s.c.Activity, s.c.Account)).all()
        assert [tuple(r) for r in rows] == [(X, SENDER, "STOP", "BRANDB")]
    finally:
        db.dispose()


@pytest.mark.slow
def test_a_channel_naming_an_unset_account_fails_in_one_line_and_never_uses_the_sandbox(make_sandbox, tmp_path,
                                                                                       monkeypatch):
    """A configuration error, whatever the database: SQLite only."""
    sb = make_sandbox()
    resources, db = _env(monkeypatch, sb, tmp_path, f"sqlite:///{tmp_path / 'p.db'}", [
        {"name": "Ghost", "from_number": SENDER, "account": "ghost"}])
    try:
        create_execution(db, 5, "Ghost", "Hi", [(1, X, None)])
        with dg.instance_for_test() as instance:
            result = _send(instance, resources, 5)
        assert not result.success
        row = read_execution(db, 5)
        assert row.status == "failed"
        assert "TWILIO_GHOST_ACCOUNT_SID is not set" in row.status_reason and "\n" not in row.status_reason
        assert sb.stats()["messages_total"] == 0

        env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
        (tmp_path / "home").mkdir()
        create_execution(db, 6, "Ghost", "Hi", [(1, X, None)])
        proc = subprocess.run([sys.executable, "-m", "twilio_pipeline.cli", "send", "6"], env=env,
                              capture_output=True, text=True, timeout=120, cwd=project_root())
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "error: channel 'Ghost' uses account 'ghost' but TWILIO_GHOST_ACCOUNT_SID is not set (set it with "
            "TWILIO_GHOST_AUTH_TOKEN, or TWILIO_GHOST_API_KEY_SID and TWILIO_GHOST_API_KEY_SECRET)"]
        assert "sandbox mode" not in proc.stdout
        assert sb.stats()["messages_total"] == 0
    finally:
        db.dispose()


def test_a_stop_to_a_pool_short_code_suppresses_the_number_for_the_service(make_sandbox, db, log):
    from twilio_pipeline.channels import Channel

    sb = make_sandbox(pool_short_codes="87654", pool_alpha_senders="ACMEBRAND")
    channel = Channel(name="Pool", messaging_service_sid=sb.messaging_service_sid, keywords=["MORE"])
    sb.inbound(X, "87654", "STOP")
    sb.inbound(Y, "87654", "more")
    with make_client(sb) as client:
        summary = refresh_inbound(db, client, channel, log=log)
    assert suppressed(db, channel) == {X}
    assert summary.opt_outs == 1
    sn = db.tables.service_numbers
    with db.connect() as conn:
        pool = {r[0] for r in conn.execute(sa.select(sn.c.PhoneNumber).where(sn.c.ServiceSID == channel.sender))}
    assert "87654" in pool and "ACMEBRAND" not in pool  # an alphanumeric sender cannot receive a reply
    parsed = parse_keywords(db, channel, log=log)
    assert (parsed.parsed, parsed.opt_outs, parsed.channel_keywords) == (2, 1, 1)


def test_a_named_account_takes_an_api_key_and_bad_values_are_one_line_naming_the_variable():
    from twilio_pipeline.settings import SettingsError, account_credentials, load_settings

    key = {"TWILIO_ACME_ACCOUNT_SID": SUB_SID, "TWILIO_ACME_API_KEY_SID": "SK" + "c" * 32,
           "TWILIO_ACME_API_KEY_SECRET": "key-secret"}
    creds = account_credentials("Acme Offers", "acme", key)
    assert (creds.username, creds.password, creds.account_sid) == ("SK" + "c" * 32, "key-secret", SUB_SID)
    assert "key-secret" not in repr(creds)
    for env, fragment in [
        ({"TWILIO_ACME_ACCOUNT_SID": "ACnope", "TWILIO_ACME_AUTH_TOKEN": "t"}, "TWILIO_ACME_ACCOUNT_SID must be 'AC'"),
        ({"TWILIO_ACME_ACCOUNT_SID": SUB_SID}, "neither TWILIO_ACME_AUTH_TOKEN nor an API key"),
        ({"TWILIO_ACCOUNT_SID": SUB_SID, "TWILIO_AUTH_TOKEN": "t"}, "TWILIO_ACME_ACCOUNT_SID is not set"),
    ]:
        with pytest.raises(SettingsError, match=fragment) as err:
            account_credentials("Acme Offers", "acme", env)
        assert "\n" not in str(err.value) and "ACnope" not in str(err.value)
    # Only a channel's named account set: not sandbox mode (the CLI prints no sandbox notice).
    assert not load_settings({"TWILIO_ACME_ACCOUNT_SID": SUB_SID, "TWILIO_ACME_AUTH_TOKEN": "t"}).sandbox_mode
    assert load_settings({}).sandbox_mode


def test_tables_of_an_earlier_release_get_the_account_column_on_open_and_keep_their_opt_outs(tmp_path, log):
    from twilio_pipeline.channels import Channel
    from twilio_pipeline.dates import utcnow

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Database(url)
    t = old.tables
    with old.begin() as conn:
        conn.execute(t.suppression.insert().values(PhoneNumber=X, ActivityDate=utcnow(), TwilioNumber=SENDER,
                                                   Activity="STOP"))
        for table in (t.suppression, t.inbound):
            conn.exec_driver_sql(f'ALTER TABLE "{table.name}" DROP COLUMN "Account"')
    old.dispose()
    reopened = Database(url)
    try:
        assert {f"column {name}.Account" for name in (t.suppression.name, t.inbound.name)} <= set(reopened.upgraded)
        assert suppressed(reopened, Channel(name="Old", from_number=SENDER)) == {X}  # the deployment's own account
        assert suppressed(reopened, Channel(name="New", from_number=SENDER, account="acme")) == set()
    finally:
        reopened.dispose()
