"""The embedded sandbox: one detached server per store, found again by every later process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from twilio_pipeline.sandbox.credentials import (
    SANDBOX_ACCOUNT_SID,
    SANDBOX_AUTH_TOKEN,
    SANDBOX_MESSAGING_SERVICE_SID,
    SANDBOX_POOL_NUMBERS,
)
from twilio_pipeline.sandbox.embedded import ensure_embedded_sandbox, stop_embedded_sandbox
from twilio_pipeline.sandbox.process import child_environment

ENSURE = (
    "import json, sys; from pathlib import Path; "
    "from twilio_pipeline.sandbox.embedded import ensure_embedded_sandbox; "
    "s = ensure_embedded_sandbox(Path(sys.argv[1])); "
    "print(json.dumps({'pid': s.pid, 'base_url': s.base_url}))"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


@pytest.fixture
def data_dir(tmp_path):
    yield tmp_path
    stop_embedded_sandbox(tmp_path)


def _ensure_in_subprocesses(data_dir: Path, count: int) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", ENSURE, str(data_dir)], stdout=subprocess.PIPE,
                              env=child_environment(), text=True) for _ in range(count)]
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_started_once_and_found_again(data_dir):
    first = ensure_embedded_sandbox(data_dir)
    assert first.account_sid == SANDBOX_ACCOUNT_SID and first.auth_token == SANDBOX_AUTH_TOKEN
    assert first.messaging_service_sid == SANDBOX_MESSAGING_SERVICE_SID
    assert first.pool_numbers == SANDBOX_POOL_NUMBERS
    assert first.store == data_dir.resolve() / "sandbox"
    assert ensure_embedded_sandbox(data_dir) == first
    # another process finds the same server
    assert _ensure_in_subprocesses(data_dir, 1) == [{"pid": first.pid, "base_url": first.base_url}]
    response = requests.post(
        f"{first.base_url}/2010-04-01/Accounts/{first.account_sid}/Messages.json",
        auth=(first.account_sid, first.auth_token),
        data={"To": "+15559000001", "From": SANDBOX_POOL_NUMBERS[0], "Body": "demo"}, timeout=10,
    )
    assert response.status_code == 201
    cmdline = Path(f"/proc/{first.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--status-delay-ms" in cmdline and b"500" in cmdline and b"--reply-rate" in cmdline

    assert stop_embedded_sandbox(data_dir) is True
    assert not _alive(first.pid)
    assert stop_embedded_sandbox(data_dir) is False

    # the next start finds the message in the store
    again = ensure_embedded_sandbox(data_dir)
    assert again.pid != first.pid
    listed = requests.get(f"{again.base_url}/2010-04-01/Accounts/{again.account_sid}/Messages.json",
                          auth=(again.account_sid, again.auth_token), timeout=10).json()
    assert [m["to"] for m in listed["messages"]] == ["+15559000001"]


def test_concurrent_starts_share_one_server_that_outlives_them(data_dir):
    results = _ensure_in_subprocesses(data_dir, 3)
    assert len({r["pid"] for r in results}) == 1
    pid = results[0]["pid"]
    time.sleep(0.2)
    assert _alive(pid)  # the processes that started it have exited
    assert ensure_embedded_sandbox(data_dir).pid == pid


def test_a_stale_server_file_is_replaced(data_dir):
    store = data_dir / "sandbox"
    store.mkdir()
    (store / "server.json").write_text(json.dumps({"pid": 999_999, "base_url": "http://127.0.0.1:9", "port": 9}))
    sandbox = ensure_embedded_sandbox(data_dir)
    assert sandbox.pid != 999_999
    assert json.loads((store / "server.json").read_text())["pid"] == sandbox.pid


def test_the_channel_files_numbers_are_the_embedded_accounts_own(data_dir):
    """Sandbox mode plays the user's account: its channel numbers send, any other From is 21606."""
    number = "+15017129999"
    sandbox = ensure_embedded_sandbox(data_dir)
    auth = (sandbox.account_sid, sandbox.auth_token)

    def url(sb, resource: str = "Messages") -> str:
        return f"{sb.base_url}/2010-04-01/Accounts/{sb.account_sid}/{resource}.json"

    def create(sb) -> requests.Response:
        return requests.post(url(sb), auth=auth, data={"To": "+15559000002", "From": number, "Body": "x"}, timeout=10)

    assert create(sandbox).json()["code"] == 21606
    assert ensure_embedded_sandbox(data_dir, senders=[number, "24680"]) == sandbox
    assert create(sandbox).status_code == 201
    listed = requests.get(url(sandbox, "IncomingPhoneNumbers"), auth=auth, timeout=10).json()
    assert number in [n["phone_number"] for n in listed["incoming_phone_numbers"]]
    stop_embedded_sandbox(data_dir)  # bought numbers survive a restart
    again = ensure_embedded_sandbox(data_dir)
    assert again.pid != sandbox.pid and create(again).status_code == 201
