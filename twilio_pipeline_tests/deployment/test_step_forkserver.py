"""The code server's shared step forkserver (twilio_pipeline.step_forkserver): a run worker of a code server
started by deploy/code_server.py forks its steps from the forkserver that code server preloaded, and starts
its own only when that forkserver is gone or holds other code - saying so in the run's event log. The
deployment suite (test_lifecycle.py) runs every run of the deployment through it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from twilio_pipeline import step_forkserver
from twilio_pipeline.processes import pid_alive
from twilio_pipeline_tests.polling import wait_until
from twilio_pipeline_tests.step_forkservers import shared_forkserver

pytestmark = pytest.mark.slow

@pytest.fixture
def shared_server():
    with shared_forkserver() as variables:
        yield variables


def _run(env_add: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_PIPELINE_STEP_FORKSERVER")}
    out = subprocess.run([sys.executable, "-m", "twilio_pipeline_tests.deployment.forkserver_job"],
                         env={**env, **env_add}, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["success"]
    return result


def test_a_run_forks_its_steps_from_the_code_servers_preloaded_forkserver(shared_server):
    server = int(shared_server[step_forkserver.PID_ENV])
    first, second = _run(shared_server), _run(shared_server)
    assert first["step"]["ppid"] == server and second["step"]["ppid"] == server
    assert any(f"code server's preloaded forkserver (pid {server})" in e for e in first["events"])
    # The server's own SIGTERM handler is not the steps': they react to signals as a run's own ones do.
    assert first["step"]["sigterm"] == _run({})["step"]["sigterm"]


def test_a_run_starts_its_own_forkserver_when_the_code_changed_since_the_shared_one_preloaded_it(shared_server):
    stale = {**shared_server, step_forkserver.CODE_ENV: "0" * 32}
    result = _run(stale)
    assert result["step"]["ppid"] not in (int(shared_server[step_forkserver.PID_ENV]), result["run_worker"])
    assert any("forkserver of this run: the code changed" in e for e in result["events"])


def test_a_run_starts_its_own_forkserver_when_the_shared_one_is_gone(shared_server):
    server = int(shared_server[step_forkserver.PID_ENV])
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: not pid_alive(server), timeout=10, what="the server to die")
    result = _run(shared_server)
    assert result["step"]["ppid"] != server
    assert any("forkserver of this run: the code server's forkserver" in e and "is not running" in e
               for e in result["events"])
    # a killed server cannot remove its directory (a code server starting meanwhile may have)
    shutil.rmtree(os.path.dirname(shared_server[step_forkserver.ADDRESS_ENV]), ignore_errors=True)


def test_without_a_code_server_wrapper_each_run_has_its_own_forkserver():
    result = _run({})
    assert result["step"]["ppid"] != result["run_worker"]  # a forkserver's child, not the run worker's
    assert any("no shared forkserver" in e for e in result["events"])


def test_a_code_server_starting_removes_the_directories_of_forkservers_killed_before(tmp_path):
    """A forkserver killed by a signal (systemd stopping the unit kills the whole group) cannot remove its
    socket's directory; the next code server to start removes it. A directory still without a pid (a
    server starting this very moment) is left alone unless it is older than a minute."""
    with shared_forkserver() as first:
        killed = int(first[step_forkserver.PID_ENV])
        left = os.path.dirname(first[step_forkserver.ADDRESS_ENV])
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: not pid_alive(killed), timeout=10, what="the first server to die")
        assert os.path.isdir(left)
        starting = tempfile.mkdtemp(prefix=step_forkserver.DIR_PREFIX)
        abandoned = tempfile.mkdtemp(prefix=step_forkserver.DIR_PREFIX)
        old = time.time() - step_forkserver.UNSTARTED_GRACE_S - 5
        os.utime(abandoned, (old, old))
        try:
            with shared_forkserver() as second:
                assert not os.path.exists(left) and not os.path.exists(abandoned)
                assert os.path.isdir(starting)
                mine = os.path.dirname(second[step_forkserver.ADDRESS_ENV])
                recorded = Path(mine, step_forkserver.PID_FILE).read_text()
                assert recorded == second[step_forkserver.PID_ENV]
        finally:
            shutil.rmtree(starting, ignore_errors=True)
            shutil.rmtree(abandoned, ignore_errors=True)


def test_a_sigterm_to_the_code_servers_group_stops_the_forkserver_and_removes_its_directory():
    """systemd stops a unit (and honcho its processes) with SIGTERM to the whole group: the forkserver
    then exits as it does when the code server is gone, removing its socket's directory."""
    with shared_forkserver() as variables:
        server = int(variables[step_forkserver.PID_ENV])
        directory = os.path.dirname(variables[step_forkserver.ADDRESS_ENV])
        wait_until(lambda: _catches(server, signal.SIGTERM), timeout=30, what="the server to start up")
        os.kill(server, signal.SIGTERM)
        wait_until(lambda: not pid_alive(server), timeout=10, what="the server to stop on SIGTERM")
        wait_until(lambda: not os.path.exists(directory), timeout=10, what="its directory to be removed")


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler installed for `sig` (/proc's SigCgt mask)."""
    with open(f"/proc/{pid}/status") as fh:
        mask = next(line.split()[1] for line in fh if line.startswith("SigCgt:"))
    return bool(int(mask, 16) & (1 << (sig - 1)))


def test_a_process_forked_from_the_shared_server_has_sigterms_default_action(shared_server):
    """The server exits cleanly on SIGTERM; what it forks must not inherit that: a step killed with SIGTERM
    before Dagster installs its own handler dies as it would from a run's own forkserver."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_PIPELINE_STEP_FORKSERVER")}
    out = subprocess.run([sys.executable, "-m", "twilio_pipeline_tests.deployment.sigterm_probe"],
                         env={**env, **shared_server}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    attached, probe = out.stdout.strip().splitlines()[-2:]
    assert "code server's preloaded forkserver" in attached
    ppid, default = probe.split()
    assert (int(ppid), default) == (int(shared_server[step_forkserver.PID_ENV]), "True")
