"""A code server's shared step forkserver for tests: a process holding one (as the code server does after
deploy/code_server.py's exec), and the variables its run workers get."""

from __future__ import annotations

import json
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
    """Start one in a holder process with `env`; yields the variables to give a run worker; stops it after."""
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
