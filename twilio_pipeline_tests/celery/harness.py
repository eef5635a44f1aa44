"""The celery side of the deployment harness (twilio_pipeline_tests/deployment/harness.py), shared by the
celery tests and the `celery` benchmark: `twilio-pipeline worker` processes, and a RabbitMQ virtual host
of its own per session (TWILIO_PIPELINE_TEST_RABBITMQ_URL), so that queued steps of one session never
reach the workers of another; deleted on the way out.

A vhost is created through the management API when it answers, else with `rabbitmqctl` when this user may
run it; when neither can, the URL's own vhost is used and its `dagster` queue purged before and after.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests

from twilio_pipeline.settings import project_root
from twilio_pipeline_tests.deployment.harness import Deployment

RABBITMQ_ENV = "TWILIO_PIPELINE_TEST_RABBITMQ_URL"


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))


def _management(url: str, method: str, vhost: str) -> bool:
    parts = urlsplit(url)
    auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    api = f"http://{parts.hostname or '127.0.0.1'}:15672/api"
    try:
        r = requests.request(method, f"{api}/vhosts/{quote(vhost, safe='')}", auth=auth, timeout=5)
        if method == "PUT" and r.ok:
            r = requests.put(f"{api}/permissions/{quote(vhost, safe='')}/{quote(auth[0], safe='')}", auth=auth,
                             json={"configure": ".*", "write": ".*", "read": ".*"}, timeout=5)
        return r.ok
    except requests.RequestException:
        return False


def _rabbitmqctl(*args: str) -> bool:
    if shutil.which("rabbitmqctl") is None:
        return False
    try:
        return subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _purge(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=10) as conn, contextlib.suppress(Exception):  # no such queue yet
        conn.default_channel.queue_purge("dagster")


def broker_reachable(url: str) -> str | None:
    """None when the broker answers, else why not (one line)."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


@contextmanager
def session_vhost(url: str) -> Iterator[str]:
    """The broker URL of a fresh vhost (or of the URL's own, purged, when none can be created)."""
    vhost = f"tp_test_{uuid.uuid4().hex[:8]}"
    user = unquote(urlsplit(url).username or "guest")
    how = None
    if _management(url, "PUT", vhost):
        how = "management"
    elif _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"):
        how = "rabbitmqctl"
    if how is None:
        _purge(url)
        try:
            yield url
        finally:
            _purge(url)
        return
    try:
        yield _with_vhost(url, vhost)
    finally:
        if how == "management":
            _management(url, "DELETE", vhost)
        else:
            _rabbitmqctl("delete_vhost", vhost)


def start_worker(d: Deployment, name: str, concurrency: int = 2) -> subprocess.Popen:
    """`twilio-pipeline worker` as the README starts it, in its own process group (killed with the
    deployment); returns once celery says it is ready."""
    with open(d.workdir / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(["twilio-pipeline", "worker", "--concurrency", str(concurrency)], env=d.env,
                                cwd=project_root(), start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    d.started.append(proc)
    d.procs[name] = proc
    d.wait(f"celery worker {name} to be ready",
           lambda: proc.poll() is not None or " ready." in d.log_tail(name, 200), timeout=180, every=0.5)
    if proc.poll() is not None:
        raise RuntimeError(f"celery worker {name} exited with {proc.returncode}: {d.log_tail(name)}")
    return proc


def stop_worker(d: Deployment, name: str, timeout: float = 120) -> int:
    """SIGTERM to the worker's main process (systemd's KillMode=mixed): its exit code."""
    proc = d.procs.pop(name)
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)
