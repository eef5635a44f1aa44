"""Sensors: the queue listener (send executions that became ready) and the sync chain (after a
channel-level sync, the execution level for every eligible execution). Both get the database and the
channel file through Dagster's resource system, so an EnvVar is resolved as it is for a run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from twilio_pipeline.defs.automation import default_sensor_status
from twilio_pipeline.defs.jobs import channel_sync_job, execution_sync_job, outbound_job
from twilio_pipeline.defs.partition_order import ordered_add_requests
from twilio_pipeline.defs.partitions import (
    CHANNEL_TAG,
    EXECUTION_TAG,
    MODE_TAG,
    execution_partitions,
)
from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
from twilio_pipeline.defs.sync_selection import listed_executions
from twilio_pipeline.queue import queue_overview, ready_executions

TICK_LIMIT = 50  # executions per tick: a tick stays far below the 60 s sensor timeout
# How often the queue listener looks: a tick is one indexed query, and every second of it is a second a ready
# execution waits before its run is even queued.
LISTENER_INTERVAL_S = 15
# Executions per execution-sync run, as the sync assets' backfill policy batches a backfill, and the most
# partitions one run's range may cover (those it leaves alone included).
SYNC_BATCH = 10
SYNC_SPAN = 50
CLI_TAG = "twilio_pipeline/cli"


def _last_run(instance: dg.DagsterInstance, execution_id: int) -> dg.DagsterRun | None:
    records = instance.get_run_records(filters=dg.RunsFilter(tags={EXECUTION_TAG: str(execution_id)}), limit=1)
    return records[0].dagster_run if records else None


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _listing(items: list[tuple[int, str | None]], limit: int = 5) -> str:
    shown = ", ".join(f"{eid} ({reason[:100]})" if reason else str(eid) for eid, reason in items[:limit])
    return shown + (", …" if len(items) > limit else "")


def queue_skip_reason(db, with_run: dict[int, dg.DagsterRun]) -> str:
    """What is true of the queue when the listener starts nothing: ready executions whose run is on its way
    or ended without sending them (left to a person), executions waiting for their SendAfter, executions
    that failed (with their reasons)."""
    overview = queue_overview(db)
    parts = []
    active = [eid for eid, run in with_run.items() if not run.is_finished]
    ended = [(eid, f"run {run.run_id[:8]} {run.status.value.lower()}") for eid, run in with_run.items()
             if run.is_finished]
    if active:
        parts.append(f"{_count(len(active), 'ready execution')} with a run queued or in progress: "
                     f"{_listing([(e, None) for e in active])}")
    if ended:
        parts.append(f"{_count(len(ended), 'ready execution')} whose run ended without sending (re-run it or "
                     f"send it from the CLI): {_listing(ended)}")
    if overview.waiting:
        parts.append(f"waiting for SendAfter until {overview.next_send_after:%Y-%m-%dT%H:%MZ}: "
                     f"{_count(overview.waiting, 'execution')}")
    if overview.failed:
        parts.append(f"{_count(overview.failed, 'execution')} failed: {_listing(overview.failed_examples)}")
    return "; ".join(parts) or "no execution is ready to send"


@dg.sensor(job=outbound_job, minimum_interval_seconds=LISTENER_INTERVAL_S, default_status=default_sensor_status(),
           description="Queue listener: each execution with Status 'ready' whose SendAfter has passed gets its "
                       "partition and one outbound run. The run key is the execution ID, so a lost cursor never "
                       "launches an execution twice; the database status decides what is ready.")
def queue_listener(context: dg.SensorEvaluationContext, database: DatabaseResource, twilio: TwilioResource):
    db = database.get_database()
    ready = ready_executions(db, limit=TICK_LIMIT)
    # An execution that already has a run (queued, running, or one that failed before marking it) is left
    # to that run or to a person: the sensor never launches a second send of it, whatever its cursor.
    with_run = {eid: run for eid, _ in ready if (run := _last_run(context.instance, eid)) is not None}
    ready = [(eid, channel) for eid, channel in ready if eid not in with_run]
    if not ready:
        return dg.SkipReason(queue_skip_reason(db, with_run))
    requests = [
        dg.RunRequest(run_key=f"send-execution-{eid}", partition_key=str(eid),
                      tags={EXECUTION_TAG: str(eid), CHANNEL_TAG: channel, MODE_TAG: twilio.mode_tag})
        for eid, channel in ready
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=ordered_add_requests(context.instance, [str(eid) for eid, _ in ready]),
        cursor=str(max(eid for eid, _ in ready)),
    )


def sync_batches(partition_keys: list[str], eligible: dict[int, str], size: int = SYNC_BATCH,
                 span: int = SYNC_SPAN) -> list[list[int]]:
    """Eligible executions grouped for one run each, as the sync assets' backfill policy groups a backfill:
    consecutive in the partition list, at most `size` per run, whatever their channel. The partitions in
    between (other executions with nothing to sync) do not split a batch: the run covers them and leaves them
    alone (sync_selection.py); a batch spans at most `span` partitions."""
    batches: list[list[int]] = []
    current: list[int] = []
    first = 0
    for position, key in enumerate(partition_keys):
        eid = int(key) if key.lstrip("-").isdigit() else None
        if eid is None or eid not in eligible:
            continue
        if current and (len(current) >= size or position - first >= span):
            batches.append(current)
            current = []
        if not current:
            first = position
        current.append(eid)
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class SyncCursor:
    """The channel syncs the chain has followed up: the latest update time and the runs at or just before it.
    Run storage may keep whole seconds, so the next query overlaps by a margin and skips the runs seen."""

    latest: datetime | None = None
    seen: frozenset[str] = frozenset()
    MARGIN = timedelta(seconds=5)

    @classmethod
    def parse(cls, raw: str | None) -> SyncCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(datetime.fromisoformat(data["latest"]), frozenset(data["seen"]))

    @classmethod
    def after(cls, records) -> SyncCursor:
        latest = max(r.update_timestamp for r in records)
        return cls(latest, frozenset(r.dagster_run.run_id for r in records if r.update_timestamp >= latest - cls.MARGIN))

    def query_after(self) -> datetime | None:
        return self.latest - self.MARGIN if self.latest else None

    def serialize(self) -> str:
        return json.dumps({"latest": self.latest.isoformat(), "seen": sorted(self.seen)})


def sync_batch_tags(batch: list[int], eligible: dict[int, str]) -> dict[str, str]:
    """The tags of one batch's run, whoever launches it (the chain, the CLI's sync): the execution when it is
    one, the channel when all share one, and for a range the executions it syncs (sync_selection.py)."""
    channels = {eligible[eid] for eid in batch}
    tags = {CHANNEL_TAG: channels.pop()} if len(channels) == 1 else {}
    if len(batch) == 1:
        return {EXECUTION_TAG: str(batch[0]), **tags}
    return {**listed_executions(batch), **tags}


def _sync_request(batch: list[int], eligible: dict[int, str], after_run: str) -> dg.RunRequest:
    first, last = str(batch[0]), str(batch[-1])
    run_key = f"sync-after-{after_run}-{first}" + (f"..{last}" if len(batch) > 1 else "")
    tags = sync_batch_tags(batch, eligible)
    if len(batch) == 1:
        return dg.RunRequest(run_key=run_key, partition_key=first, tags=tags)
    return dg.RunRequest(run_key=run_key, tags={ASSET_PARTITION_RANGE_START_TAG: first,
                                                ASSET_PARTITION_RANGE_END_TAG: last, **tags})


@dg.sensor(job=execution_sync_job, minimum_interval_seconds=30, default_status=default_sensor_status(),
           description="After a channel-level sync succeeds, run the execution level for every eligible "
                       "execution, up to 10 executions per run (a range of partitions, as a backfill). The cursor "
                       "only moves past a channel sync once a tick has requested its follow-up, and the database "
                       "decides what is eligible, so a failed tick or a missed sync is made up by the next one.")
def execution_sync_chain(context: dg.SensorEvaluationContext, database: DatabaseResource, twilio: TwilioResource):
    from twilio_pipeline.inbound import eligible_executions

    cursor = SyncCursor.parse(context.cursor)
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(job_name=channel_sync_job.name, statuses=[dg.DagsterRunStatus.SUCCESS],
                              updated_after=cursor.query_after()),
        order_by="update_timestamp", ascending=False, limit=100)
    new = [r for r in records if r.dagster_run.run_id not in cursor.seen]
    if not new:
        return dg.SkipReason("no channel sync has succeeded since the last tick")
    next_cursor = SyncCursor.after(records).serialize()
    # The CLI's `sync` runs its execution syncs itself.
    launched = [r for r in new if r.dagster_run.tags.get(CLI_TAG) != "1"]
    if not launched:
        return dg.SensorResult(skip_reason="the channel syncs since the last tick came from the CLI, which "
                                           "syncs the executions itself", cursor=next_cursor)
    db = database.get_database()
    eligible: dict[int, str] = {}
    for channel in twilio.get_channels().channels:
        for eid in eligible_executions(db, channel, limit_records=channel.records_per_sync):
            eligible[eid] = channel.name
    keys = context.instance.get_dynamic_partitions(execution_partitions.name)
    batches = sync_batches(keys, eligible)
    after_run = launched[0].dagster_run.run_id
    requests = [_sync_request(batch, eligible, after_run) for batch in batches]
    if not requests:
        return dg.SensorResult(skip_reason="no execution has anything to sync", cursor=next_cursor)
    return dg.SensorResult(run_requests=requests, cursor=next_cursor)
