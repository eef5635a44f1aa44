"""Send crash safety: a real `twilio-pipeline send` of 5,000 recipients, SIGKILLed at 10 seeded random
moments and re-run until it completes, never texts anyone twice and never skips anyone.

The sandbox answers in 20 ms and 2 % of its requests with a 500 *after* creating the message
(`fault_after_create=1`), so besides the kills' own window (Twilio accepted, the SID not yet committed)
there are always ambiguous rows waiting for reconciliation when a kill lands. Every SID that Twilio
accepted while the ledger did not know it must end up adopted by its recipient, not re-sent. The
shipped dagster.yaml (its `twilio_api` pool of 4 slots) is used as is: 10 killed runs that kept their
slots or their lease would stall the next run, which must finish in time instead.
"""

from __future__ import annotations

import random
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from twilio_pipeline.audience import create_execution
from twilio_pipeline.defs.partitions import PID_TAG
from twilio_pipeline_tests.reliability.conftest import (
    REFUSED,
    assert_identities,
    assert_no_traceback,
    assert_sid_by_sid,
    channel,
    ledger,
    mixed_audience,
    outbound_messages,
)

EXECUTION = 1
CONTACTS = 5000
KILLS = 10
SEED = 20261129


def _accepted_not_committed(db, sb) -> dict[str, str]:
    """SIDs the sandbox created whose recipient's ledger row does not carry them (yet): SID -> To."""
    led = db.tables.ledger
    with db.connect() as conn:
        known = {r[0] for r in conn.execute(sa.select(led.c.MessageSID).where(led.c.MessageSID.is_not(None)))}
    return {m["sid"]: m["to"] for m in outbound_messages(sb) if m["sid"] not in known}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_send_killed_ten_times_texts_every_eligible_recipient_exactly_once(make_sandbox, make_cli):
    sb = make_sandbox(latency_ms=20, fault_500_rate=0.02, fault_after_create=1.0, seed=5)
    cli = make_cli(sb, [channel("Crash SMS", max_concurrency=20)])
    audience = mixed_audience(sb, CONTACTS, SEED)
    eligible = audience.eligible
    create_execution(cli.db, EXECUTION, "Crash SMS", "Hi {{FirstName}}, your offer is ready", audience.contacts)

    rng = random.Random(SEED)
    killed_pids: list[int] = []
    in_doubt: dict[str, str] = {}  # accepted by Twilio while the ledger did not know the SID, at a kill
    moments = []
    for i in range(KILLS):
        run = cli.start("send", str(EXECUTION))
        if i % 2 == 0:  # while sending: after a random number of further messages reached Twilio
            target = sb.stats()["messages_outbound"] + rng.randint(80, 450)
            moment = f"after message {target}"
            while run.alive() and sb.stats()["messages_outbound"] < target:
                assert time.monotonic() - run.started < 180, "the send never got going (a stalled run?)"
                time.sleep(0.03)
        else:  # anywhere: start-up, suppression refresh, plan, reconciliation, send or commit
            delay = rng.uniform(1.0, 13.0)
            moment = f"after {delay:.1f} s"
            while run.alive() and time.monotonic() - run.started < delay:
                time.sleep(0.02)
        finished_first = not run.alive()
        run.kill()
        result = run.result()
        assert_no_traceback(result.output)
        assert result.returncode == (0 if finished_first else -9), result.describe()
        assert "being sent by run" not in result.output, f"a killed run's lease blocked the next:\n{result.describe()}"
        killed_pids.append(run.pid)
        doubt = _accepted_not_committed(cli.db, sb)
        in_doubt.update(doubt)
        moments.append((moment, len(doubt)))
        # Whatever the moment, the ledger never holds a SID Twilio does not have.
        sids = {m["sid"] for m in outbound_messages(sb)}
        assert {r["MessageSID"] for r in ledger(cli.db, EXECUTION) if r["MessageSID"]} <= sids

    assert any(n for _, n in moments), f"no kill landed between 'accepted' and 'SID committed': {moments}"
    final = None
    for _ in range(3):
        final = cli.run("send", str(EXECUTION), timeout=240)
        assert_no_traceback(final.output)
        assert final.returncode == 0, final.describe()
        results = cli.db.read_results(EXECUTION)
        if results.get("Unresolved") == 0 and results.get("Pending") == 0:
            break
    results = cli.db.read_results(EXECUTION)
    assert results["Unresolved"] == 0 and results["Pending"] == 0, final.describe()

    sid_of = assert_sid_by_sid(cli.db, sb, EXECUTION, eligible)
    # Accepted-but-uncommitted SIDs were adopted by their recipient; none was sent a second message.
    rid_of_number = {number: rid for rid, number in eligible.items()}
    for sid, to in in_doubt.items():
        assert to in rid_of_number, (sid, to)
        assert sid_of[rid_of_number[to]] == sid, f"{to}: accepted as {sid} during a crash, ledger has another SID"
    rows = {r["RPContactID"]: r for r in ledger(cli.db, EXECUTION)}
    assert {rid: rows[rid]["Outcome"] for rid in audience.expected} == audience.expected
    assert {rid: rows[rid]["ErrorCode"] for rid in audience.refused} == audience.refused
    assert_identities(results)
    assert results["Sent"] == len(eligible)
    assert results["SendFailed"] == len(REFUSED)
    ex = cli.db.tables.executions
    with cli.db.connect() as conn:
        status = conn.execute(sa.select(ex.c.Status).where(ex.c.ChannelExecutionID == EXECUTION)).scalar()
        leases = conn.execute(sa.select(sa.func.count()).select_from(cli.db.tables.leases)).scalar()
    assert status == "sent" and leases == 0
    assert cli.db.staging_tables() == [], "a killed run's staging tables were never dropped"

    # The Dagster instance: every killed run is marked failed and no twilio_api slot is still held.
    with cli.instance() as instance:
        runs = instance.get_runs()
        live = [r.run_id for r in runs if r.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING,
                                                       dg.DagsterRunStatus.NOT_STARTED)]
        assert live == [], f"runs left as if alive: {live}"
        killed = [r for r in runs if int(r.tags.get(PID_TAG, 0)) in killed_pids]
        assert killed and all(r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS) for r in killed)
        info = instance.event_log_storage.get_concurrency_info("twilio_api")
        assert info.active_slot_count == 0 and info.pending_step_count == 0, info
