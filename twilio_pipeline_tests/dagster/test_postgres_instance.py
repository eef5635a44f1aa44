"""Production shape on one machine: Dagster instance storage on the real PostgreSQL server
(dagster-postgres), the multiprocess executor (each step its own process), a send and a sync."""

from __future__ import annotations

import os
import uuid

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import Database
from twilio_pipeline.db.database import normalise_url
from twilio_pipeline.sandbox.process import SandboxProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
CHANNEL = "PG Channel"


def outbound_job():
    from twilio_pipeline.definitions import defs

    return defs.resolve_job_def("outbound_job")


def execution_sync_job():
    from twilio_pipeline.definitions import defs

    return defs.resolve_job_def("execution_sync_job")


@pytest.fixture
def pg_instance_home(postgres_url, tmp_path):
    """A DAGSTER_HOME whose instance storage is its own database on the PostgreSQL server."""
    server = normalise_url(postgres_url)
    name = f"tp_dagster_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "telemetry": {"enabled": False},
        "storage": {"postgres": {"postgres_db": {
            "hostname": server.host or "127.0.0.1", "port": server.port or 5432,
            "username": server.username or "postgres", "password": server.password or "", "db_name": name}}},
        "concurrency": {"pools": {"default_limit": 4}},
    }))
    yield home
    with admin.connect() as conn:
        conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin.dispose()


def test_send_and_sync_on_postgres_instance_storage_with_the_multiprocess_executor(
        pg_instance_home, postgres_url, tmp_path, monkeypatch):
    channels = tmp_path / "channels.yaml"
    channels.write_text(yaml.safe_dump({"channels": [{"name": CHANNEL, "from_number": "+15005550006"}]}))
    prefix = f"pg{uuid.uuid4().hex[:6]}_"
    with SandboxProcess(tmp_path / "sandbox", status_delay_ms=20) as sb:
        env = {"DAGSTER_HOME": str(pg_instance_home), "TWILIO_PIPELINE_DATABASE_URL": postgres_url,
               "TWILIO_PIPELINE_TABLE_PREFIX": prefix, "TWILIO_PIPELINE_CHANNELS": str(channels),
               "TWILIO_ACCOUNT_SID": sb.account_sid, "TWILIO_AUTH_TOKEN": sb.auth_token,
               "TWILIO_API_BASE_URL": sb.base_url, "TWILIO_BULKEXPORTS_BASE_URL": sb.base_url,
               "TWILIO_MESSAGING_BASE_URL": sb.base_url}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        db = Database(postgres_url, prefix=prefix)
        create_execution(db, 9001, CHANNEL, "Hello {{FirstName}}",
                         [(i, f"+1415555{i:04d}", {"FirstName": "Ada"}) for i in range(1, 51)])
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            instance.add_dynamic_partitions("channel_executions", ["9001"])
            send = dg.execute_job(dg.reconstructable(outbound_job), instance, tags={"dagster/partition": "9001"})
            assert send.success
            step_pids = {e.pid for e in send.all_events if e.is_step_start}
            assert len(step_pids) == 4 and os.getpid() not in step_pids  # one process per step
            sb.advance_clock(60)
            sync = dg.execute_job(dg.reconstructable(execution_sync_job), instance, tags={"dagster/partition": "9001"})
            assert sync.success
        results = db.read_results(9001)
        assert results["Sent"] == 50
        assert sum(v for k, v in results.items() if k.startswith("Status:")) == 50
        db.dispose()
