"""The execution lease: a second live run fails fast naming the holder; dead or expired holders block
nobody; the heartbeat keeps a long send's lease."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from twilio_pipeline.db import utcnow
from twilio_pipeline.db.database import HOST
from twilio_pipeline.outbound import ExecutionBusy, LeaseLost, busy_holder, execution_lease
from twilio_pipeline_tests.polling import wait_until
from twilio_pipeline_tests.stalls import stalled


def _plant(db, owner: str, host: str, pid: int, expires_in_s: float) -> None:
    now = utcnow()
    with db.begin() as conn:
        conn.execute(db.tables.leases.insert().values(
            LeaseKey="outbound:3", Owner=owner, Host=host, Pid=pid, AcquiredAt=now,
            ExpiresAt=now + timedelta(seconds=expires_in_s)))


def test_second_live_run_fails_fast_naming_the_holder(db):
    with execution_lease(db, 3, "run-A") as lease:
        with pytest.raises(ExecutionBusy) as info, execution_lease(db, 3, "run-B"):
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
    with pytest.raises(ExecutionBusy, match="remote-run"), execution_lease(db, 3, "run-B"):
        pass
    with db.begin() as conn:
        conn.execute(db.tables.leases.delete())
    _plant(db, "remote-run", "some-other-host", 1, -1)  # its heartbeat stopped over a TTL ago
    with execution_lease(db, 3, "run-B"):
        pass


def test_heartbeat_renews_the_lease(db):
    with execution_lease(db, 3, "run-A", ttl_s=0.6) as lease:
        first = db.lease_holder("outbound:3").expires_at
        wait_until(lambda: db.lease_holder("outbound:3").expires_at > first, 5, "the heartbeat to renew the lease")
        assert not lease.lost.is_set()
        lease.check()


def test_a_live_holder_on_this_host_is_never_taken_over_even_when_its_row_expired(db):
    """Its heartbeat may be stuck on a stalled database while it still sends: taking over would text twice."""
    _plant(db, "stuck-run", HOST, os.getpid(), -30)
    with pytest.raises(ExecutionBusy, match="stuck-run"), execution_lease(db, 3, "run-B"):
        pass
    assert busy_holder(db, 3).owner == "stuck-run"
    assert db.live_lease_holder("outbound:3").owner == "stuck-run"


def test_every_take_over_raises_the_fencing_token(db):
    token_a, _ = db.take_lease("outbound:3", "run-A", 60)
    with db.begin() as conn:  # run A's host went silent
        conn.execute(db.tables.leases.update().values(Host="some-other-host", ExpiresAt=utcnow() - timedelta(seconds=1)))
    token_b, holder = db.take_lease("outbound:3", "run-B", 60)
    assert holder is None and token_b == token_a + 1
    assert not db.renew_lease("outbound:3", "run-A", 60, token=token_a)
    assert db.renew_lease("outbound:3", "run-B", 60, token=token_b)


def test_a_renewal_that_waited_on_a_lock_expires_from_when_it_was_written(db):
    """Expiry comes from the database's clock at the write, not from a time taken before the wait."""
    assert db.acquire_lease("outbound:3", "run-A", 1.0) is None
    done = threading.Event()
    with stalled(db, db.tables.leases):
        threading.Thread(target=lambda: (db.renew_lease("outbound:3", "run-A", 1.0), done.set()),
                         daemon=True).start()
        time.sleep(1.5)
        assert not done.is_set(), "the renewal did not wait for the lock"
        released = utcnow()
    assert done.wait(10)
    assert db.lease_holder("outbound:3").expires_at >= released + timedelta(seconds=0.9)


def test_a_blocked_heartbeat_stops_requests_before_the_lease_can_expire(db):
    """While renewal hangs on a stalled table, requests stop at half the TTL and the lease counts as lost
    at the TTL - without waiting for the blocked renewal to return."""
    ttl = 1.0
    with execution_lease(db, 3, "run-A", ttl_s=ttl) as lease, stalled(db, db.tables.leases):
        stalled_at = time.monotonic()
        while not lease.lost.is_set():
            assert time.monotonic() - stalled_at < ttl * 1.5, "a blocked heartbeat never lost the lease"
            try:
                lease.check()
            except LeaseLost:
                break
            time.sleep(0.02)
        with pytest.raises(LeaseLost):
            lease.check()
        assert lease.send_deadline <= stalled_at + ttl * 0.5
        assert lease.may_send() is False


def test_a_holder_whose_pid_was_reused_since_it_took_the_lease_is_taken_over(db):
    """A SIGKILLed run whose pid now belongs to a newer process (it started after the lease was taken)
    must not block the execution forever."""
    now = utcnow()
    with db.begin() as conn:
        conn.execute(db.tables.leases.insert().values(
            LeaseKey="outbound:3", Owner="killed-long-ago", Host=HOST, Pid=os.getpid(),
            AcquiredAt=now - timedelta(days=30), ExpiresAt=now - timedelta(days=30)))
    assert busy_holder(db, 3) is None
    with execution_lease(db, 3, "run-B"):
        assert db.lease_holder("outbound:3").owner == "run-B"
