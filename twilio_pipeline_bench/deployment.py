"""Scenario `deploy` - the deployment as deploy/ runs it (issue 11): code server, daemon and webserver from
deploy/Procfile on a PostgreSQL Dagster instance (deploy/dagster.prod.yaml, verbatim), the pipeline's
tables in PostgreSQL, the sandbox at 100 ms latency. Nothing runs in this process: the queue listener,
the run queue and the pool do everything, as in production.

Burst: 20 ready executions x 500 recipients inserted at once; wall time from the insert to all `sent`.
Target: <= 2 x (sum of their send steps / twilio_api pool slots) + 60 s, i.e. the sends themselves keep
the pool busy and the rest (sensor tick, run and step processes, results) costs little on top.

Latency: then one execution of 1 recipient, inserted whenever the burst is done (any point of the
listener's 30 s interval), from `ready` to `sent`. Target: <= 45 s.
"""

from __future__ import annotations

import time

import dagster as dg
import yaml

from twilio_pipeline.defs.partitions import EXECUTION_TAG
from twilio_pipeline_bench.fixtures import fresh_database, start_sandbox
from twilio_pipeline_bench.reporting import Context
from twilio_pipeline_tests.deployment.harness import CHANNEL, DEPLOY, running_deployment

BURST, RECIPIENTS = 20, 500
LATENCY_ID = 9999


def _pool_slots() -> int:
    return int(yaml.safe_load((DEPLOY / "dagster.prod.yaml").read_text())["concurrency"]["pools"]["default_limit"])


def _all_sent(d, ids: list[int]) -> bool:
    return all(d.execution(eid)[0] == "sent" for eid in ids)


def _send_step_seconds(d, execution_id: int) -> float:
    """The `send` step's duration in the execution's successful outbound run (start to success). The
    execution is `sent` a moment before its run ends: wait for the run first."""
    d.wait(f"the outbound run of execution {execution_id} to end", lambda: all(
        r.is_finished for r in d.runs("outbound_job", **{EXECUTION_TAG: str(execution_id)})), timeout=300)
    for run in d.runs("outbound_job", **{EXECUTION_TAG: str(execution_id)}):
        if run.status != dg.DagsterRunStatus.SUCCESS:
            continue
        events = {e.dagster_event_type: e.timestamp
                  for e in d.instance.all_logs(run.run_id)
                  if e.step_key == "send" and e.dagster_event_type in (dg.DagsterEventType.STEP_START,
                                                                         dg.DagsterEventType.STEP_SUCCESS)}
        return events[dg.DagsterEventType.STEP_SUCCESS] - events[dg.DagsterEventType.STEP_START]
    raise RuntimeError(f"execution {execution_id} has no successful outbound run")


def run(ctx: Context) -> None:
    report = ctx.report
    executions, recipients = (4, 50) if ctx.quick else (BURST, RECIPIENTS)
    workdir = ctx.workdir / "deploy"
    workdir.mkdir(parents=True, exist_ok=True)
    sandbox = start_sandbox(workdir, "deploy", latency_ms=100)
    try:
        with fresh_database("postgresql", workdir, "deploy") as url, \
                running_deployment(workdir, url, sandbox, [{"name": CHANNEL, "from_number": "+15005550006"}]) as d:
            ids = list(range(8001, 8001 + executions))
            t0 = time.monotonic()
            for eid in ids:
                d.add_execution(eid, recipients)
            d.wait(f"{executions} executions to be sent", lambda: _all_sent(d, ids), timeout=1800, every=0.5)
            wall = time.monotonic() - t0
            report.note(f"burst: all {executions} executions sent {wall:.1f} s after the insert")
            steps = sum(_send_step_seconds(d, eid) for eid in ids)
            slots = _pool_slots()
            target = 2 * steps / slots + 60
            report.reference("deploy_burst_send_steps_total", round(steps, 1), "s",
                             note=f"{executions} x {recipients} recipients, {slots} twilio_api slots")
            report.figure("deploy_burst_wall", round(wall, 1), "s",
                          target=f"<= 2 x {steps:.0f} / {slots} + 60 = {target:.0f} s", passed=wall <= target)

            t0 = time.monotonic()
            d.add_execution(LATENCY_ID, 1)
            d.wait("the single execution to be sent", lambda: _all_sent(d, [LATENCY_ID]), timeout=600, every=0.2)
            latency = time.monotonic() - t0
            report.figure("deploy_ready_to_sent_latency", round(latency, 1), "s", target="<= 45 s",
                          passed=latency <= 45)
    finally:
        sandbox.stop()
