"""The production topology of the deployment suite (deploy/Procfile's code server, daemon and webserver on a
PostgreSQL instance; twilio_pipeline_tests/deployment/harness.py) with TWILIO_PIPELINE_EXECUTOR=celery and
two `twilio-pipeline worker` processes on a RabbitMQ vhost of the session's own. Sandbox mode across
processes: every step, on whichever worker, talks to the one sandbox TWILIO_PIPELINE_SANDBOX_URL names.

The executions the tests watch are inserted before the daemon starts, so the queue listener's first tick
launches them all at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from twilio_pipeline.defs.partitions import TWILIO_POOL
from twilio_pipeline.sandbox.process import SandboxProcess
from twilio_pipeline_tests.celery.harness import RABBITMQ_ENV, broker_reachable, session_vhost, start_worker
from twilio_pipeline_tests.deployment.harness import CHANNEL, SLOW_CHANNEL, SLOW_RPS, Deployment, running_deployment

AT_ONCE = (7201, 7202, 7203)  # sent at the same time through celery
AT_ONCE_RECIPIENTS = 25
KILLED = 7204                 # the worker running its send is SIGKILLed
KILLED_RECIPIENTS = 60
POOL_SLOTS = 2                # twilio_api slots of the instance
MAX_CONCURRENCY = 3           # the fast channel's requests in flight per step
WORKER_CONCURRENCY = 2


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    url = os.environ.get(RABBITMQ_ENV)
    if not url:
        pytest.skip(f"{RABBITMQ_ENV} is not set: no RabbitMQ broker configured for the celery tests")
    pytest.importorskip("dagster_celery", reason="the celery extra is not installed (pip install -e '.[celery]')")
    why = broker_reachable(url)
    if why:
        pytest.fail(f"{RABBITMQ_ENV}={url} does not answer: {why}")
    with session_vhost(url) as vhost_url:
        yield vhost_url


def _insert(d: Deployment) -> None:
    d.instance.event_log_storage.set_concurrency_slots(TWILIO_POOL, POOL_SLOTS)
    for eid in AT_ONCE:
        d.add_execution(eid, AT_ONCE_RECIPIENTS)
    d.add_execution(KILLED, KILLED_RECIPIENTS, SLOW_CHANNEL)


@pytest.fixture(scope="session")
def celery_deployment(postgres_url, rabbitmq_url, tmp_path_factory) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("celery")
    channels = [
        {"name": CHANNEL, "from_number": "+15005550006", "sync_interval_minutes": 1,
         "max_concurrency": MAX_CONCURRENCY},
        {"name": SLOW_CHANNEL, "from_number": "+15005550006", "sync_interval_minutes": 1,
         "max_concurrency": 1, "requests_per_second": SLOW_RPS},
    ]
    # The sandbox answers 429 past POOL_SLOTS x MAX_CONCURRENCY requests in flight: the account's limit.
    with SandboxProcess(workdir / "sandbox", status_delay_ms=200, latency_ms=100, access_log=False,
                        max_concurrency=POOL_SLOTS * MAX_CONCURRENCY) as sandbox:
        env = {"TWILIO_PIPELINE_EXECUTOR": "celery", "TWILIO_PIPELINE_CELERY_BROKER": rabbitmq_url,
               "TWILIO_PIPELINE_CELERY_BACKEND": "rpc://",
               # sandbox mode, every host on one sandbox
               "TWILIO_ACCOUNT_SID": "", "TWILIO_AUTH_TOKEN": "", "TWILIO_PIPELINE_SANDBOX_URL": sandbox.base_url}
        with running_deployment(workdir, postgres_url, sandbox, channels, before_start=_insert,
                                extra_env=env) as d:
            start_worker(d, "worker1", WORKER_CONCURRENCY)
            start_worker(d, "worker2", WORKER_CONCURRENCY)
            yield d
