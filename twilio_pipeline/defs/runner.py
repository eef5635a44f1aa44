"""In-process runs for the CLI and the demo: the same jobs the UI launches, recorded in the instance of
DAGSTER_HOME, with the failure reduced to one line and mapped to the exit codes of docs/reference.md."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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
    HOST_TAG,
    MODE_TAG,
    PID_TAG,
    execution_partitions,
)
from twilio_pipeline.defs.stale_runs import fail_stale_runs
from twilio_pipeline.settings import Settings

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

OUTBOUND_ORDER = ["CountBeforeDedup", "InvalidNumbers", "Duplicates", "Unsubscribed", "NotRendered", "Targeted",
                  "Pending", "Sent", "SendFailed", "Unresolved", "Segments", "EstimatedCost", "SeedsSent",
                  "InvalidSeeds", "UnsubscribedSeeds"]


class RunFailure:
    def __init__(self, error_class: str, message: str, step: str | None = None):
        self.error_class = error_class
        self.message = message
        self.step = step


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


def _ensure_partition(instance: dg.DagsterInstance, execution_id: int) -> None:
    key = str(execution_id)
    if not instance.has_dynamic_partition(execution_partitions.name, key):
        try:
            add_in_order(instance, [key])
        except sa.exc.IntegrityError:
            # A run started at the same moment added it first (the partition key is unique).
            if not instance.has_dynamic_partition(execution_partitions.name, key):
                raise


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


def run_send(settings: Settings, db: Database, channel: Channel, execution_id: int,
             say: Callable[[str], None], force: bool = False) -> int:
    """Run the outbound job for an execution the caller has already checked (`load_execution` and
    `send_refusal`, which the CLI calls before Dagster is even imported)."""
    from twilio_pipeline.outbound import ExecutionBusy
    from twilio_pipeline.outbound.connectivity import SenderNotOwned
    from twilio_pipeline.outbound.lease import lease_key

    holder = db.live_lease_holder(lease_key(execution_id))
    if holder is not None:
        say(f"Execution {execution_id} is being sent by run {holder.owner} (pid {holder.pid} on {holder.host}); "
            "not starting a second send")
        return EXIT_BUSY
    instance = _instance()
    _ensure_partition(instance, execution_id)
    result = _job("outbound_job").execute_in_process(
        instance=instance, partition_key=str(execution_id), run_config={**QUIET_LOGS, **_force_config(force)},
        raise_on_error=False, tags=_tags(settings, **{EXECUTION_TAG: str(execution_id), CHANNEL_TAG: channel.name}))
    failure = _failure(result)
    if failure is not None:
        if failure.error_class == ExecutionBusy.__name__:
            say(failure.message)
            return EXIT_BUSY
        if failure.error_class == SenderNotOwned.__name__:  # bad input, found before any message
            say(failure.message)
            return EXIT_INPUT
        reason = _interrupted(db, channel, execution_id, failure)
        if reason is not None:
            say(f"Send of execution {execution_id} stopped (run {result.run_id}): {reason}")
            return EXIT_FAILED
        say(f"Send of execution {execution_id} failed (run {result.run_id}): {failure.message}")
        return EXIT_FAILED
    sent_now = _metadata_value(result, "send", "requests_this_run")
    if sent_now == 0:
        say(f"Execution {execution_id}: nothing new to send (every recipient already has its outcome)")
    say(f"Run {result.run_id} succeeded.")
    return print_results(db, execution_id, say)


def _metadata_value(result, node: str, key: str):
    for mat in result.asset_materializations_for_node(node):
        value = mat.metadata.get(key)
        if value is not None:
            return value.value
    return None


def run_sync(settings: Settings, db: Database, channels: ChannelFile, channel_name: str | None,
             say: Callable[[str], None]) -> int:
    from twilio_pipeline.inbound import eligible_executions

    instance = _instance()
    config = {"ops": {"keyword_parse": {"config": {"channel": channel_name}}}, **QUIET_LOGS}
    result = _job("channel_sync_job").execute_in_process(instance=instance, run_config=config,
                                                         raise_on_error=False, tags=_tags(settings))
    failure = _failure(result)
    if failure is not None:
        say(f"Channel sync failed (run {result.run_id}): {failure.message}")
        return EXIT_FAILED
    parsed = {k: v.value for mat in result.asset_materializations_for_node("keyword_parse")
              for k, v in mat.metadata.items() if isinstance(v.value, (int, float))}
    say("Channel sync: " + ", ".join(f"{k}={v}" for k, v in parsed.items()))
    selected = [channels.get(channel_name)] if channel_name else list(channels.channels)
    code = EXIT_OK
    synced = 0
    for channel in selected:
        for eid in eligible_executions(db, channel, limit_records=channel.records_per_sync):
            _ensure_partition(instance, eid)
            res = _job("execution_sync_job").execute_in_process(
                instance=instance, partition_key=str(eid), run_config=QUIET_LOGS, raise_on_error=False,
                tags=_tags(settings, **{EXECUTION_TAG: str(eid), CHANNEL_TAG: channel.name}))
            failure = _failure(res)
            if failure is not None:
                say(f"Execution {eid}: sync failed (run {res.run_id}): {failure.message}")
                code = EXIT_FAILED
                continue
            synced += 1
            loaded = {k: v.value for mat in res.asset_materializations_for_node("state_bulk_load")
                      for k, v in mat.metadata.items() if isinstance(v.value, (int, float))}
            results = db.read_results(eid)
            status = ", ".join(f"{k[7:]}={_fmt(v)}" for k, v in results.items() if k.startswith("Status:"))
            replies = ", ".join(f"{k[6:]}={_fmt(v)}" for k, v in results.items() if k.startswith("Reply:"))
            say(f"Execution {eid} ({channel.name}): loaded " + ", ".join(f"{k}={v}" for k, v in loaded.items())
                + f" | statuses: {status or 'none yet'} | replies: {replies or 'none'}")
    if synced == 0 and code == EXIT_OK:
        say("No execution had anything to sync.")
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
