"""The concurrency limit (429 / 20429, not processed), latency that never serialises requests,
and each injected fault, including the ambiguous 500s and timeouts that happen after creation."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .conftest import SENDER, TwilioHTTP
from .test_messages import assert_error


def _concurrently(sandbox, forms: list[dict], timeout: float = 30) -> list:
    """POST the creates all at once, one connection each; responses or exceptions, in order."""
    barrier = threading.Barrier(len(forms))
    url = f"{sandbox.base_url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json"

    def post(form):
        session = requests.Session()
        session.auth = (sandbox.account_sid, sandbox.auth_token)
        barrier.wait()
        try:
            return session.post(url, data=form, timeout=timeout)
        except requests.RequestException as exc:
            return exc

    with ThreadPoolExecutor(len(forms)) as pool:
        return list(pool.map(post, forms))


def test_concurrency_limit_answers_429_without_processing(make_sandbox):
    sandbox = make_sandbox(status_delay_ms=0, latency_ms=400, max_concurrency=4)
    forms = [{"To": f"+1555500{i:04d}", "From": SENDER, "Body": "x"} for i in range(12)]
    started = time.monotonic()
    responses = _concurrently(sandbox, forms)
    elapsed = time.monotonic() - started
    codes = [r.status_code for r in responses]
    assert set(codes) <= {201, 429} and codes.count(201) >= 1 and codes.count(429) >= 1
    for r in responses:
        if r.status_code == 429:
            assert_error(r, 429, 20429)
    stats = sandbox.stats()
    assert stats["throttled_429"] == codes.count(429) == stats["concurrency_429"]
    assert stats["max_in_flight"] <= 4
    created = {r.json()["to"] for r in responses if r.status_code == 201}
    assert set(stats["messages_created_by_to"]) == created  # the 429s created nothing
    assert len(sandbox.messages()) == codes.count(201)
    assert elapsed < 2.0  # the accepted ones waited 400 ms side by side, not one after another


def test_latency_is_applied_in_parallel(make_sandbox):
    sandbox = make_sandbox(status_delay_ms=0, latency_ms=300)
    forms = [{"To": f"+1555510{i:04d}", "From": SENDER, "Body": "x"} for i in range(20)]
    started = time.monotonic()
    responses = _concurrently(sandbox, forms)
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [201] * 20
    assert 0.3 <= elapsed < 1.2
    single = time.monotonic()
    TwilioHTTP(sandbox).get(f"/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json")
    assert time.monotonic() - single >= 0.3


def test_fault_429(make_sandbox):
    sandbox = make_sandbox(status_delay_ms=0, fault_429_rate=1.0)
    http = TwilioHTTP(sandbox)
    assert_error(http.create(To="+15555200001", From=SENDER, Body="x"), 429, 20429)
    assert_error(http.get(http.messages_path), 429, 20429)
    stats = sandbox.stats()  # admin endpoints are never faulted
    assert stats["faults_injected"]["429"] == 2 and stats["throttled_429"] == 2
    assert stats["messages_created_by_to"] == {}


def test_fault_500_before_and_after_create(make_sandbox):
    sandbox = make_sandbox(status_delay_ms=0, fault_500_rate=1.0, fault_after_create=0.5, seed=1)
    http = TwilioHTTP(sandbox)
    recipients = [f"+1555530{i:04d}" for i in range(30)]
    for to in recipients:
        assert_error(http.create(To=to, From=SENDER, Body="x"), 500, 20500)
    created = sandbox.stats()["messages_created_by_to"]
    # some creates happened before the 500 (the message exists), the others never did
    assert 0 < len(created) < len(recipients)
    assert set(created.values()) == {1}
    assert {m["to"] for m in sandbox.messages()} == set(created)


def test_fault_500_on_reads(make_sandbox):
    sandbox = make_sandbox(status_delay_ms=0, fault_500_rate=1.0)
    http = TwilioHTTP(sandbox)
    assert_error(http.get(http.messages_path), 500, 20500)
    assert_error(http.get(f"/2010-04-01/Accounts/{sandbox.account_sid}/IncomingPhoneNumbers.json"), 500, 20500)


def test_fault_connection_reset(make_sandbox):
    sandbox = make_sandbox(status_delay_ms=0, fault_reset_rate=1.0)
    http = TwilioHTTP(sandbox)
    with pytest.raises(requests.ConnectionError):
        http.create(To="+15555400001", From=SENDER, Body="x")
    with pytest.raises(requests.ConnectionError):
        http.get(http.messages_path)
    stats = sandbox.stats()
    assert stats["faults_injected"]["reset"] == 2
    assert stats["messages_created_by_to"] == {}


def test_fault_read_timeout_before_and_after_create(make_sandbox):
    sandbox = make_sandbox(status_delay_ms=0, fault_timeout_rate=1.0, fault_after_create=0.5,
                           timeout_s=3, seed=2)
    forms = [{"To": f"+1555550{i:04d}", "From": SENDER, "Body": "x"} for i in range(16)]
    started = time.monotonic()
    results = _concurrently(sandbox, forms, timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert all(isinstance(r, requests.exceptions.ReadTimeout) for r in results), results
    stats = sandbox.stats()
    assert stats["faults_injected"]["timeout"] == 16
    created = stats["messages_created_by_to"]
    assert 0 < len(created) < 16  # the ambiguous case: no answer, yet some messages exist
    assert {m["to"] for m in sandbox.messages()} == set(created)


def test_fault_rates_are_shares(make_sandbox):
    sandbox = make_sandbox(status_delay_ms=0, fault_429_rate=0.2, fault_500_rate=0.2, fault_after_create=0.0, seed=5)
    http = TwilioHTTP(sandbox)
    codes = [http.create(To=f"+1555560{i:04d}", From=SENDER, Body="x").status_code for i in range(100)]
    assert 8 < codes.count(429) < 35 and 8 < codes.count(500) < 35
    assert len(sandbox.messages()) == codes.count(201)
