"""Staging tables of workers on other hosts (celery workers, run workers on several machines): a dead
worker's table is cleaned up from any host, a live worker's never, however long it runs."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import sqlalchemy as sa

from twilio_pipeline.db import database as dbmod
from twilio_pipeline.db import utcnow


def _register(db, name: str, host: str, pid: int, created, heartbeat) -> sa.Table:
    table = sa.Table(name, sa.MetaData(schema=db.schema), sa.Column("x", sa.Integer))
    reg = db.tables.staging_registry
    with db.begin() as conn:
        conn.execute(reg.insert().values(TableName=name, Host=host, Pid=pid, CreatedAt=created,
                                         HeartbeatAt=heartbeat))
        table.create(conn)
    return table


def test_a_dead_workers_table_on_another_host_is_dropped_and_a_live_ones_is_kept(db):
    now = utcnow()
    # The pid of this very process: on another host it says nothing, only the heartbeat does.
    dead = _register(db, f"{db.prefix}stg_dead_x", "other-host", os.getpid(), now - timedelta(minutes=30),
                     now - dbmod.STAGING_STALE_AFTER - timedelta(minutes=1))
    live = _register(db, f"{db.prefix}stg_live_x", "other-host", os.getpid(), now - timedelta(minutes=30),
                     now - timedelta(seconds=20))
    # A long send on this host: created hours ago (the old 6-hour rule dropped it), heartbeat fresh.
    long = _register(db, f"{db.prefix}stg_long_x", dbmod.HOST, os.getpid(), now - timedelta(hours=7), now)
    assert db.drop_orphan_staging() == [dead.name]
    names = set(sa.inspect(db.engine).get_table_names(schema=db.schema))
    assert dead.name not in names and {live.name, long.name} <= names
    assert sorted(db.staging_tables()) == sorted([live.name, long.name])


def test_a_staging_table_in_use_keeps_its_heartbeat_fresh(db, monkeypatch):
    monkeypatch.setattr(dbmod, "STAGING_HEARTBEAT_S", 0.2)
    reg = db.tables.staging_registry
    with db.staging_table("beat", [sa.Column("x", sa.Integer)]) as table:
        with db.engine.connect() as conn:
            first = conn.execute(sa.select(reg.c.HeartbeatAt).where(reg.c.TableName == table.name)).scalar_one()
        deadline = time.monotonic() + 20
        while True:
            with db.engine.connect() as conn:
                latest = conn.execute(sa.select(reg.c.HeartbeatAt).where(reg.c.TableName == table.name)).scalar_one()
            if latest > first:
                break
            assert time.monotonic() < deadline, "the heartbeat was never renewed"
            time.sleep(0.1)
        # a table in use is never an orphan, whoever looks
        assert db.drop_orphan_staging() == []
    assert table.name not in db.staging_tables()
