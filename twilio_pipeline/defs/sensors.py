"""Sensors: the queue listener (send executions that became ready) and the sync chain (after the
channel-level sync, the execution level for every eligible execution)."""


import dagster as dg

from twilio_pipeline.defs.jobs import channel_sync_job, execution_sync_job, outbound_job
from twilio_pipeline.defs.partitions import (
    CHANNEL_TAG,
    EXECUTION_TAG,
    MODE_TAG,
    execution_partitions,
)
from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
from twilio_pipeline.queue import ready_executions

TICK_LIMIT = 50  # executions per tick: a tick stays far below the 60 s sensor timeout


def _has_run(instance: dg.DagsterInstance, execution_id: int) -> bool:
    return bool(instance.get_run_records(filters=dg.RunsFilter(tags={EXECUTION_TAG: str(execution_id)}), limit=1))


@dg.sensor(job=outbound_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Queue listener: each execution with Status 'ready' whose SendAfter has passed gets its "
                       "partition and one outbound run. The run key is the execution ID, so a lost cursor never "
                       "launches an execution twice; the database status decides what is ready.")
def queue_listener(context: dg.SensorEvaluationContext, database: DatabaseResource, twilio: TwilioResource):
    db = database.get_database()
    ready = ready_executions(db, limit=TICK_LIMIT)
    if not ready:
        return dg.SkipReason("no execution is ready to send")
    # An execution that already has a run (queued, running, or one that failed before marking it) is left
    # to that run or to a person: the sensor never launches a second send of it, whatever its cursor.
    ready = [(eid, channel) for eid, channel in ready if not _has_run(context.instance, eid)]
    if not ready:
        return dg.SkipReason("every ready execution already has a run")
    keys = [str(eid) for eid, _ in ready]
    known = set(context.instance.get_dynamic_partitions(execution_partitions.name))
    new_keys = [k for k in keys if k not in known]
    requests = [
        dg.RunRequest(run_key=f"send-execution-{eid}", partition_key=str(eid),
                      tags={EXECUTION_TAG: str(eid), CHANNEL_TAG: channel, MODE_TAG: twilio.mode_tag})
        for eid, channel in ready
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[execution_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=str(max(eid for eid, _ in ready)),
    )


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[channel_sync_job],
                      request_job=execution_sync_job, default_status=dg.DefaultSensorStatus.RUNNING,
                      description="After a channel-level sync succeeds, run the execution level for every "
                                  "eligible execution (tracked SIDs or replies to attribute).")
def execution_sync_chain(context: dg.RunStatusSensorContext):
    from twilio_pipeline.defs.resources import build_resources
    from twilio_pipeline.inbound import eligible_executions

    resources = build_resources()
    db = resources["database"].get_database()
    channels = resources["twilio"].get_channels()
    known = set(context.instance.get_dynamic_partitions(execution_partitions.name))
    run_id = context.dagster_run.run_id
    requests = []
    for channel in channels.channels:
        for eid in eligible_executions(db, channel, limit_records=channel.records_per_sync):
            if str(eid) in known:
                requests.append(dg.RunRequest(run_key=f"{run_id}-{eid}", partition_key=str(eid),
                                              tags={EXECUTION_TAG: str(eid), CHANNEL_TAG: channel.name}))
    return requests or dg.SkipReason("no execution has anything to sync")
