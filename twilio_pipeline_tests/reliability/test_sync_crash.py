"""Sync crash safety: a real `twilio-pipeline sync` over 3,000 messages and their replies, SIGKILLed at
seeded random moments while statuses move and replies keep arriving, then re-run until it completes.
The moments are drawn from the sync's observed progress (its n-th Twilio call, or its first staged
observations, plus a random wait), not from wall time, so a fast machine cannot outrun the kills.

After every kill: no state is stored twice, and the inbound watermark is never ahead of what was
loaded (every reply dated at or before it is in TwilioSMS_Inbound). At the end: every message's final
status, every keyword reply and every opt-out is stored exactly once, nothing is left tracked or
pending, and the results add up.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from twilio_pipeline.channels import parse_channels
from twilio_pipeline.dates import to_naive_utc
from twilio_pipeline.inbound import suppressed_numbers
from twilio_pipeline.logs import ListLog
from twilio_pipeline.rules.states import state_name
from twilio_pipeline.twilio import parse_twilio_date
from twilio_pipeline_tests.inbound.helpers import make_client, send_execution
from twilio_pipeline_tests.reliability.conftest import SENDER, assert_no_traceback, assert_unique_states, channel

SEED = 4242
PER_EXECUTION = 1500
KILLS = 4
WAVES = 2 * KILLS  # one wave of replies per attempt, so every sync has work to be killed in
CHANNEL = "Sync SMS"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _naive(text) -> datetime | None:
    return to_naive_utc(parse_twilio_date(text))


def _reply_waves(numbers: list[str]) -> list[list[tuple[str, list[str]]]]:
    """Who replies what, in WAVES waves: STOP, STOP then START, HELP, MORE, free text."""
    rng = random.Random(SEED)
    chosen = rng.sample(numbers, 460)
    plans = ([(n, ["STOP"]) for n in chosen[:150]] + [(n, ["STOP", "START"]) for n in chosen[150:200]]
             + [(n, ["HELP"]) for n in chosen[200:280]] + [(n, ["more"]) for n in chosen[280:380]]
             + [(n, ["Thanks, see you"]) for n in chosen[380:460]])
    rng.shuffle(plans)
    return [plans[i::WAVES] for i in range(WAVES)]


def _inject(sb, wave) -> None:
    now = sb.clock()["now_epoch"]
    items = []
    for number, bodies in wave:
        for k, body in enumerate(bodies):
            items.append({"From": number, "To": SENDER, "Body": body, "DateSent": _iso(now - 60 + k * 30)})
    sb.inbound_bulk(items)


def _check_watermark(db, sb) -> None:
    """The watermark never runs ahead of what was loaded: every reply dated at or before it is kept."""
    wm_t, ib = db.tables.watermarks, db.tables.inbound
    with db.connect() as conn:
        watermark = conn.execute(sa.select(wm_t.c.LastDateSent).where(wm_t.c.Sender == SENDER)).scalar()
        kept = {r[0] for r in conn.execute(sa.select(ib.c.MessageSID))}
    if watermark is None:
        return
    missing = [m["sid"] for m in sb.messages(direction="inbound")
               if _naive(m["date_sent"]) is not None and _naive(m["date_sent"]) <= watermark and m["sid"] not in kept]
    assert not missing, f"watermark {watermark} is ahead of what was loaded: {len(missing)} reply(ies) not kept"


def _pending_count(db) -> int:
    with db.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.tables.pending_states)).scalar()


def _wait_for_kill_moment(run, rng: random.Random, attempt: int, sb, db) -> str:
    """Wait, while the sync runs, for a seeded moment drawn from its observed progress (not wall time,
    which a fast machine outruns): during the Twilio reads (after its n-th API call), or once it has
    staged observations (status fetch, keyword parse, state load), plus a random extra wait."""
    deadline = run.started + 180
    if attempt % 2 == 0:
        target = sb.stats()["requests_total"] + rng.randint(1, 3)
        moment = f"after API call {target}"
        while run.alive() and sb.stats()["requests_total"] < target:
            assert time.monotonic() < deadline, "the sync never got going (a stalled run?)"
            time.sleep(0.01)
        extra = rng.uniform(0.0, 0.15)
    else:
        moment = "with observations staged"
        while run.alive() and _pending_count(db) == 0:
            assert time.monotonic() < deadline, "the sync never staged anything (a stalled run?)"
            time.sleep(0.01)
        extra = rng.uniform(0.0, 0.5)
    time.sleep(extra)
    return f"{moment} + {extra:.2f} s"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sync_killed_at_random_moments_loses_and_duplicates_nothing(make_sandbox, make_cli):
    sb = make_sandbox(status_delay_ms=1000, undelivered_rate=0.1, failed_rate=0.05, seed=3)
    spec = channel(CHANNEL, keywords=["MORE"])
    cli = make_cli(sb, [spec])
    db = cli.db
    chan = parse_channels({"channels": [spec]}).channels[0]
    numbers = {1: [f"+1415{i:07d}" for i in range(1, PER_EXECUTION + 1)],
               2: [f"+1628{i:07d}" for i in range(1, PER_EXECUTION + 1)]}
    with make_client(sb) as client:
        for eid, nums in numbers.items():
            send_execution(db, client, chan, eid, nums, body="Offer for you", first_contact_id=1)
    contact_of = {(eid, n): i + 1 for eid, nums in numbers.items() for i, n in enumerate(nums)}
    execution_of = {n: eid for eid, nums in numbers.items() for n in nums}
    waves = _reply_waves(numbers[1] + numbers[2])

    rng = random.Random(SEED)
    moments: list[str] = []
    killed = 0
    unsent = list(waves)
    while killed < KILLS and unsent:
        sb.advance_clock(rng.uniform(0.5, 2.5))  # statuses move on between syncs
        sb.advance_clock(90)
        _inject(sb, unsent.pop(0))
        run = cli.start("sync")
        moment = _wait_for_kill_moment(run, rng, len(moments), sb, db)
        finished_first = not run.alive()
        run.kill()
        result = run.result()
        assert_no_traceback(result.output)
        assert result.returncode == (0 if finished_first else -9), result.describe()
        killed += not finished_first
        moments.append(f"{moment}{' (finished first)' if finished_first else ''}")
        assert_unique_states(db)
        _check_watermark(db, sb)
    assert killed == KILLS, f"too few syncs were killed mid-way: {moments}"
    for wave in unsent:  # the replies of attempts not needed arrive now
        sb.advance_clock(90)
        _inject(sb, wave)

    sb.advance_clock(600)  # every message reaches its final status
    ids_t, pending, ib = db.tables.message_ids, db.tables.pending_states, db.tables.inbound
    for _ in range(4):
        result = cli.run("sync", timeout=240)
        assert_no_traceback(result.output)
        assert result.returncode == 0, result.describe()
        assert_unique_states(db)
        _check_watermark(db, sb)
        with db.connect() as conn:
            left = [conn.execute(sa.select(sa.func.count()).select_from(t).where(*w)).scalar()
                    for t, w in ((ids_t, ()), (pending, ()), (ib, (ib.c.ParsedAt.is_(None),)))]
        if left == [0, 0, 0]:
            break
    assert left == [0, 0, 0], f"tracked SIDs, pending observations, unparsed replies left: {left}"
    assert db.staging_tables() == []

    st = db.tables.states
    with db.connect() as conn:
        states = conn.execute(sa.select(st.c.ChannelExecutionID, st.c.RPContactID, st.c.FulfillmentState,
                                        st.c.EventName, st.c.Timestamp)).all()
        kept = {r[0]: r for r in conn.execute(sa.select(ib.c.MessageSID, ib.c.Keyword, ib.c.DateSent))}
        suppressed = {r[0] for r in conn.execute(suppressed_numbers(db, chan))}
    # Every delivery state: the final status of every message, with Twilio's error code where it failed.
    final = {(r[0], r[1]): (r[2], r[3]) for r in states if r[2] in ("Delivered", "Undelivered", "Failed")}
    outbound = sb.messages(direction="outbound-api")
    assert len(outbound) == 2 * PER_EXECUTION
    truth_status: dict[int, dict[str, int]] = {1: {}, 2: {}}
    for m in outbound:
        eid = execution_of[m["to"]]
        key = (eid, contact_of[(eid, m["to"])])
        expected_event = str(m["error_code"]) if m["status"] in ("failed", "undelivered") else None
        assert final.get(key) == (state_name(m["status"]), expected_event), (key, m["status"], final.get(key))
        truth_status[eid][f"Status:{m['status']}"] = truth_status[eid].get(f"Status:{m['status']}", 0) + 1
    # Every reply kept once; every keyword reply stored once as Replied; every opt-out kept.
    inbound = sb.messages(direction="inbound")
    assert set(kept) == {m["sid"] for m in inbound}
    replied = sorted((r[0], r[1], r[3], r[4]) for r in states if r[2] == "Replied")
    expected_replies = []
    for m in inbound:
        word = m["body"].strip().upper()
        if word in ("STOP", "START", "HELP", "MORE"):
            eid = execution_of[m["from"]]
            expected_replies.append((eid, contact_of[(eid, m["from"])], word, _naive(m["date_sent"])))
    assert replied == sorted(expected_replies)
    stop_only = {n for wave in waves for n, bodies in wave if bodies == ["STOP"]}
    assert suppressed == stop_only, (len(suppressed), len(stop_only))
    # The results add up, and the watermark stands exactly at the newest reply loaded.
    for eid in (1, 2):
        results = db.read_results(eid)
        statuses = {k: v for k, v in results.items() if k.startswith("Status:")}
        assert statuses == truth_status[eid]
        assert sum(statuses.values()) == results["Sent"] == PER_EXECUTION
        for word in ("STOP", "START", "HELP", "MORE"):
            assert results.get(f"Reply:{word}", 0) == sum(1 for r in expected_replies if r[0] == eid and r[2] == word)
    wm_t = db.tables.watermarks
    with db.connect() as conn:
        watermark = conn.execute(sa.select(wm_t.c.LastDateSent).where(wm_t.c.Sender == SENDER)).scalar()
    assert watermark == max(_naive(m["date_sent"]) for m in inbound)


def test_results_are_written_with_the_states_they_count(db, make_sandbox):
    """The window the crash test hits by chance, made certain: once the state load has committed (and
    retired the SIDs, so nothing makes the execution eligible again), the results already count it -
    a sync killed before its aggregate step leaves nothing stale."""
    from twilio_pipeline.inbound import fetch_statuses, load_states

    sb = make_sandbox(status_delay_ms=50, undelivered_rate=0.3, seed=2)
    chan = parse_channels({"channels": [channel(CHANNEL)]}).channels[0]
    with make_client(sb) as client:
        send_execution(db, client, chan, 1, [f"+1415555{i:04d}" for i in range(12)])
        sb.advance_clock(5)
        fetch_statuses(db, client, chan, [1], log=ListLog())
    summary = load_states(db, log=ListLog(), execution_ids=[1])
    assert summary.retired == 12
    truth: dict[str, int] = {}
    for m in sb.messages(direction="outbound-api"):
        truth[f"Status:{m['status']}"] = truth.get(f"Status:{m['status']}", 0) + 1
    results = db.read_results(1)
    assert {k: v for k, v in results.items() if k.startswith("Status:")} == truth and len(truth) == 2


