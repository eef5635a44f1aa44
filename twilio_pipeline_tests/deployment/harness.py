"""The deployment as a platform engineer runs it: the three processes of deploy/Procfile (code server,
daemon, webserver) started from those very lines, on a Dagster instance configured by
deploy/dagster.prod.yaml (verbatim, or with a test's shorter polling intervals) in its own fresh PostgreSQL
database, with the pipeline's tables in the PostgreSQL database TWILIO_PIPELINE_DATABASE_URL names and
Twilio played by a sandbox process.

Used by the deployment suite (conftest.py) and the `deploy` benchmark. Every process started here is
killed on the way out, whatever happened, and the instance database is dropped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import requests
import sqlalchemy as sa
import yaml

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import Database
from twilio_pipeline.db.database import normalise_url
from twilio_pipeline.sandbox.process import SandboxProcess, child_environment
from twilio_pipeline.settings import project_root
from twilio_pipeline_tests.dagster.test_webserver import _free_port, _gql

DEPLOY = project_root() / "deploy"
CHANNEL = "Deploy Channel"
SLOW_CHANNEL = "Slow Channel"  # a few requests per second: a send long enough to kill in the middle
SLOW_RPS = 3
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def procfile_commands(path: Path = DEPLOY / "Procfile") -> dict[str, str]:
    """name -> shell command, as honcho/foreman read a Procfile."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            out[name.strip()] = command.strip()
    return out


def phone(execution_id: int, i: int) -> str:
    """Recipient i of an execution: each execution its own numbers, so sandbox counts tell them apart."""
    return f"+14155{execution_id % 100:02d}{i:04d}"


def contacts(execution_id: int, n: int) -> list:
    return [(i, phone(execution_id, i), {"FirstName": "Ada"}) for i in range(1, n + 1)]


@dataclass
class Deployment:
    workdir: Path
    env: dict[str, str]
    db: Database
    sandbox: SandboxProcess
    instance: dg.DagsterInstance
    code_port: int
    web_port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    started: list[subprocess.Popen] = field(default_factory=list)

    # processes -------------------------------------------------------------------------------------
    def start(self, name: str) -> subprocess.Popen:
        """Start the Procfile's `name` line as a supervisor would (a shell, its own process group)."""
        with open(self.workdir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(["bash", "-c", "exec " + procfile_commands()[name]], env=self.env,
                                    cwd=project_root(), start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        self.started.append(proc)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
        """Signal the whole process group of `name` (a code server's run workers included) and reap it."""
        proc = self.procs.pop(name)
        _kill_group(proc, sig, timeout)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def wait(self, what: str, probe: Callable[[], Any], timeout: float = 120, every: float = 1.0,
             detail: Callable[[], str] | None = None) -> Any:
        """Poll `probe` until it returns something truthy; fail naming `what`, with `detail()` and the
        process logs."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}.log\n{self.log_tail(n, 12)}" for n in ("code", "daemon", "web"))
                more = detail() if detail is not None else ""
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{more}\n{logs}")
            time.sleep(every)

    # health --------------------------------------------------------------------------------------
    def code_server_env(self) -> dict[str, str]:
        """The code server's environment as it runs (deploy/code_server.py adds its shared forkserver's)."""
        return psutil.Process(self.procs["code"].pid).environ()

    def code_server_healthy(self) -> bool:
        """What `dagster api grpc-health-check` asks, without a process start per poll."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            with grpc.insecure_channel(f"127.0.0.1:{self.code_port}") as channel:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="DagsterApi"), timeout=5)
        except grpc.RpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    def webserver_up(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.web_port}/server_info", timeout=2).ok
        except requests.RequestException:
            return False

    # what the deployment did -------------------------------------------------------------------------
    def gql(self, query: str, variables: dict | None = None) -> dict:
        return _gql(self.web_port, query, variables)

    def runs(self, job: str | None = None, **tags: str) -> list[dg.DagsterRun]:
        return list(self.instance.get_runs(filters=dg.RunsFilter(job_name=job, tags=tags)))

    def describe_run(self, run_id: str) -> str:
        """A run's status and its last engine and log messages, for a failure message."""
        run = self.instance.get_run_by_id(run_id)
        if run is None:
            return f"run {run_id}: not found"
        lines = [f"run {run_id} ({run.job_name}): {run.status.value}, tags {dict(run.tags)}"]
        lines += [f"  {e.dagster_event_type or 'log'}: {e.message[:200]}"
                  for e in self.instance.all_logs(run_id)[-8:]]
        return "\n".join(lines)

    def execution(self, execution_id: int) -> tuple[str, str | None]:
        ex = self.db.tables.executions
        with self.db.connect() as conn:
            row = conn.execute(sa.select(ex.c.Status, ex.c.StatusReason)
                               .where(ex.c.ChannelExecutionID == execution_id)).one()
        return row[0], row[1]

    def texts_by_number(self, execution_id: int) -> dict[str, int]:
        prefix = phone(execution_id, 0)[:-4]
        return {to: n for to, n in self.sandbox.stats()["messages_created_by_to"].items() if to.startswith(prefix)}

    def add_execution(self, execution_id: int, n: int, channel: str = CHANNEL) -> None:
        create_execution(self.db, execution_id, channel, "Hello {{FirstName}}", contacts(execution_id, n))


def _kill_group(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def instance_yaml(overrides: dict[str, dict] | None = None) -> str:
    """deploy/dagster.prod.yaml, verbatim unless `overrides` names section keys to replace."""
    text = (DEPLOY / "dagster.prod.yaml").read_text()
    if not overrides:
        return text
    config = yaml.safe_load(text)
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    return yaml.safe_dump(config, sort_keys=False)


def _create_database(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')


def _drop_database(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')


@contextmanager
def running_deployment(workdir: Path, pipeline_url: str, sandbox: SandboxProcess, channels: list[dict],
                       before_start: Callable[[Deployment], None] | None = None,
                       extra_env: dict[str, str] | None = None,
                       instance_overrides: dict[str, dict] | None = None) -> Iterator[Deployment]:
    """Code server, daemon and webserver up and answering; `before_start` runs once the tables exist
    and before the daemon's first tick (insert what its first tick should find). `instance_overrides`
    replaces keys of sections of deploy/dagster.prod.yaml (a test's shorter polling intervals); without
    it the file is used verbatim."""
    server = normalise_url(pipeline_url)
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    dagster_db = f"tp_dagster_{uuid.uuid4().hex[:8]}"
    _create_database(admin, dagster_db)
    home = workdir / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(instance_overrides))
    channels_file = workdir / "channels.yaml"
    channels_file.write_text(yaml.safe_dump({"channels": channels}))
    prefix = f"dep{uuid.uuid4().hex[:6]}_"
    code_port, web_port = _free_port(), _free_port()
    pg_env = {"DAGSTER_PG_HOST": server.host or "127.0.0.1", "DAGSTER_PG_PORT": str(server.port or 5432),
              "DAGSTER_PG_USER": server.username or "postgres", "DAGSTER_PG_PASSWORD": server.password or "",
              "DAGSTER_PG_DB": dagster_db}
    saved = {key: os.environ.get(key) for key in pg_env}
    os.environ.update(pg_env)  # this process opens the same instance through the same file
    deployment = None
    try:
        env = {**child_environment(), **pg_env,
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "DAGSTER_HOME": str(home),
               "TWILIO_PIPELINE_DATABASE_URL": pipeline_url, "TWILIO_PIPELINE_TABLE_PREFIX": prefix,
               "TWILIO_PIPELINE_CHANNELS": str(channels_file), "TWILIO_PIPELINE_DATA_DIR": str(workdir / "data"),
               "TWILIO_PIPELINE_AUTOMATION": "on",
               "TWILIO_ACCOUNT_SID": sandbox.account_sid, "TWILIO_AUTH_TOKEN": sandbox.auth_token,
               "TWILIO_API_BASE_URL": sandbox.base_url, "TWILIO_BULKEXPORTS_BASE_URL": sandbox.base_url,
               "TWILIO_MESSAGING_BASE_URL": sandbox.base_url,
               "TWILIO_PIPELINE_CODE_SERVER_HOST": "127.0.0.1",
               "TWILIO_PIPELINE_CODE_SERVER_PORT": str(code_port), "PORT": str(web_port), **(extra_env or {})}
        db = Database(pipeline_url, prefix=prefix)
        instance = dg.DagsterInstance.from_config(str(home))
        deployment = Deployment(workdir, env, db, sandbox, instance, code_port, web_port)
        if before_start is not None:
            before_start(deployment)
        deployment.start("code")
        deployment.wait("the code server to serve", deployment.code_server_healthy, timeout=180)
        deployment.start("daemon")
        deployment.start("web")
        deployment.wait("the webserver's /server_info", deployment.webserver_up, timeout=180)
        yield deployment
    finally:
        if deployment is not None:
            for proc in deployment.started:
                if proc.poll() is None:
                    _kill_group(proc, signal.SIGTERM, 30)
            deployment.instance.dispose()
            deployment.db.dispose()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _drop_database(admin, dagster_db)
        admin.dispose()
