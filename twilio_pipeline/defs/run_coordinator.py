"""The run queue's entry: every run about one execution carries its execution and channel tags, however it
was launched (UI materialize, backfill, sensor, schedule, GraphQL), so the one-run-per-execution tag limit and
run filters hold; a partition key that names no execution is refused before the run is queued.

Every launch that is not in-process (webserver, sensor and backfill daemons) goes through the instance's
run coordinator's `submit_run`; the CLI runs in-process and tags its runs itself (`runner.py`). The
execution is read through the same settings and environment as the code location
(TWILIO_PIPELINE_DATABASE_URL, ...): the webserver and the daemon need them too.
"""

from __future__ import annotations

from contextlib import suppress

import dagster as dg
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    BACKFILL_ID_TAG,
    PARTITION_NAME_TAG,
)

from twilio_pipeline.defs.partitions import CHANNEL_TAG, EXECUTION_TAG, TWILIO_POOL, execution_partitions


class RunRefused(Exception):
    """A run that must not be queued; the message is the one line the UI shows."""


def execution_tags(instance: dg.DagsterInstance, run: dg.DagsterRun, lookup) -> dict[str, str]:
    """The tags a run about one execution lacks ({} for any other run); RunRefused when its partition
    names no execution. `lookup(execution_id)` returns the execution's channel name or None."""
    key = run.tags.get(PARTITION_NAME_TAG)
    if key is None and ASSET_PARTITION_RANGE_START_TAG in run.tags:
        return _range_tags(instance, run, lookup)
    if key is None or (EXECUTION_TAG in run.tags and CHANNEL_TAG in run.tags):
        return {}
    if not instance.has_dynamic_partition(execution_partitions.name, key):
        return {}  # a partition of another code location's assets
    channel = lookup(int(key)) if key.lstrip("-").isdigit() else None
    if channel is None:
        raise RunRefused(f"Partition {key!r} names no execution in SMS_ChannelExecutions (a partition key is a "
                         "ChannelExecutionID): run refused")
    return {EXECUTION_TAG: key, CHANNEL_TAG: channel}


def _range_tags(instance: dg.DagsterInstance, run: dg.DagsterRun, lookup) -> dict[str, str]:
    """A run over a range of executions (a backfill with its backfill policy) gets the channel tag when all
    of them are of one channel; an execution in it that cannot be synced is skipped by the run itself."""
    if CHANNEL_TAG in run.tags:
        return {}
    keys = list(instance.get_dynamic_partitions(execution_partitions.name))
    start, end = run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start not in keys or end not in keys:
        return {}
    selected = keys[keys.index(start):keys.index(end) + 1]
    channels = {lookup(int(k)) for k in selected if k.lstrip("-").isdigit()} - {None}
    return {CHANNEL_TAG: channels.pop()} if len(channels) == 1 else {}


def _lookup_channel(execution_id: int) -> str | None:
    from twilio_pipeline.defs.resources import shared_database
    from twilio_pipeline.outbound.execution import read_execution
    from twilio_pipeline.settings import load_settings

    settings = load_settings()
    row = read_execution(shared_database(settings.database_url, settings.db_schema, settings.table_prefix),
                         execution_id)
    return row.channel_name if row else None


def _drop_bogus_partition(instance: dg.DagsterInstance, key: str) -> None:
    """A key added by hand that names no execution would stay in the partition list, red; it goes, unless
    the database looks empty (a process pointed at the wrong database must not prune real partitions)."""
    import sqlalchemy as sa

    from twilio_pipeline.defs.resources import shared_database
    from twilio_pipeline.settings import load_settings

    settings = load_settings()
    db = shared_database(settings.database_url, settings.db_schema, settings.table_prefix)
    with db.connect() as conn:
        has_executions = conn.execute(sa.select(sa.literal(1)).select_from(db.tables.executions).limit(1)).first()
    if has_executions:
        instance.delete_dynamic_partition(execution_partitions.name, key)


class ExecutionRunCoordinator(QueuedRunCoordinator):
    """QueuedRunCoordinator that tags runs about one execution before they are queued."""

    _pool_ready = False

    def _ensure_pool_limit(self) -> None:
        """The run queue blocks pool-limited runs only for pools it knows; a pool is known after its first
        step claimed a slot, so on a fresh instance a burst of runs all started at once. Set it up first."""
        if self._pool_ready:
            return
        storage = self._instance.event_log_storage
        if (self._instance.global_op_concurrency_default_limit is not None
                and TWILIO_POOL not in storage.get_concurrency_keys()):
            storage.initialize_concurrency_limit_to_default(TWILIO_POOL)
        self._pool_ready = True

    def submit_run(self, context: SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        self._ensure_pool_limit()
        try:
            tags = execution_tags(self._instance, run, _lookup_channel)
        except RunRefused:
            if BACKFILL_ID_TAG in run.tags:
                # The backfill daemon stops a whole backfill on a submit error: this one run is queued and
                # fails on its own with the same line (the asset finds no execution), the others go on.
                return super().submit_run(context)
            with suppress(Exception):  # best effort: the refusal is what the user must see
                _drop_bogus_partition(self._instance, run.tags[PARTITION_NAME_TAG])
            raise
        except Exception as exc:  # the database unreachable or misconfigured: say so in one line
            what = run.tags.get(PARTITION_NAME_TAG) or run.tags.get(ASSET_PARTITION_RANGE_START_TAG)
            raise RunRefused(f"Could not look up execution {what!r} before queueing "
                             f"the run: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        if tags:
            self._instance.add_run_tags(run.run_id, tags)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = SubmitRunContext(run, context.workspace)
        return super().submit_run(context)
