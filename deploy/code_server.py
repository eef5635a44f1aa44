"""Start the code location's gRPC code server, refusing a port that something already listens on.

gRPC binds its port with SO_REUSEPORT on Linux, so a second `dagster code-server start` on a busy port
starts without complaint and the kernel splits connections between the two servers (old and new code
answering at random). This wrapper first binds the port itself without SO_REUSEPORT: if anything holds
it, it prints one line and exits 1, so the supervisor shows the unit failed instead of two servers.

    python deploy/code_server.py            # TWILIO_PIPELINE_CODE_SERVER_HOST / _PORT (127.0.0.1:4266)
    python deploy/code_server.py --host 0.0.0.0 --port 4266

Before it becomes the code server it starts the forkserver its runs fork their steps from
(twilio_pipeline.step_forkserver): Dagster and the code location are imported once for all runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

EXIT_PORT_TAKEN = 1


def port_in_use(host: str, port: int) -> str | None:
    """Why `host:port` cannot be served by a new server, or None when it is free. SO_REUSEADDR only: a port
    left in TIME_WAIT by a server that just died is free, one with a live listener (gRPC's included) is not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default=os.environ.get("TWILIO_PIPELINE_CODE_SERVER_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("TWILIO_PIPELINE_CODE_SERVER_PORT", "4266")))
    args = p.parse_args(argv)
    reason = port_in_use(args.host, args.port)
    if reason:
        print(f"code server not started: {args.host}:{args.port} is already in use ({reason}); "
              "is another code server running? Stop it first", file=sys.stderr, flush=True)
        return EXIT_PORT_TAKEN
    # One preloaded forkserver for the step processes of every run this code server starts (see
    # twilio_pipeline.step_forkserver); it lives as long as the code server. Without it, runs start their own.
    try:
        from twilio_pipeline import step_forkserver

        os.environ.update(step_forkserver.start(list(step_forkserver.PRELOAD)))
    except Exception as exc:  # noqa: BLE001 - the code server still serves; each run starts its own forkserver
        print(f"code server: no shared step forkserver ({exc}); each run starts its own", file=sys.stderr, flush=True)
    # exec: the supervisor watches (and signals) the code server itself, not this wrapper.
    os.execv(sys.executable, [sys.executable, "-m", "dagster", "code-server", "start",
                              "-m", "twilio_pipeline.definitions", "-h", args.host, "-p", str(args.port)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
