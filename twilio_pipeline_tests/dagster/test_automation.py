"""The queue listener, follow-ups and stale-run recovery: what decides that a send starts, once."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from twilio_pipeline.audience import create_execution
from twilio_pipeline.channels import parse_channels
from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.db.database import HOST
from twilio_pipeline.definitions import defs
from twilio_pipeline.defs.partitions import EXECUTION_TAG, HOST_TAG, PID_TAG, execution_partitions
from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
from twilio_pipeline.defs.sensors import queue_listener
from twilio_pipeline.defs.stale_runs import fail_stale_runs
from twilio_pipeline.follow_ups import create_follow_ups
from twilio_pipeline.logs import ListLog

CHANNEL = "Demo SMS Channel"


@pytest.fixture
def resources(db_url, tmp_path):
    prefix = f"s{os.getpid()}_{abs(hash(str(tmp_path))) % 10**6}_"
    database = DatabaseResource(url=db_url, table_prefix=prefix)
    twilio = TwilioResource(channels_path=str(tmp_path / "unused.yaml"), data_dir=str(tmp_path))
    yield {"database": database, "twilio": twilio}
    database.get_database().dispose()


def _tick(instance, resources, cursor=None, sensor=queue_listener):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor(context)


def test_queue_listener_requests_ready_due_executions_once(resources):
    db: Database = resources["database"].get_database()
    create_execution(db, 1, CHANNEL, "hi", [(1, "+14155550100", None)])
    create_execution(db, 2, CHANNEL, "later", [(1, "+14155550100", None)], send_after=utcnow() + timedelta(hours=1))
    create_execution(db, 3, CHANNEL, "done", [(1, "+14155550100", None)], status="sent")
    with dg.instance_for_test() as instance:
        result = _tick(instance, resources)
        assert [r.partition_key for r in result.run_requests] == ["1"]
        assert result.run_requests[0].run_key == "send-execution-1"
        assert result.dynamic_partitions_requests[0].partition_keys == ["1"]
        # The daemon launches the run; the next tick (cursor kept or lost) requests nothing more.
        instance.add_dynamic_partitions(execution_partitions.name, ["1"])
        instance.create_run_for_job(defs.resolve_job_def("outbound_job"), tags={EXECUTION_TAG: "1"},
                                    status=dg.DagsterRunStatus.STARTED)
        assert isinstance(_tick(instance, resources, cursor=result.cursor), dg.SkipReason)
        assert isinstance(_tick(instance, resources, cursor=None), dg.SkipReason)
        # SendAfter passes: execution 2 becomes due, even though its ID is above the cursor's or not.
        ex = db.tables.executions
        with db.begin() as conn:
            conn.execute(ex.update().where(ex.c.ChannelExecutionID == 2).values(SendAfter=utcnow() - timedelta(seconds=1)))
        later = _tick(instance, resources, cursor=result.cursor)
        assert [r.partition_key for r in later.run_requests] == ["2"]


def _seed_reply(db: Database, sid: str, number: str, keyword: str, execution_id: int, contact: int,
                sent: bool = True):
    t = db.tables
    now = utcnow()
    with db.begin() as conn:
        if sent:
            conn.execute(t.ledger.insert().values(ChannelExecutionID=execution_id, RPContactID=contact, IsSeed=False,
                                                  ToNumber=number, Outcome="sent", MessageSID="SM" + sid[2:],
                                                  AttemptedAt=now - timedelta(minutes=5), UpdatedAt=now))
        conn.execute(t.inbound.insert().values(MessageSID=sid, FromNumber=number, ToNumber="+15005550006",
                                               Body=keyword.lower(), Keyword=keyword, DateSent=now, ParsedAt=now))


def test_follow_up_is_created_once_per_reply_with_a_negative_id(db):
    channel = parse_channels({"channels": [{"name": CHANNEL, "from_number": "+15005550006", "keywords": ["MORE"],
                                            "follow_ups": {"MORE": {"body": "More for {{FirstName}}"}}}]}).channels[0]
    create_execution(db, 10, CHANNEL, "Hi {{FirstName}}", [(7, "+14155550100", {"FirstName": "Ada"}),
                                                           (8, "+14155550101", {"FirstName": "Alan"})])
    _seed_reply(db, "SM" + "1" * 32, "+14155550100", "MORE", 10, 7)
    _seed_reply(db, "SM" + "2" * 32, "+14155550101", "HELP", 10, 8)  # HELP names no follow-up here

    created = create_follow_ups(db, channel, log=ListLog())
    assert created == [-1]
    assert create_follow_ups(db, channel, log=ListLog()) == []  # the same reply is never followed up twice
    oh, ex = db.tables.offer_history, db.tables.executions
    with db.connect() as conn:
        rows = conn.execute(sa.select(oh.c.RPContactID, oh.c.AddressKey, oh.c.Attributes)
                            .where(oh.c.ChannelExecutionID == -1)).all()
        status = conn.execute(sa.select(ex.c.Status, ex.c.MessageBody).where(ex.c.ChannelExecutionID == -1)).one()
    assert [(r.RPContactID, r.AddressKey) for r in rows] == [(7, "+14155550100")]
    assert "Ada" in rows[0].Attributes
    assert status == ("ready", "More for {{FirstName}}")
    # A second MORE reply from someone else later makes the next follow-up execution, -2.
    _seed_reply(db, "SM" + "3" * 32, "+14155550101", "MORE", 10, 8, sent=False)
    assert create_follow_ups(db, channel, log=ListLog()) == [-2]


@pytest.mark.slow
def test_a_killed_cli_run_is_marked_failed_and_frees_its_pool_slots():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with dg.instance_for_test() as instance:
        instance.event_log_storage.set_concurrency_slots("twilio_api", 1)
        job = defs.resolve_job_def("outbound_job")
        run = instance.create_run_for_job(job, tags={HOST_TAG: HOST, PID_TAG: str(dead.pid)},
                                          status=dg.DagsterRunStatus.STARTED)
        live = instance.create_run_for_job(job, tags={HOST_TAG: HOST, PID_TAG: str(os.getpid())},
                                           status=dg.DagsterRunStatus.STARTED)
        claim = instance.event_log_storage.claim_concurrency_slot("twilio_api", run.run_id, "send")
        assert claim.is_claimed
        assert fail_stale_runs(instance) == [run.run_id]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.STARTED
        assert instance.event_log_storage.get_concurrency_info("twilio_api").active_slot_count == 0


@pytest.mark.slow
def test_a_run_marked_failed_whose_slot_was_never_freed_gets_it_back():
    """The next CLI run can itself be killed while it cleans up after a dead one. Whatever the moment, no
    slot stays held: here a dead run already marked FAILURE still holds its slot (the window an earlier
    version had between marking and freeing), and the next cleanup frees it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with dg.instance_for_test() as instance:
        instance.event_log_storage.set_concurrency_slots("twilio_api", 2)
        job = defs.resolve_job_def("outbound_job")
        run = instance.create_run_for_job(job, tags={HOST_TAG: HOST, PID_TAG: str(dead.pid)},
                                          status=dg.DagsterRunStatus.STARTED)
        live = instance.create_run_for_job(job, tags={HOST_TAG: HOST, PID_TAG: str(os.getpid())},
                                           status=dg.DagsterRunStatus.STARTED)
        assert instance.event_log_storage.claim_concurrency_slot("twilio_api", run.run_id, "send").is_claimed
        assert instance.event_log_storage.claim_concurrency_slot("twilio_api", live.run_id, "send").is_claimed
        instance.report_run_failed(run, message="marked by a cleanup that was killed before it freed the slot")
        assert fail_stale_runs(instance) == []  # nothing left to mark ...
        info = instance.event_log_storage.get_concurrency_info("twilio_api")
        assert [slot.run_id for slot in info.claimed_slots] == [live.run_id]  # ... but its slot is back


TWO_CHANNELS = """channels:
  - name: Channel A
    from_number: "+15005550006"
  - name: Channel B
    from_number: "+15005550007"
"""


def _track(db: Database, execution_id: int) -> None:
    """A message of the execution still tracked in Twilio_MessageIDs: the execution has something to sync."""
    with db.begin() as conn:
        conn.execute(db.tables.message_ids.insert().values(
            MessageID=f"SM{execution_id:032d}", RPContactID=1, ChannelExecutionID=execution_id,
            Sender="+15005550006", ToNumber="+14155550100", SentAt=utcnow(), LastStatus="sent"))


def test_the_chain_syncs_many_executions_of_several_channels_in_one_run_that_leaves_the_rest_alone(
        db_url, tmp_path):
    """Executions of two channels interleave in the partition list, with others between them that have
    nothing to sync (one still `ready`, without recipients yet): one run syncs them all, as a backfill run
    of the sync assets would, and the partitions it covers without syncing are left as they were."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from twilio_pipeline.defs.inbound import INBOUND_ASSETS
    from twilio_pipeline.defs.sensors import execution_sync_chain
    from twilio_pipeline.defs.sync_selection import SYNC_EXECUTIONS_TAG
    from twilio_pipeline.outbound.execution import read_execution

    (tmp_path / "channels.yaml").write_text(TWO_CHANNELS)
    prefix = f"c{os.getpid()}_{abs(hash(str(tmp_path))) % 10**6}_"
    resources = {"database": DatabaseResource(url=db_url, table_prefix=prefix),
                 "twilio": TwilioResource(channels_path=str(tmp_path / "channels.yaml"), data_dir=str(tmp_path))}
    db: Database = resources["database"].get_database()
    contact = [(1, "+14155550100", None)]
    create_execution(db, 31, "Channel A", "hi", contact, status="sent")
    create_execution(db, 32, "Channel B", "hi", contact, status="sent")
    create_execution(db, 33, "Channel A", "hi", [])  # ready, its recipients not loaded yet
    create_execution(db, 34, "Channel A", "hi", contact, status="sent")
    create_execution(db, 35, "Channel B", "hi", contact, status="sent")  # nothing tracked: nothing to sync
    create_execution(db, 36, "Channel B", "hi", contact, status="sent")
    for eid in (31, 32, 34, 36):
        _track(db, eid)
    try:
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(execution_partitions.name, [str(i) for i in range(31, 37)])
            instance.create_run_for_job(defs.resolve_job_def("channel_sync_job"), status=dg.DagsterRunStatus.SUCCESS)
            result = _tick(instance, resources, sensor=execution_sync_chain)
            [request] = result.run_requests
            assert (request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]) == \
                ("31", "36")
            assert request.tags[SYNC_EXECUTIONS_TAG] == "31,32,34,36"
            assert "twilio_pipeline/channel" not in request.tags  # two channels in one run

            # The run as the queue runs it (its statuses fetched elsewhere: nothing left to ask Twilio).
            with db.begin() as conn:
                conn.execute(db.tables.message_ids.delete())
            run = dg.materialize(INBOUND_ASSETS, selection=["status_fetch", "state_bulk_load", "aggregate_results"],
                                 instance=instance, resources=resources, tags=request.tags)
            assert run.success
            messages = [e.message for e in instance.all_logs(run.run_id)]
            assert any("2 partitions of this range left alone (nothing to sync when the run was requested); "
                       "syncing 31, 32, 34, 36" in m for m in messages), messages
        untouched = read_execution(db, 33)
        assert (untouched.status, untouched.status_reason) == ("ready", None)  # not read as a bad execution
    finally:
        db.dispose()
