"""A process forked from the code server's shared forkserver reports its SIGTERM disposition as it starts,
before any library installs a handler (test_step_forkserver.py). Run with the shared server's variables."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys

from twilio_pipeline import step_forkserver


def _report(queue) -> None:
    queue.put((os.getppid(), signal.getsignal(signal.SIGTERM) == signal.SIG_DFL))


def main() -> None:
    print(step_forkserver.attach(), flush=True)
    ctx = multiprocessing.get_context("forkserver")
    queue = ctx.Queue()
    child = ctx.Process(target=_report, args=(queue,))
    child.start()
    ppid, default = queue.get(timeout=60)
    child.join(60)
    print(f"{ppid} {default}")


if __name__ == "__main__":
    sys.exit(main())
