"""Concurrent runs: two `twilio-pipeline send` of one execution at once (a double click, a sensor plus a
manual run) send one message per recipient; the other run exits cleanly - 3 naming the run that holds
the execution, or 0 saying there was nothing new to send when it came after the first had sent.

The first pair starts on a fresh Dagster instance, so both processes also create its storage at once.
A run refused inside Dagster (it passed the CLI's check in the same instant as the other) logs its
step failure as one line, without a stack; the CLI's own answer is the one line on stdout."""

from __future__ import annotations

import re
import time

import pytest

from twilio_pipeline.audience import create_execution
from twilio_pipeline_tests.reliability.conftest import (
    assert_identities,
    assert_no_traceback,
    assert_sid_by_sid,
    channel,
    mixed_audience,
)

RUN_ID = re.compile(r"Run ([0-9a-f-]{36}) succeeded\.")
NOTHING_NEW = "nothing new to send"


def _run_id(result) -> str:
    match = RUN_ID.search(result.stdout)
    assert match, result.describe()
    return match.group(1)


def _busy_names(result, run_id: str) -> None:
    """Exit 3, one clear line naming the run that holds the execution, no traceback."""
    assert result.returncode == 3, result.describe()
    assert f"being sent by run {run_id}" in result.output, result.describe()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_sends_of_one_execution_send_each_message_once(make_sandbox, make_cli):
    sb = make_sandbox(latency_ms=20, seed=2)
    # The second channel is rate limited so that its send is still under way when a second run starts.
    cli = make_cli(sb, [channel("Double Click SMS", max_concurrency=20),
                        channel("Slow SMS", max_concurrency=10, requests_per_second=40)])
    first = mixed_audience(sb, 800, seed=7, area="415")
    second = mixed_audience(sb, 600, seed=8, area="628")
    create_execution(cli.db, 1, "Double Click SMS", "Hi {{FirstName}}!", first.contacts)
    create_execution(cli.db, 2, "Slow SMS", "Hi {{FirstName}}!", second.contacts)

    # 1. Started in the same instant.
    a, b = cli.start("send", "1"), cli.start("send", "1")
    ra, rb = a.wait(300), b.wait(300)
    for r in (ra, rb):
        assert_no_traceback(r.output)
        assert r.returncode in (0, 3), r.describe()
    done = [r for r in (ra, rb) if r.returncode == 0]
    assert done, "neither run completed the send"
    if len(done) == 1:
        other = rb if done[0] is ra else ra
        _busy_names(other, _run_id(done[0]))
    else:
        assert sum(NOTHING_NEW in r.stdout for r in done) >= 1, (ra.describe(), rb.describe())
    assert_sid_by_sid(cli.db, sb, 1, first.eligible, area="415")
    assert_identities(cli.db.read_results(1))

    # 2. The second started while the first is sending: refused at once, naming the first run.
    before = sb.stats()["messages_outbound"]
    a = cli.start("send", "2")
    while a.alive() and sb.stats()["messages_outbound"] < before + 100:
        assert time.monotonic() - a.started < 120
        time.sleep(0.02)
    assert a.alive(), "the first send finished before the second could start"
    rb = cli.run("send", "2", timeout=120)
    ra = a.wait(300)
    assert_no_traceback(ra.output + rb.output)
    assert ra.returncode == 0, ra.describe()
    _busy_names(rb, _run_id(ra))

    # 3. A send after the first finished: nothing new, exit 0; nobody texted twice.
    rc = cli.run("send", "2", timeout=300)
    assert rc.returncode == 0 and NOTHING_NEW in rc.stdout, rc.describe()
    assert_sid_by_sid(cli.db, sb, 2, second.eligible, area="628")
    assert sb.stats()["messages_outbound"] == len(first.eligible) + len(second.eligible)
