"""Fixtures of the inbound tests: one sandbox per module (reset before each test), a client for it."""

from __future__ import annotations

import pytest

from twilio_pipeline.logs import ListLog
from twilio_pipeline.sandbox.process import SandboxProcess
from twilio_pipeline_tests.inbound.helpers import make_client


@pytest.fixture(scope="module")
def sandbox_server(tmp_path_factory):
    with SandboxProcess(tmp_path_factory.mktemp("sandbox"), status_delay_ms=50, access_log=False) as sb:
        yield sb


@pytest.fixture
def sb(sandbox_server):
    sandbox_server.reset()
    return sandbox_server


@pytest.fixture
def client(sb):
    with make_client(sb) as c:
        yield c


@pytest.fixture
def log():
    return ListLog()


@pytest.fixture
def other_db(db_url):
    """A second database on the same backend (own table prefix): the other path of a comparison."""
    import uuid

    from twilio_pipeline.db import Database

    database = Database(db_url, prefix=f"o{uuid.uuid4().hex[:6]}_")
    yield database
    database.dispose()
