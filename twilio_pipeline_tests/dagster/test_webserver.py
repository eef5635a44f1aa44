"""The real webserver, headless: the code location loads, everything is listed through GraphQL, and
an outbound run for a demo partition launched through GraphQL succeeds against the sandbox."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
import yaml

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import Database
from twilio_pipeline.sandbox.process import SandboxProcess
from twilio_pipeline.settings import project_root

pytestmark = pytest.mark.slow

WORKSPACE_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on PythonError { message }
      ... on RepositoryLocation { repositories { name
          jobs { name } sensors { name } schedules { name }
          assetNodes { assetKey { path } groupName } } } } } } } }
"""
RUN_QUERY = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }"""
LAUNCH = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gql(port: int, query: str, variables: dict | None = None) -> dict:
    resp = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}},
                         timeout=60)
    resp.raise_for_status()
    body = resp.json()
    assert "errors" not in body, body.get("errors")
    return body["data"]


def test_webserver_lists_everything_and_launches_an_outbound_run(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "telemetry": {"enabled": False},
        # No daemon in this test: launch runs directly instead of queueing them.
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
    }))
    channels = tmp_path / "channels.yaml"
    channels.write_text(yaml.safe_dump({"channels": [{"name": "UI Channel", "from_number": "+15005550006"}]}))
    db_url = f"sqlite:///{tmp_path / 'ui.db'}"
    with SandboxProcess(tmp_path / "sandbox") as sb:
        db = Database(db_url)
        create_execution(db, 501, "UI Channel", "Hello {{FirstName}}",
                         [(i, f"+1415555{i:04d}", {"FirstName": "Ada"}) for i in range(1, 21)])
        db.dispose()
        env = {**os.environ, "DAGSTER_HOME": str(home), "TWILIO_PIPELINE_DATABASE_URL": db_url,
               "TWILIO_PIPELINE_CHANNELS": str(channels), "TWILIO_ACCOUNT_SID": sb.account_sid,
               "TWILIO_AUTH_TOKEN": sb.auth_token, "TWILIO_API_BASE_URL": sb.base_url,
               "TWILIO_BULKEXPORTS_BASE_URL": sb.base_url, "TWILIO_MESSAGING_BASE_URL": sb.base_url}
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-w", str(project_root() / "workspace.yaml"),
             "-h", "127.0.0.1", "-p", str(port)],
            env=env, cwd=project_root(), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, "webserver did not come up"
                time.sleep(0.5)
            entry = _gql(port, WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"][0]
            location = entry["locationOrLoadError"]
            assert location["__typename"] == "RepositoryLocation", location
            repo = location["repositories"][0]
            assert {"outbound_job", "channel_sync_job", "execution_sync_job"} <= {j["name"] for j in repo["jobs"]}
            assert {"queue_listener", "execution_sync_chain"} <= {s["name"] for s in repo["sensors"]}
            assert {"channel_sync_schedule", "daily_suppression_refresh"} <= {s["name"] for s in repo["schedules"]}
            groups = {tuple(a["assetKey"]["path"]): a["groupName"] for a in repo["assetNodes"]}
            assert groups[("send",)] == "outbound" and groups[("aggregate_results",)] == "inbound"

            _gql(port, """mutation { addDynamicPartition(repositorySelector: {repositoryLocationName: "twilio_pipeline",
                 repositoryName: "__repository__"}, partitionsDefName: "channel_executions", partitionKey: "501")
                 { __typename } }""")
            launched = _gql(port, LAUNCH, {"params": {
                "selector": {"repositoryLocationName": "twilio_pipeline", "repositoryName": "__repository__",
                             "jobName": "outbound_job"},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "501"}]},
            }})["launchRun"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            run_id = launched["run"]["runId"]
            deadline = time.monotonic() + 180
            status, run = None, {}
            while time.monotonic() < deadline:
                run = _gql(port, RUN_QUERY, {"id": run_id})["runOrError"]
                status = run["status"]
                if status in ("SUCCESS", "FAILURE", "CANCELED"):
                    break
                time.sleep(1)
            assert status == "SUCCESS"
            # A run launched from the UI carries the mode tag too (live here: an account SID is set).
            assert {"key": "twilio_pipeline/mode", "value": "live"} in run["tags"]
            assert sum(sb.stats()["messages_created_by_to"].values()) == 20
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
