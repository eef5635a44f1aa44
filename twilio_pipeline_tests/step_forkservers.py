"""A code server's shared step forkserver for tests: a process holding one (as the code server does after
deploy/code_server.py's exec), and the variables its run workers get."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from twilio_pipeline import step_forkserver
from twilio_pipeline.processes import pid_alive
from twilio_pipeline_tests.polling import wait_until

_HOLD = ("import json, sys; from twilio_pipeline import step_forkserver as s; "
         "print(json.dumps(s.start(list(s.PRELOAD))), flush=True); sys.stdin.read()")


@contextmanager
def shared_forkserver(env: dict[str, str] | None = None, cwd: str | None = None) -> Iterator[dict[str, str]]:
    """Start one in a holder process with `env`; yields the variables to give a run worker; stops it after
    and checks it left nothing behind (a test that kills the server removes its directory itself)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env, cwd=cwd)
    try:
        variables = json.loads(holder.stdout.readline())
        yield variables
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    pid = int(variables[step_forkserver.PID_ENV])
    wait_until(lambda: not pid_alive(pid), timeout=30,
               what="the shared forkserver to stop with the process holding it")
    directory = os.path.dirname(variables[step_forkserver.ADDRESS_ENV])
    wait_until(lambda: not os.path.exists(directory), timeout=10,
               what="the stopped forkserver to remove its socket's directory")
