"""The execution lease: a second live run fails fast naming the holder; dead or expired holders block
nobody; the heartbeat keeps a long send's lease."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest

from twilio_pipeline.db import utcnow
from twilio_pipeline.db.database import HOST
from twilio_pipeline.outbound import ExecutionBusy, busy_holder, execution_lease


def _plant(db, owner: str, host: str, pid: int, expires_in_s: float) -> None:
    now = utcnow()
    with db.begin() as conn:
        conn.execute(db.tables.leases.insert().values(
            LeaseKey="outbound:3", Owner=owner, Host=host, Pid=pid, AcquiredAt=now,
            ExpiresAt=now + timedelta(seconds=expires_in_s)))


def test_second_live_run_fails_fast_naming_the_holder(db):
    with execution_lease(db, 3, "run-A") as lease:
        with pytest.raises(ExecutionBusy) as info:
            with execution_lease(db, 3, "run-B"):
                pass
        assert info.value.holder.owner == "run-A"
        assert "execution 3 is being sent by run run-A" in str(info.value)
        assert busy_holder(db, 3).owner == "run-A"
        with execution_lease(db, 3, "run-A") as inner:  # re-entrant for the same run
            assert inner is lease
        assert db.lease_holder("outbound:3").owner == "run-A"
    assert db.lease_holder("outbound:3") is None and busy_holder(db, 3) is None


def test_dead_local_holder_is_reclaimed_at_once(db):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant(db, "killed-run", HOST, dead.pid, 60)
    assert busy_holder(db, 3) is None
    with execution_lease(db, 3, "run-B"):
        assert db.lease_holder("outbound:3").owner == "run-B"


def test_remote_holder_blocks_until_its_lease_expires(db):
    _plant(db, "remote-run", "some-other-host", 1, 60)
    with pytest.raises(ExecutionBusy, match="remote-run"):
        with execution_lease(db, 3, "run-B"):
            pass
    with db.begin() as conn:
        conn.execute(db.tables.leases.delete())
    _plant(db, "remote-run", "some-other-host", 1, -1)  # its heartbeat stopped over a TTL ago
    with execution_lease(db, 3, "run-B"):
        pass


def test_heartbeat_renews_the_lease(db):
    with execution_lease(db, 3, "run-A", ttl_s=0.6) as lease:
        first = db.lease_holder("outbound:3").expires_at
        time.sleep(1.0)
        assert db.lease_holder("outbound:3").expires_at > first
        assert not lease.lost.is_set()
        lease.check()
