"""Runs killed with SIGKILL from the CLI (in-process, no daemon watching) stay STARTED and keep their
`twilio_api` pool slots. Before the next run waits on those slots, find them (same host, process gone),
free their slots and mark them failed. Runs launched from the UI are covered by the daemon's run
monitoring (`free_slots_after_run_end_seconds` in dagster.yaml)."""

from __future__ import annotations

import dagster as dg

from twilio_pipeline.db.database import HOST
from twilio_pipeline.defs.partitions import HOST_TAG, PID_TAG, TWILIO_POOL
from twilio_pipeline.processes import pid_alive

NOT_FINISHED = (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED)


def _process_gone(run: dg.DagsterRun) -> bool:
    pid = int(run.tags.get(PID_TAG, "0") or 0)
    return bool(pid) and run.tags.get(HOST_TAG) == HOST and not pid_alive(pid)


def fail_stale_runs(instance: dg.DagsterInstance) -> list[str]:
    """Free the slots of this host's runs whose process is gone, then mark the unfinished ones failed;
    returns the run IDs marked failed.

    Slots are freed first: a process killed between the two steps (it happens: the next CLI run is
    itself killed at random in the crash suite) leaves a run still STARTED, found again next time,
    never a FAILED run holding a slot that nothing would free. Finished runs that still hold a slot
    (killed by an earlier version in that window) are freed too."""
    storage = instance.event_log_storage
    stale = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=list(NOT_FINISHED), tags={HOST_TAG: HOST})):
        if _process_gone(run):
            storage.free_concurrency_slots_for_run(run.run_id)
            instance.report_run_failed(run, message=f"Run process {run.tags[PID_TAG]} on {HOST} is gone (killed); "
                                                   "marked failed and its concurrency slots freed.")
            stale.append(run.run_id)
    if TWILIO_POOL in storage.get_concurrency_keys():
        holders = {slot.run_id for slot in storage.get_concurrency_info(TWILIO_POOL).claimed_slots}
        for run_id in holders:
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status not in NOT_FINISHED and _process_gone(run):
                storage.free_concurrency_slots_for_run(run_id)
    return stale
