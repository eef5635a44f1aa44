"""The embedded sandbox: one background server per store, shared by every process that needs it.

With no Twilio account configured the pipeline runs against this. The first process that needs it
starts it detached (its own session, so it outlives that process); every later process finds it
again through `server.json` beside the store's data (pid, port), after checking that the pid is
alive and that the server on that port answers as that pid and that store. A file lock around the
check-and-start makes two processes starting at once get the same server, and the store's own lock
makes sure no two servers ever open one store.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from twilio_pipeline.sandbox.credentials import (
    SANDBOX_ACCOUNT_SID,
    SANDBOX_AUTH_TOKEN,
    SANDBOX_MESSAGING_SERVICE_SID,
    SANDBOX_POOL_NUMBERS,
)
from twilio_pipeline.sandbox.process import (
    SandboxClientError,
    SandboxError,
    admin_call,
    child_environment,
    flag_arguments,
)

# Demo-friendly behaviour: statuses move quickly, a few messages fail, some recipients reply.
EMBEDDED_FLAGS: dict[str, object] = {
    "status_delay_ms": 500,
    "undelivered_rate": 0.03,
    "failed_rate": 0.02,
    "reply_rate": 0.1,
    "reply_keywords": "MORE",
    "access_log": False,
}
SANDBOX_URL_ENV = "TWILIO_PIPELINE_SANDBOX_URL"  # a running sandbox every host shares (docs/reference.md "Environment")
STORE_DIR = "sandbox"
SERVER_FILE = "server.json"
START_LOCK = "sandbox.start.lock"
LOG_FILE = "sandbox.log"

_children: dict[int, subprocess.Popen] = {}  # servers this process started: reaped when stopped


@dataclass(frozen=True)
class EmbeddedSandbox:
    base_url: str
    account_sid: str
    auth_token: str
    messaging_service_sid: str
    pool_numbers: tuple[str, ...]
    pid: int
    store: Path


def _alive(pid: int) -> bool:
    """True while `pid` runs on this host; a zombie (exited, not reaped) counts as gone.

    The sandbox's own check, not the pipeline's: the sandbox imports nothing outside itself."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _find(store: Path) -> EmbeddedSandbox | None:
    """The live server of this store, if server.json names one that answers as itself."""
    try:
        info = json.loads((store / SERVER_FILE).read_text(encoding="utf-8"))
        pid, base_url = int(info["pid"]), str(info["base_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pid):
        return None
    try:
        stats = admin_call(base_url, SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN, "GET", "/_sandbox/stats", timeout=5)
    except SandboxClientError as exc:
        if exc.status != 401:
            return None
        raise SandboxError(
            f"the sandbox of {store} (pid {pid}) refuses the sandbox credentials; "
            "it was started by hand with others: stop it first"
        ) from None
    except (OSError, SandboxError, ValueError):
        return None
    if stats.get("pid") != pid or Path(stats.get("store") or "") != store:
        return None
    return EmbeddedSandbox(base_url, SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN,
                           SANDBOX_MESSAGING_SERVICE_SID, tuple(SANDBOX_POOL_NUMBERS), pid, store)


def _log_tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _start(data_dir: Path, store: Path, startup_timeout_s: float) -> EmbeddedSandbox:
    (store / SERVER_FILE).unlink(missing_ok=True)
    log_path = store / LOG_FILE
    command = [
        sys.executable, "-m", "twilio_pipeline.sandbox", "--host", "127.0.0.1", "--port", "0",
        "--store", str(store), "--account-sid", SANDBOX_ACCOUNT_SID, "--auth-token", SANDBOX_AUTH_TOKEN,
        *flag_arguments(EMBEDDED_FLAGS),
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=child_environment(), cwd=str(data_dir), start_new_session=True, close_fds=True,
        )
    _children[proc.pid] = proc
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _children.pop(proc.pid, None)
            raise SandboxError(f"the embedded sandbox exited with {proc.returncode}: {_log_tail(log_path)}")
        found = _find(store)
        if found is not None and found.pid == proc.pid:
            return found
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    _children.pop(proc.pid, None)
    raise SandboxError(f"the embedded sandbox did not answer within {startup_timeout_s} s: {_log_tail(log_path)}")


def shared_sandbox(base_url: str) -> EmbeddedSandbox:
    """The running sandbox at `base_url` (TWILIO_PIPELINE_SANDBOX_URL), checked to answer with the sandbox
    credentials: when a run's steps execute on several hosts, each host's own embedded sandbox would be a
    different Twilio (a send on one host, its sync on another would never meet)."""
    base_url = base_url.strip().rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise SandboxError(f"{SANDBOX_URL_ENV} must be an http(s):// URL, not {base_url!r}")
    try:
        stats = admin_call(base_url, SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN, "GET", "/_sandbox/stats", timeout=10)
    except SandboxClientError as exc:
        raise SandboxError(f"the sandbox at {SANDBOX_URL_ENV}={base_url} answered HTTP {exc.status}"
                           + (" (it was started with other credentials than the sandbox's own)"
                              if exc.status == 401 else "")) from None
    except (OSError, ValueError) as exc:
        raise SandboxError(f"no sandbox answers at {SANDBOX_URL_ENV}={base_url}: {exc}") from None
    if not isinstance(stats, dict) or "messages_created_by_to" not in stats:
        raise SandboxError(f"{SANDBOX_URL_ENV}={base_url} does not answer as a sandbox (no /_sandbox/stats)")
    return EmbeddedSandbox(base_url, SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN, SANDBOX_MESSAGING_SERVICE_SID,
                           tuple(SANDBOX_POOL_NUMBERS), int(stats.get("pid") or 0), Path(stats.get("store") or ""))


def ensure_embedded_sandbox(data_dir: Path, startup_timeout_s: float = 30.0,
                            senders: Iterable[str] = ()) -> EmbeddedSandbox:
    """The running sandbox of `data_dir/sandbox/`, started (detached) when there is none; or, when
    TWILIO_PIPELINE_SANDBOX_URL is set, that running sandbox (nothing is started).

    `senders`: phone numbers the channel file sends from. The embedded sandbox plays the user's own
    account, so it buys them (POST IncomingPhoneNumbers) and they send; any other From still gets 21606.
    """
    shared = (os.environ.get(SANDBOX_URL_ENV) or "").strip()
    if shared:
        found = shared_sandbox(shared)
    else:
        data_dir = Path(data_dir).resolve()
        store = data_dir / STORE_DIR
        store.mkdir(parents=True, exist_ok=True)
        with (data_dir / START_LOCK).open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = _find(store) or _start(data_dir, store, startup_timeout_s)
    for number in dict.fromkeys(n for n in senders if n and n.startswith("+")):
        admin_call(found.base_url, found.account_sid, found.auth_token, "POST",
                   f"/2010-04-01/Accounts/{found.account_sid}/IncomingPhoneNumbers.json",
                   form={"PhoneNumber": number}, timeout=30)
    return found


def stop_embedded_sandbox(data_dir: Path, timeout_s: float = 15.0) -> bool:
    """Stop the sandbox of `data_dir` (SIGTERM: it flushes its state); False when none was running."""
    data_dir = Path(data_dir).resolve()
    store = data_dir / STORE_DIR
    if not store.exists():
        return False
    with (data_dir / START_LOCK).open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = _find(store)
        except SandboxError:
            found = None
        if found is None:
            return False
        os.kill(found.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(found.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(found.pid):
            os.kill(found.pid, signal.SIGKILL)
        child = _children.pop(found.pid, None)
        if child is not None:
            child.wait()
        return True
