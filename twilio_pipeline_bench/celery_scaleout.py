"""Scenario `celery` - scale-out on celery (issue 12): the same burst through the production deployment
(deploy/Procfile's code server + daemon + webserver, PostgreSQL instance, sandbox at 100 ms latency), once
with the default multiprocess executor and once with TWILIO_PIPELINE_EXECUTOR=celery and two
`twilio-pipeline worker --concurrency 2` processes on RabbitMQ (TWILIO_PIPELINE_TEST_RABBITMQ_URL, default
the local broker; a vhost of its own). Wall time from the insert of 6 ready executions x 2,000 recipients
to all `sent`. Target: celery <= 1.3 x multiprocess.

Also reports the per-step costs the README's sizing uses: the mean `send` step and the mean of the other
outbound steps, with each executor.
"""

from __future__ import annotations

import os
import statistics
import time

import dagster as dg

from twilio_pipeline.defs.partitions import EXECUTION_TAG
from twilio_pipeline_bench.fixtures import fresh_database, start_sandbox
from twilio_pipeline_bench.reporting import Context
from twilio_pipeline_tests.celery.harness import RABBITMQ_ENV, broker_reachable, session_vhost, start_worker
from twilio_pipeline_tests.deployment.harness import CHANNEL, running_deployment

EXECUTIONS, RECIPIENTS = 6, 2000
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def _all_sent(d, ids: list[int]) -> bool:
    return all(d.execution(eid)[0] == "sent" for eid in ids)


def _step_seconds(d, ids: list[int]) -> dict[str, list[float]]:
    """step key -> durations (start to success) over the executions' successful outbound runs."""
    out: dict[str, list[float]] = {}
    for eid in ids:
        for run in d.runs("outbound_job", **{EXECUTION_TAG: str(eid)}):
            if run.status != dg.DagsterRunStatus.SUCCESS:
                continue
            starts: dict[str, float] = {}
            for e in d.instance.all_logs(run.run_id):
                if e.dagster_event_type == dg.DagsterEventType.STEP_START:
                    starts[e.step_key] = e.timestamp
                elif e.dagster_event_type == dg.DagsterEventType.STEP_SUCCESS and e.step_key in starts:
                    out.setdefault(e.step_key, []).append(e.timestamp - starts[e.step_key])
    return out


def _burst(ctx: Context, label: str, executions: int, recipients: int, extra_env: dict, workers: int,
           ) -> tuple[float, dict[str, list[float]]]:
    workdir = ctx.workdir / f"celery-{label}"
    workdir.mkdir(parents=True, exist_ok=True)
    sandbox = start_sandbox(workdir, label, latency_ms=100)
    try:
        with fresh_database("postgresql", workdir, label) as url, \
                running_deployment(workdir, url, sandbox, [{"name": CHANNEL, "from_number": "+15005550006"}],
                                   extra_env=extra_env) as d:
            for i in range(workers):
                start_worker(d, f"worker{i + 1}", 2)
            ids = list(range(8101, 8101 + executions))
            t0 = time.monotonic()
            for eid in ids:
                d.add_execution(eid, recipients)
            d.wait(f"{executions} executions to be sent ({label})", lambda: _all_sent(d, ids), timeout=1800,
                   every=0.5)
            wall = time.monotonic() - t0
            texts = sum(sum(d.texts_by_number(eid).values()) for eid in ids)
            if texts != executions * recipients:
                raise RuntimeError(f"{label}: {texts} messages for {executions * recipients} recipients")
            return wall, _step_seconds(d, ids)
    finally:
        sandbox.stop()


def run(ctx: Context) -> None:
    report = ctx.report
    executions, recipients = (2, 200) if ctx.quick else (EXECUTIONS, RECIPIENTS)
    broker = os.environ.get(RABBITMQ_ENV) or DEFAULT_BROKER
    why = broker_reachable(broker)
    if why:
        report.error("celery_vs_multiprocess_wall", f"no RabbitMQ at {broker}: {why}")
        return
    multi, multi_steps = _burst(ctx, "multiprocess", executions, recipients, {}, 0)
    with session_vhost(broker) as vhost:
        env = {"TWILIO_PIPELINE_EXECUTOR": "celery", "TWILIO_PIPELINE_CELERY_BROKER": vhost}
        celery, celery_steps = _burst(ctx, "celery", executions, recipients, env, 2)
    note = f"{executions} x {recipients} recipients, sandbox 100 ms"
    report.reference("multiprocess_burst_wall", round(multi, 1), "s", note=note)
    report.reference("celery_burst_wall", round(celery, 1), "s", note=note + ", 2 workers x concurrency 2")
    for label, steps in (("multiprocess", multi_steps), ("celery", celery_steps)):
        send = statistics.mean(steps.get("send") or [0.0])
        others = sum(statistics.mean(v) for k, v in steps.items() if k != "send")
        report.reference(f"{label}_send_step_mean", round(send, 2), "s")
        report.reference(f"{label}_other_outbound_steps_mean_total", round(others, 2), "s")
    ratio = celery / multi
    report.figure("celery_vs_multiprocess_wall", round(ratio, 2), "x", target="<= 1.3x", passed=ratio <= 1.3,
                  note=f"celery {celery:.1f} s vs multiprocess {multi:.1f} s")
