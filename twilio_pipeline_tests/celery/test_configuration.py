"""Choosing the executor and the shared sandbox by configuration (docs/reference.md "Environment"): bad values are
one line, the CLI's in-process runs work whatever the executor, and sandbox mode on several hosts uses the
one sandbox TWILIO_PIPELINE_SANDBOX_URL names instead of starting its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import Database
from twilio_pipeline.sandbox.process import SandboxProcess
from twilio_pipeline.settings import SettingsError, executor_settings, project_root

CHANNEL = "Shared Channel"


def test_the_executor_settings_default_and_refuse_a_bad_value_in_one_line():
    default = executor_settings({})
    assert (default.name, default.celery_broker, default.celery_backend) == (
        "multiprocess", "amqp://guest:guest@127.0.0.1:5672//", "rpc://")
    assert executor_settings({"TWILIO_PIPELINE_EXECUTOR": "in_process"}).name == "in_process"
    with pytest.raises(SettingsError) as bad:
        executor_settings({"TWILIO_PIPELINE_EXECUTOR": "kubernetes"})
    assert "TWILIO_PIPELINE_EXECUTOR" in str(bad.value) and "\n" not in str(bad.value)
    with pytest.raises(SettingsError, match="TWILIO_PIPELINE_CELERY_BROKER"):
        executor_settings({"TWILIO_PIPELINE_EXECUTOR": "celery", "TWILIO_PIPELINE_CELERY_BROKER": "rabbit"})


@pytest.mark.slow
@pytest.mark.parametrize("value, name", [("", "multiprocess"), ("in_process", "in_process"), ("celery", "celery")])
def test_every_job_of_the_code_location_gets_the_configured_executor(value, name):
    if name == "celery":
        pytest.importorskip("dagster_celery", reason="the celery extra is not installed")
    code = ("from twilio_pipeline.definitions import defs\n"
            "print(sorted({defs.resolve_job_def(j).executor_def.name for j in "
            "('outbound_job', 'channel_sync_job', 'execution_sync_job', '__ASSET_JOB')}))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TWILIO_PIPELINE_EXECUTOR": value},
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr([name])


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(project_root() / "dagster.yaml", home / "dagster.yaml")
    channels = tmp / "channels.yaml"
    channels.write_text(yaml.safe_dump({"channels": [{"name": CHANNEL, "from_number": "+15005550006"}]}))
    db_url = f"sqlite:///{tmp / 'shared.db'}"
    db = Database(db_url)
    create_execution(db, 41, CHANNEL, "Hi {{FirstName}}", [(i, f"+1415666{i:04d}", {"FirstName": "Ada"})
                                                            for i in range(1, 6)])
    create_execution(db, 42, CHANNEL, "Hi", [(1, "+14156669999", None)])
    db.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
    env.update(DAGSTER_HOME=str(home), TWILIO_PIPELINE_DATABASE_URL=db_url, TWILIO_PIPELINE_CHANNELS=str(channels),
               TWILIO_PIPELINE_DATA_DIR=str(tmp / "data"), PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    with SandboxProcess(tmp / "sandbox", status_delay_ms=50) as sandbox:  # the sandbox's own credentials
        yield {"env": {**env, "TWILIO_PIPELINE_SANDBOX_URL": sandbox.base_url}, "sandbox": sandbox, "tmp": tmp}


def _cli(env, *args):
    return subprocess.run([sys.executable, "-m", "twilio_pipeline.cli", *args], env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.mark.slow
def test_a_cli_send_in_sandbox_mode_uses_the_shared_sandbox_whatever_the_executor(shared):
    pytest.importorskip("dagster_celery", reason="the celery extra is not installed")
    out = _cli({**shared["env"], "TWILIO_PIPELINE_EXECUTOR": "celery",
                "TWILIO_PIPELINE_CELERY_BROKER": "amqp://guest:guest@127.0.0.1:1//"}, "send", "41")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sandbox mode" in out.stdout
    created = shared["sandbox"].stats()["messages_created_by_to"]
    assert {to: n for to, n in created.items() if to.startswith("+1415666")} == {
        f"+1415666{i:04d}": 1 for i in range(1, 6)}
    assert not (shared["tmp"] / "data" / "sandbox" / "server.json").exists()  # no embedded sandbox started


@pytest.mark.slow
def test_a_bad_executor_or_an_unreachable_shared_sandbox_is_one_line(shared):
    out = _cli({**shared["env"], "TWILIO_PIPELINE_EXECUTOR": "k8s"}, "send", "42")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().count("\n") == 0 and "TWILIO_PIPELINE_EXECUTOR" in out.stderr, out.stderr
    out = _cli({**shared["env"], "TWILIO_PIPELINE_EXECUTOR": "k8s"}, "worker")
    assert out.returncode == 2 and "TWILIO_PIPELINE_EXECUTOR" in out.stderr, out.stderr
    out = _cli({**shared["env"], "TWILIO_PIPELINE_SANDBOX_URL": "http://127.0.0.1:1"}, "send", "42")
    assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert "TWILIO_PIPELINE_SANDBOX_URL" in out.stdout + out.stderr, out.stdout + out.stderr
    assert shared["sandbox"].stats()["messages_created_by_to"].get("+14156669999") is None
