"""Fixtures of the sandbox tests: real server processes (SandboxProcess) and a bare HTTP client.

Servers are costly to start (about half a second), so the common configurations are shared by the
session and emptied with /_sandbox/reset before each test that uses them.
"""

from __future__ import annotations

import email.utils
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from twilio_pipeline.sandbox.process import SandboxProcess

API_KEY_SID = "SK" + "1" * 32
API_KEY_SECRET = "sandbox-api-key-secret"
SENDER = "+15005550006"


def rfc2822_ts(value: str) -> float:
    return email.utils.parsedate_to_datetime(value).timestamp()


class TwilioHTTP:
    """Plain HTTP against the sandbox, as any Twilio client talks to Twilio."""

    def __init__(self, sandbox: SandboxProcess):
        self.sandbox = sandbox
        self.base = sandbox.base_url
        self.account = sandbox.account_sid
        self.session = requests.Session()
        self.session.auth = (sandbox.account_sid, sandbox.auth_token)

    @property
    def messages_path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account}/Messages.json"

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(urljoin(self.base, path), timeout=30, **kwargs)

    def post(self, path: str, data=None, **kwargs) -> requests.Response:
        return self.session.post(urljoin(self.base, path), data=data, timeout=30, **kwargs)

    def create(self, **form) -> requests.Response:
        return self.post(self.messages_path, data=form)

    def send(self, to: str, body: str = "hello", frm: str | None = SENDER, **extra) -> dict:
        form = {"To": to, "Body": body, **extra}
        if frm is not None:
            form["From"] = frm
        response = self.create(**form)
        assert response.status_code == 201, response.text
        return response.json()

    def fetch(self, sid: str) -> dict:
        response = self.get(f"/2010-04-01/Accounts/{self.account}/Messages/{sid}.json")
        assert response.status_code == 200, response.text
        return response.json()

    def list_page(self, **params) -> dict:
        response = self.get(self.messages_path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def list_all(self, **params) -> list[dict]:
        page = self.list_page(**params)
        out = list(page["messages"])
        while page["next_page_uri"]:
            response = self.get(page["next_page_uri"])
            assert response.status_code == 200, response.text
            page = response.json()
            out.extend(page["messages"])
        return out


def _start(directory: Path, **flags) -> SandboxProcess:
    return SandboxProcess(directory, **flags).start()


@pytest.fixture(scope="session")
def instant_sandbox(tmp_path_factory):
    """Statuses settle at once (status delay 0); also accepts an API key."""
    sandbox = _start(tmp_path_factory.mktemp("instant"), status_delay_ms=0,
                     api_key_sid=API_KEY_SID, api_key_secret=API_KEY_SECRET)
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="session")
def stepped_sandbox(tmp_path_factory):
    """One lifecycle step per simulated second; tests move the clock instead of waiting."""
    sandbox = _start(tmp_path_factory.mktemp("stepped"), status_delay_ms=1000)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def api(instant_sandbox) -> TwilioHTTP:
    instant_sandbox.reset()
    return TwilioHTTP(instant_sandbox)


@pytest.fixture
def stepped(stepped_sandbox) -> TwilioHTTP:
    stepped_sandbox.reset()
    return TwilioHTTP(stepped_sandbox)


@pytest.fixture
def make_sandbox(tmp_path):
    """Start a sandbox with its own flags; stopped at the end of the test."""
    started: list[SandboxProcess] = []

    def make(name: str = "sb", **flags) -> SandboxProcess:
        sandbox = SandboxProcess(tmp_path / name, **flags).start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()
