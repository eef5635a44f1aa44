"""One deployment per test session (deploy/Procfile's processes on PostgreSQL; see harness.py): it takes a
while to start. The executions the tests watch are inserted before the daemon starts, so the queue
listener's first tick launches them all at once."""

from __future__ import annotations

import pytest

from twilio_pipeline.sandbox.process import SandboxProcess
from twilio_pipeline_tests.deployment.harness import CHANNEL, SLOW_CHANNEL, SLOW_RPS, running_deployment

WALK = 7101          # the whole lifecycle, ready to results
KILLED = 7102        # its run worker is SIGKILLed mid-send
BACKFILL = (7103, 7104, 7105)  # 7104 has no recipients
BAD = 7104
KILLED_RECIPIENTS = 60
# deploy/dagster.prod.yaml as shipped, but run monitoring looks every 5 s instead of 30: what it does (a dead
# run worker's run failed, its slots freed 15 s after the run ended) is what the tests check, not how often.
TEST_INTERVALS = {"run_monitoring": {"poll_interval_seconds": 5}}


def _insert(deployment) -> None:
    deployment.add_execution(WALK, 5)
    deployment.add_execution(KILLED, KILLED_RECIPIENTS, SLOW_CHANNEL)
    for eid in BACKFILL:
        deployment.add_execution(eid, 0 if eid == BAD else 3)


@pytest.fixture(scope="session")
def deployment(postgres_url, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("deployment")
    channels = [
        {"name": CHANNEL, "from_number": "+15005550006", "sync_interval_minutes": 1},
        {"name": SLOW_CHANNEL, "from_number": "+15005550006", "sync_interval_minutes": 1,
         "max_concurrency": 1, "requests_per_second": SLOW_RPS},
    ]
    with SandboxProcess(workdir / "sandbox", status_delay_ms=200, access_log=False) as sandbox, \
            running_deployment(workdir, postgres_url, sandbox, channels, before_start=_insert,
                               instance_overrides=TEST_INTERVALS) as deployment:
        yield deployment
