"""`SandboxProcess`: the sandbox as a child process, for tests, benchmarks and scripted runs.

It runs the real server (`python -m twilio_pipeline.sandbox`) on a free port with its own store,
so whatever talks to it goes through real HTTP exactly as it would to Twilio.

    with SandboxProcess(tmp_path, latency_ms=20, fault_500_rate=0.02) as sandbox:
        client = TwilioClient(base_url=sandbox.base_url, account_sid=sandbox.account_sid, ...)
        ...
        assert sandbox.stats()["throttled_429"] == 0
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlencode

from twilio_pipeline.sandbox.credentials import (
    SANDBOX_ACCOUNT_SID,
    SANDBOX_AUTH_TOKEN,
    SANDBOX_MESSAGING_SERVICE_SID,
    SANDBOX_POOL_NUMBERS,
)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding twilio_pipeline/


def child_environment() -> dict[str, str]:
    """The environment for a sandbox child: the package importable, no Twilio variables leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def flag_arguments(flags: dict[str, object]) -> list[str]:
    """Keyword arguments as CLI flags: latency_ms=20 -> --latency-ms 20, access_log=False -> --no-access-log."""
    args: list[str] = []
    for key, value in flags.items():
        if value is None:
            continue
        name = "--" + key.replace("_", "-")
        if key == "subaccount":  # repeatable: SID:TOKEN strings or (SID, TOKEN) pairs
            for item in [value] if isinstance(value, str) else value:
                args.extend([name, item if isinstance(item, str) else ":".join(item)])
            continue
        if isinstance(value, bool):
            if key == "access_log":
                if not value:
                    args.append("--no-access-log")
                continue
            if value:
                args.append(name)
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        args.extend([name, str(value)])
    return args


class SandboxError(RuntimeError):
    """The sandbox did not start, or an admin call failed."""


class SandboxClientError(SandboxError):
    def __init__(self, status: int, body: str):
        super().__init__(f"sandbox answered {status}: {body[:300]}")
        self.status = status
        self.body = body


def admin_call(base_url: str, account_sid: str, auth_token: str, method: str, path: str,
               form: dict | None = None, json_body: object = None, timeout: float = 60.0):
    """One authenticated request to the sandbox; the parsed JSON answer."""
    data = None
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode(),
        "Accept": "application/json",
    }
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urlencode({k: v for k, v in form.items() if v is not None}).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        raise SandboxClientError(exc.code, exc.read().decode(errors="replace")) from None
    return json.loads(payload) if payload else None


class SandboxProcess:
    """A sandbox server in a child process, with its store in `directory` (or `store`)."""

    def __init__(self, directory: Path | str, *, account_sid: str = SANDBOX_ACCOUNT_SID,
                 auth_token: str = SANDBOX_AUTH_TOKEN, store: Path | str | None = None,
                 host: str = "127.0.0.1", startup_timeout_s: float = 30.0, **flags: object):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.store = Path(store) if store is not None else self.directory / "sandbox"
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.flags = flags
        self.startup_timeout_s = startup_timeout_s
        self.messaging_service_sid = str(flags.get("messaging_service_sid") or SANDBOX_MESSAGING_SERVICE_SID)
        pool = flags.get("pool_numbers")
        if isinstance(pool, str):
            pool = [p.strip() for p in pool.split(",") if p.strip()]
        self.pool_numbers = tuple(pool) if pool else tuple(SANDBOX_POOL_NUMBERS)
        self.log_path = self.directory / "sandbox.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def command(self, port_file: Path) -> list[str]:
        return [
            sys.executable, "-m", "twilio_pipeline.sandbox",
            "--host", self.host, "--port", "0", "--port-file", str(port_file),
            "--store", str(self.store), "--account-sid", self.account_sid,
            "--auth-token", self.auth_token, *flag_arguments(self.flags),
        ]

    def start(self) -> SandboxProcess:
        """Start the server (again, after a stop: same store) and wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            raise SandboxError("the sandbox is already running")
        port_file = self.directory / f"sandbox-{uuid.uuid4().hex[:8]}.port"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(port_file), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=child_environment(), cwd=str(self.directory),
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise SandboxError(f"the sandbox exited with {self.proc.returncode}: {self.log_tail()}")
            if port_file.exists():
                text = port_file.read_text().strip()
                if text.isdigit():
                    self.port = int(text)
                    try:
                        self.stats()
                        break
                    except (OSError, SandboxError):
                        pass
            if time.monotonic() > deadline:
                self.kill()
                raise SandboxError(f"the sandbox did not answer within {self.startup_timeout_s} s: {self.log_tail()}")
            time.sleep(0.02)
        port_file.unlink(missing_ok=True)
        return self

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise SandboxError("the sandbox is not started")
        return self.proc.pid

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise SandboxError("the sandbox is not started")
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (the server flushes its state and exits 0) and wait; SIGKILL if it hangs."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, with no flush (what the write-behind journal has is what survives)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- admin helpers -------------------------------------------------------------------------
    def request(self, method: str, path: str, form: dict | None = None, json_body: object = None):
        return admin_call(self.base_url, self.account_sid, self.auth_token, method, path, form, json_body)

    def stats(self) -> dict:
        return self.request("GET", "/_sandbox/stats")

    def messages(self, to: str | None = None, direction: str | None = None) -> list[dict]:
        query = urlencode({k: v for k, v in (("To", to), ("direction", direction)) if v})
        return self.request("GET", "/_sandbox/messages" + (f"?{query}" if query else ""))

    def inbound(self, from_: str, to: str, body: str, date_sent: str | None = None) -> dict:
        """Inject one inbound message (optionally back-dated, ISO 8601); its Message resource."""
        return self.request("POST", "/_sandbox/inbound",
                            form={"From": from_, "To": to, "Body": body, "DateSent": date_sent})

    def inbound_bulk(self, items: list[dict]) -> dict:
        """Inject many inbound messages ({From, To, Body, DateSent?} each) in one request."""
        return self.request("POST", "/_sandbox/inbound", json_body=list(items))

    def advance_clock(self, seconds: float) -> dict:
        return self.request("POST", "/_sandbox/clock", form={"advance_s": str(seconds)})

    def clock(self) -> dict:
        return self.request("GET", "/_sandbox/clock")

    def reset(self) -> None:
        self.request("POST", "/_sandbox/reset")
