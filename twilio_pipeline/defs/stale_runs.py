"""Runs killed with SIGKILL from the CLI (in-process, no daemon watching) stay STARTED and keep their
`twilio_api` pool slots. Before the next run waits on those slots, find them (same host, process gone),
mark them failed and free their slots. Runs launched from the UI are covered by the daemon's run
monitoring (`free_slots_after_run_end_seconds` in dagster.yaml)."""

from __future__ import annotations

import dagster as dg

from twilio_pipeline.db.database import HOST
from twilio_pipeline.defs.partitions import HOST_TAG, PID_TAG
from twilio_pipeline.processes import pid_alive


def fail_stale_runs(instance: dg.DagsterInstance) -> list[str]:
    stale = []
    runs = instance.get_runs(filters=dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED],
        tags={HOST_TAG: HOST}))
    for run in runs:
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid and not pid_alive(pid):
            instance.report_run_failed(run, message=f"Run process {pid} on {HOST} is gone (killed); marked failed "
                                                   "and its concurrency slots freed.")
            stale.append(run.run_id)
        if pid and not pid_alive(pid) or run.run_id in stale:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return stale
