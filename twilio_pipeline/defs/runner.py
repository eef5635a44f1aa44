"""In-process runs of the code location's jobs: the one composition of a whole send (`send_run`) and a whole
sync (`sync_runs`: the channel-level job, then the execution-level job batched as the sync chain sensor
batches it), used by the CLI, the demo, the benchmarks and the tests (`resources` points a run at their own
database and sandbox). The CLI's runs are recorded in the instance of DAGSTER_HOME, with a failure reduced
to one line and mapped to the exit codes of docs/reference.md."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from twilio_pipeline.channels import Channel, ChannelFile
from twilio_pipeline.cli_errors import EXIT_BUSY, EXIT_FAILED, EXIT_INPUT, EXIT_OK, CliError
from twilio_pipeline.db import Database
from twilio_pipeline.db.database import HOST
from twilio_pipeline.defs.cli_logger import one_line_console_logger, user_error
from twilio_pipeline.defs.partition_order import add_in_order
from twilio_pipeline.defs.partitions import (
    CHANNEL_TAG,
    EXECUTION_TAG,
    FULL_WINDOW_TAG,
    HOST_TAG,
    MODE_TAG,
    PID_TAG,
    execution_partitions,
)
from twilio_pipeline.defs.stale_runs import fail_stale_runs
from twilio_pipeline.defs.steps import REPORT
from twilio_pipeline.settings import Settings

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

OUTBOUND_ORDER = ["CountBeforeDedup", "InvalidNumbers", "Duplicates", "Unsubscribed", "NotRendered", "Targeted",
                  "Pending", "Sent", "SendFailed", "Unresolved", "Segments", "EstimatedCost", "SeedsSent",
                  "InvalidSeeds", "UnsubscribedSeeds"]


@dataclass
class RunFailure:
    error_class: str
    message: str
    step: str | None = None


@dataclass
class JobRun:
    """One in-process run of a job: its result and, when it failed, the failing step's error in one line."""

    result: dg.ExecuteInProcessResult
    failure: RunFailure | None

    @property
    def run_id(self) -> str:
        return self.result.run_id

    def metadata(self, node: str) -> dict[str, Any]:
        """The plain values (numbers, text, booleans) of what the step materialized."""
        return {k: v.value for mat in self.result.asset_materializations_for_node(node)
                for k, v in mat.metadata.items() if isinstance(v.value, (int, float, str, bool))}

    def lines(self, node: str) -> list[str]:
        """The step's own summary lines (`report` metadata: the sentences it logged)."""
        report = self.metadata(node).get(REPORT)
        return report.splitlines() if isinstance(report, str) and report else []


@dataclass
class ExecutionSync:
    """One run of the execution-level sync over a batch of executions (of one channel or several)."""

    channels: dict[int, str]  # execution -> its channel
    run: JobRun

    @property
    def execution_ids(self) -> list[int]:
        return list(self.channels)


@dataclass
class SyncRuns:
    """A whole channel sync as production runs it: the channel-level run, then the execution-level runs."""

    channel_run: JobRun
    executions: list[ExecutionSync] = field(default_factory=list)

    @property
    def execution_ids(self) -> list[int]:
        return [eid for part in self.executions for eid in part.execution_ids]


@contextmanager
def _instance_lock() -> Iterator[None]:
    """Serialise opening the instance between CLI processes. On first use Dagster creates its SQLite
    storage (tables, then the alembic stamp) without any lock: of two runs started at once on a fresh
    instance (a double click, a sensor and a manual run), one crashed with "table ... already exists"."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        yield
        return
    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / ".twilio_pipeline_instance.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _instance() -> dg.DagsterInstance:
    with _instance_lock():
        instance = dg.DagsterInstance.get()
    for run_id in fail_stale_runs(instance):
        print(f"Marked stale run {run_id} failed (its process is gone) and freed its slots", flush=True)
    return instance


def _tags(settings: Settings, **extra: str) -> dict[str, str]:
    return {HOST_TAG: HOST, PID_TAG: str(os.getpid()), "twilio_pipeline/cli": "1",
            MODE_TAG: "sandbox" if settings.sandbox_mode else "live", **extra}


def _job(name: str) -> dg.JobDefinition:
    """The job as the UI runs it, logging to the console one line per event (no stacks)."""
    from twilio_pipeline.definitions import defs

    return defs.resolve_job_def(name).with_logger_defs({"console": one_line_console_logger})


def _failure(result) -> RunFailure | None:
    if result.success:
        return None
    for event in result.all_events:
        if event.is_step_failure:
            return RunFailure(*user_error(event.step_failure_data.error), step=event.step_key)
    for event in result.all_events:
        if event.event_type_value == "PIPELINE_FAILURE" and event.message:
            return RunFailure("RunFailure", event.message.splitlines()[0])
    return RunFailure("RunFailure", "the run failed (see the Dagster UI for its log)")


def _ensure_partitions(instance: dg.DagsterInstance, execution_ids: Sequence[int]) -> None:
    keys = [str(e) for e in execution_ids if not instance.has_dynamic_partition(execution_partitions.name, str(e))]
    if not keys:
        return
    try:
        add_in_order(instance, keys)
    except sa.exc.IntegrityError:
        # A run started at the same moment added one first (the partition key is unique).
        missing = [k for k in keys if not instance.has_dynamic_partition(execution_partitions.name, k)]
        if missing:
            add_in_order(instance, missing)


def execute(job_name: str, instance: dg.DagsterInstance, *, partition_keys: Sequence[str] = (),
            run_config: Mapping | None = None, tags: Mapping[str, str] | None = None,
            resources: Mapping[str, object] | None = None) -> JobRun:
    """Run one of the code location's jobs in this process, over one partition or a range of neighbouring
    ones. `resources` replaces the code location's (a test points them at its database and sandbox)."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    run_tags = dict(tags or {})
    partition_key = None
    if len(partition_keys) == 1:
        partition_key = partition_keys[0]
    elif partition_keys:
        run_tags.update({ASSET_PARTITION_RANGE_START_TAG: partition_keys[0],
                         ASSET_PARTITION_RANGE_END_TAG: partition_keys[-1]})
    result = _job(job_name).execute_in_process(
        instance=instance, partition_key=partition_key, run_config={**QUIET_LOGS, **(run_config or {})},
        raise_on_error=False, tags=run_tags, resources=resources)
    return JobRun(result, _failure(result))


def send_run(instance: dg.DagsterInstance, execution_id: int, channel_name: str | None, *,
             tags: Mapping[str, str], force: bool = False, resources: Mapping[str, object] | None = None) -> JobRun:
    """The outbound job for one execution (its partition added first). Without `channel_name` (not checked
    yet) the run's first step tags the channel once it has found it."""
    _ensure_partitions(instance, [execution_id])
    run_tags = {**tags, EXECUTION_TAG: str(execution_id), **({CHANNEL_TAG: channel_name} if channel_name else {})}
    return execute("outbound_job", instance, partition_keys=[str(execution_id)], run_config=_force_config(force),
                   tags=run_tags, resources=resources)


def _force_config(force: bool) -> dict:
    """`--force` as the outbound steps' run config (the same switch a UI user sets)."""
    from twilio_pipeline.defs.outbound import GATED_STEPS

    return {"ops": {name: {"config": {"force": True}} for name in GATED_STEPS}} if force else {}


def _interrupted(db: Database, channel: Channel, execution_id: int, failure: RunFailure) -> str | None:
    """The StatusReason of a run stopped by SIGTERM/SIGINT, or None if it was not interrupted. A signal
    that landed between two steps stops the next one before its code runs: the reason is written here."""
    from twilio_pipeline.defs.outbound import PHASES
    from twilio_pipeline.outbound import read_execution, record_interruption
    from twilio_pipeline.signals import stop_signal

    name = stop_signal()
    if name is None and failure.error_class not in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
        return None
    row = read_execution(db, execution_id)
    if row is not None and row.status == "failed" and (row.status_reason or "").startswith("interrupted"):
        return row.status_reason
    return record_interruption(db, channel, execution_id, cause=name or "an interrupt (SIGINT or SIGTERM)",
                               phase=PHASES.get(failure.step or "", "the run"))


def _now_config(step: str, now: datetime | None) -> dict:
    return {"ops": {step: {"config": {"now": now.isoformat()}}}} if now is not None else {}


def channel_sync_run(instance: dg.DagsterInstance, channel_name: str | None, *, tags: Mapping[str, str],
                     now: datetime | None = None, resources: Mapping[str, object] | None = None) -> JobRun:
    """`channel_sync_job` alone (what the schedule launches): every channel's replies, or one channel's."""
    config = {"ops": {"keyword_parse": {"config": {"channel": channel_name,
                                                   **({"now": now.isoformat()} if now is not None else {})}}}}
    return execute("channel_sync_job", instance, run_config=config, tags=tags, resources=resources)


def sync_runs(instance: dg.DagsterInstance, db: Database, channels: ChannelFile, channel_name: str | None, *,
              tags: Mapping[str, str], now: datetime | None = None,
              resources: Mapping[str, object] | None = None) -> SyncRuns:
    """The channel sync: `channel_sync_job` (replies, keywords, opt-outs, follow-ups), then for every
    execution the database finds eligible `execution_sync_job`, up to 10 executions in one run, as the
    sync chain sensor batches them (sync_batches, sync_batch_tags). `now` stands in for the wall clock (a sandbox whose
    clock was moved on)."""
    from twilio_pipeline.defs.sensors import sync_batch_tags, sync_batches
    from twilio_pipeline.inbound import eligible_executions

    runs = SyncRuns(channel_sync_run(instance, channel_name, tags=tags, now=now, resources=resources))
    if runs.channel_run.failure is not None:
        return runs
    selected = [channels.get(channel_name)] if channel_name else list(channels.channels)
    eligible: dict[int, str] = {}
    for channel in selected:
        for eid in eligible_executions(db, channel, limit_records=channel.records_per_sync):
            eligible.setdefault(eid, channel.name)
    _ensure_partitions(instance, sorted(eligible))
    keys = list(instance.get_dynamic_partitions(execution_partitions.name))
    for batch in sync_batches(keys, eligible):
        run = execute("execution_sync_job", instance, partition_keys=[str(e) for e in batch],
                      run_config=_now_config("status_fetch", now), tags={**tags, **sync_batch_tags(batch, eligible)},
                      resources=resources)
        runs.executions.append(ExecutionSync({eid: eligible[eid] for eid in batch}, run))
    return runs


def backfill_run(instance: dg.DagsterInstance, execution_ids: Sequence[int], *, tags: Mapping[str, str],
                 now: datetime | None = None, resources: Mapping[str, object] | None = None) -> JobRun:
    """The execution-level sync over neighbouring executions re-reading each one's whole window, as a
    backfill launched from the UI runs it."""
    _ensure_partitions(instance, execution_ids)
    return execute("execution_sync_job", instance, partition_keys=[str(e) for e in execution_ids],
                   run_config=_now_config("status_fetch", now), tags={**tags, FULL_WINDOW_TAG: "1"},
                   resources=resources)


def run_send(settings: Settings, db: Database, channel: Channel, execution_id: int,
             say: Callable[[str], None], force: bool = False) -> int:
    """Run the outbound job for an execution the caller has already checked (`load_execution` and
    `send_refusal`, which the CLI calls before Dagster is even imported)."""
    from twilio_pipeline.outbound import ExecutionBusy, busy_holder
    from twilio_pipeline.outbound.connectivity import SenderNotOwned

    holder = busy_holder(db, execution_id)
    if holder is not None:
        say(f"Execution {execution_id} is being sent by run {holder.owner} (pid {holder.pid} on {holder.host}); "
            "not starting a second send")
        return EXIT_BUSY
    run = send_run(_instance(), execution_id, channel.name, tags=_tags(settings), force=force)
    failure = run.failure
    if failure is not None:
        if failure.error_class == ExecutionBusy.__name__:
            say(failure.message)
            return EXIT_BUSY
        if failure.error_class == SenderNotOwned.__name__:  # bad input, found before any message
            say(failure.message)
            return EXIT_INPUT
        reason = _interrupted(db, channel, execution_id, failure)
        if reason is not None:
            say(f"Send of execution {execution_id} stopped (run {run.run_id}): {reason}")
            return EXIT_FAILED
        say(f"Send of execution {execution_id} failed (run {run.run_id}): {failure.message}")
        return EXIT_FAILED
    if run.metadata("send").get("requests_this_run") == 0:
        say(f"Execution {execution_id}: nothing new to send (every recipient already has its outcome)")
    say(f"Run {run.run_id} succeeded.")
    return print_results(db, execution_id, say)


def sync_report(db: Database, runs: SyncRuns) -> tuple[list[str], int]:
    """What `twilio-pipeline sync` prints, and its exit code: each step's own summary lines (the sentences
    it logged, never figures added up across steps), then each execution's results."""
    lines: list[str] = []
    channel_run = runs.channel_run
    if channel_run.failure is not None:
        return [f"Channel sync failed (run {channel_run.run_id}): {channel_run.failure.message}"], EXIT_FAILED
    lines.append(f"Channel sync (run {channel_run.run_id}):")
    lines += [f"  {line}" for line in channel_run.lines("keyword_parse")]
    # A channel not synced (its account unset or rejected, Twilio unreachable) makes the sync fail for the
    # exit code, though the other channels' replies and executions were synced.
    code = EXIT_FAILED if channel_run.metadata("keyword_parse").get("channels_not_synced") else EXIT_OK
    for part in runs.executions:
        run = part.run
        which = ", ".join(str(e) for e in part.execution_ids)
        if run.failure is not None:
            lines.append(f"Execution {which}: sync failed (run {run.run_id}): {run.failure.message}")
            code = EXIT_FAILED
            continue
        lines.append(f"Execution sync of {which} ({', '.join(sorted(set(part.channels.values())))}) "
                     f"(run {run.run_id}):")
        lines += [f"  {line}" for node in ("status_fetch", "state_bulk_load") for line in run.lines(node)]
        for eid in part.execution_ids:
            results = db.read_results(eid)
            status = ", ".join(f"{k[7:]}={_fmt(v)}" for k, v in results.items() if k.startswith("Status:"))
            replies = ", ".join(f"{k[6:]}={_fmt(v)}" for k, v in results.items() if k.startswith("Reply:"))
            lines.append(f"Execution {eid} ({part.channels[eid]}): loaded by run {run.run_id} | statuses: "
                         f"{status or 'none yet'} | expired: {_fmt(results.get('Expired', 0))} | "
                         f"replies: {replies or 'none'}")
    if not runs.executions:
        lines.append("No execution had anything to sync.")
    return lines, code


def run_sync(settings: Settings, db: Database, channels: ChannelFile, channel_name: str | None,
             say: Callable[[str], None]) -> int:
    runs = sync_runs(_instance(), db, channels, channel_name, tags=_tags(settings))
    lines, code = sync_report(db, runs)
    for line in lines:
        say(line)
    return code


def _fmt(value) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.4f}"
    return f"{int(value):,}"


def print_results(db: Database, execution_id: int, say: Callable[[str], None]) -> int:

    ex = db.tables.executions
    with db.connect() as conn:
        row = conn.execute(sa.select(ex.c.ChannelName, ex.c.Status, ex.c.StatusReason)
                           .where(ex.c.ChannelExecutionID == execution_id)).first()
    if row is None:
        raise CliError(f"unknown execution {execution_id}: no row in {ex.name}")
    results = db.read_results(execution_id)
    say(f"Execution {execution_id} — channel {row.ChannelName!r}, status {row.Status}"
        + (f" ({row.StatusReason})" if row.StatusReason else ""))
    if not results:
        say("  no results yet")
        return EXIT_OK
    ordered = [k for k in OUTBOUND_ORDER if k in results]
    ordered += sorted(k for k in results if k.startswith("Status:"))
    ordered += [k for k in ("Expired",) if k in results]
    ordered += sorted(k for k in results if k.startswith("Reply:"))
    ordered += sorted(k for k in results if k not in ordered)
    width = max(len(k) for k in ordered)
    for name in ordered:
        say(f"  {name:<{width}}  {_fmt(results[name])}")
    return EXIT_OK
