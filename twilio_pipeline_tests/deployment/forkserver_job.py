"""A one-step job on the pipeline's multiprocess executor that reports which process ran its step, and the
script that runs it as a run worker does (test_step_forkserver.py)."""

from __future__ import annotations

import json
import os
import signal
import sys

import dagster as dg

from twilio_pipeline.worker import multiprocess_executor


@dg.op
def where_am_i() -> dict:
    handler = signal.getsignal(signal.SIGTERM)
    return {"pid": os.getpid(), "ppid": os.getppid(),
            "sigterm": f"{getattr(handler, '__module__', '')}.{getattr(handler, '__qualname__', handler)}"}


@dg.job(executor_def=multiprocess_executor())
def where_job():
    where_am_i()


def main() -> None:
    """Run `where_job` on a temporary instance; print its outcome and engine events as one JSON line."""
    with dg.instance_for_test() as instance:
        with dg.execute_job(dg.reconstructable(where_job), instance=instance) as result:
            step = result.output_for_node("where_am_i") if result.success else None
        logs = instance.all_logs(result.run_id)
        events = [e.user_message for e in logs
                  if e.dagster_event is not None and e.dagster_event.event_type_value == "ENGINE_EVENT"]
        failures = [e.user_message for e in logs if e.dagster_event is not None and e.dagster_event.is_failure]
        print(json.dumps({"success": result.success, "step": step, "run_worker": os.getpid(), "events": events,
                          "failures": failures}))


if __name__ == "__main__":
    sys.exit(main())
