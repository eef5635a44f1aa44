"""deploy/ as shipped: the Procfile and the systemd units run the same three commands, the units pass
`systemd-analyze verify`, and the code server's wrapper refuses a port something already listens on."""

from __future__ import annotations

import configparser
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from twilio_pipeline.settings import project_root
from twilio_pipeline_tests.deployment.harness import DEPLOY, procfile_commands

UNITS = {"code": "twilio-pipeline-code.service", "daemon": "twilio-pipeline-daemon.service",
         "web": "twilio-pipeline-web.service"}
INSTALL_DIR = "/opt/twilio_pipeline"
VENV_BIN = f"{INSTALL_DIR}/.venv/bin/"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / "systemd" / name)
    return parser


def test_the_procfile_and_the_systemd_units_start_the_same_three_processes():
    procfile = procfile_commands()
    assert set(procfile) == set(UNITS)
    for process, name in UNITS.items():
        unit = _unit(name)
        service = unit["Service"]
        assert service["WorkingDirectory"] == INSTALL_DIR and service["EnvironmentFile"]
        assert service["Restart"] == "on-failure" and unit["Install"]["WantedBy"] == "multi-user.target"
        exec_start = service["ExecStart"].replace(VENV_BIN, "")
        assert exec_start == re.sub(r"\$\{(\w+):-[^}]*\}", r"${\1}", procfile[process])


def test_the_workspace_and_the_instance_point_where_the_environment_says():
    workspace = yaml.safe_load((DEPLOY / "workspace.grpc.yaml").read_text())["load_from"][0]["grpc_server"]
    assert workspace["host"] == {"env": "TWILIO_PIPELINE_CODE_SERVER_HOST"}
    assert workspace["port"] == {"env": "TWILIO_PIPELINE_CODE_SERVER_PORT"}
    instance = yaml.safe_load((DEPLOY / "dagster.prod.yaml").read_text())
    assert instance["compute_logs"]["class"] == "NoOpComputeLogManager"  # see the comment there: several hosts
    postgres = instance["storage"]["postgres"]["postgres_db"]
    assert {key: postgres[key] for key in ("hostname", "port", "username", "password", "db_name")} == {
        "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"}}
    env_example = (DEPLOY / "env.example").read_text()
    for name in ("DAGSTER_HOME", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "TWILIO_PIPELINE_DATABASE_URL", "TWILIO_PIPELINE_AUTOMATION",
                 "TWILIO_PIPELINE_CODE_SERVER_HOST", "TWILIO_PIPELINE_CODE_SERVER_PORT", "PORT"):
        assert re.search(rf"^{name}=", env_example, re.M), name


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_systemd_units_verify(tmp_path):
    """The units as installed here: paths pointed at this checkout and its virtualenv."""
    for name in UNITS.values():
        text = (DEPLOY / "systemd" / name).read_text()
        text = text.replace(VENV_BIN, f"{Path(sys.executable).parent}/").replace(INSTALL_DIR, str(project_root()))
        text = re.sub(r"^User=.*\n", "", text, flags=re.M)  # no such user on a test machine
        (tmp_path / name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *[str(tmp_path / n) for n in UNITS.values()]],
                            capture_output=True, text=True, timeout=120)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "twilio-pipeline" in line and "EnvironmentFile" not in line]
    assert result.returncode == 0 or not problems, result.stdout + result.stderr


def test_the_code_server_wrapper_refuses_a_port_already_listened_on():
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as gRPC binds: a second bind would share it
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, str(DEPLOY / "code_server.py"), "--host", "127.0.0.1",
                                 "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"code server not started: 127.0.0.1:{port} is already in use "
                                     "(Address already in use); is another code server running? Stop it first")


def test_the_run_queue_starts_at_most_one_run_per_slot_that_will_wait_for_it():
    """deploy/dagster.prod.yaml: runs whose first step needs a `twilio_api` slot stay queued while the pool
    is full, except one per slot (its start-up then overlaps the send it waits for; more would hold
    processes that only wait)."""
    config = yaml.safe_load((DEPLOY / "dagster.prod.yaml").read_text())
    pools = config["concurrency"]["pools"]
    assert config["run_coordinator"]["config"]["block_op_concurrency_limited_runs"]["enabled"] is True
    assert pools["granularity"] == "op"
    assert pools["op_granularity_run_buffer"] == pools["default_limit"]
