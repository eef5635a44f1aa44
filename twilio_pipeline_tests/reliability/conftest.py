"""Reliability and security suites: a real `twilio-pipeline` CLI in a subprocess against a real sandbox.

`make_cli(sandbox, channels)` gives a `PipelineCli`: its own SQLite database, channel file and Dagster
instance (DAGSTER_HOME holding a link to the repo's shipped dagster.yaml, `twilio_api` pool included),
and the environment docs/reference.md names, pointing the CLI at the sandbox. `run()` waits for a command,
`start()` leaves it running (its own process group, so a SIGKILL takes nothing else down).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

import twilio_pipeline
from twilio_pipeline.db import Database
from twilio_pipeline.sandbox.process import SandboxProcess

REPO = Path(twilio_pipeline.__file__).resolve().parent.parent
SHIPPED_DAGSTER_YAML = REPO / "dagster.yaml"
SENDER = "+15005550006"
# Quick retries: the tests wait on the sandbox, not on production back-off delays.
FAST_RETRY = {"max_attempts": 5, "min_delay_s": 0.05, "max_delay_s": 0.5, "throttle_budget_s": 120}


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "twilio-pipeline"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "twilio_pipeline.cli"]


def channel(name: str = "Reliability SMS", **overrides) -> dict:
    # settle_s: the sandbox lists a new message at once (no --list-lag-ms), so 1 s instead of Twilio's 60
    spec = {"name": name, "from_number": SENDER, "max_concurrency": 20, "retry": dict(FAST_RETRY),
            "reconcile": {"settle_s": 1.0}}
    spec.update(overrides)
    if "messaging_service_sid" in overrides:
        spec.pop("from_number", None)
    return spec


@dataclass
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        return (f"`twilio-pipeline {' '.join(self.args)}` exited {self.returncode} after {self.duration_s:.1f} s\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


class RunningCli:
    """A CLI process left running; its output goes to files so a SIGKILL loses nothing already written."""

    def __init__(self, proc: subprocess.Popen, args: tuple[str, ...], out: Path, err: Path):
        self.proc = proc
        self.args = args
        self.out = out
        self.err = err
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (the CLI and anything it may have started). Until wait() reaps
        it, the leader exists (if only as a zombie), so the group can always be signalled."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout: float) -> CliResult:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            result = self.result()
            raise AssertionError(f"the CLI did not finish within {timeout} s (a stalled run?)\n{result.describe()}") from None
        return self.result()

    def result(self) -> CliResult:
        return CliResult(self.args, self.proc.returncode, self.out.read_text(errors="replace"),
                         self.err.read_text(errors="replace"), time.monotonic() - self.started)


class PipelineCli:
    """One pipeline installation: database, channel file, Dagster instance, environment."""

    def __init__(self, root: Path, sandbox: SandboxProcess | None, channels: Iterable[Mapping] | str,
                 db_url: str | None = None, env: Mapping[str, str] | None = None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.sandbox = sandbox
        self.home = root / "dagster_home"
        self.home.mkdir(exist_ok=True)
        link = self.home / "dagster.yaml"
        if not link.exists():
            link.symlink_to(SHIPPED_DAGSTER_YAML)
        self.channels_path = root / "channels.yaml"
        self.write_channels(channels)
        self.db_url = db_url or f"sqlite:///{root / 'pipeline.db'}"
        self._runs = 0
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "DAGSTER_"))}
        base.update({
            "DAGSTER_HOME": str(self.home),
            "TWILIO_PIPELINE_DATABASE_URL": self.db_url,
            "TWILIO_PIPELINE_CHANNELS": str(self.channels_path),
            "TWILIO_PIPELINE_DATA_DIR": str(root / "data"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONWARNINGS": "ignore",
        })
        if sandbox is not None:
            base.update({
                "TWILIO_ACCOUNT_SID": sandbox.account_sid, "TWILIO_AUTH_TOKEN": sandbox.auth_token,
                "TWILIO_API_BASE_URL": sandbox.base_url, "TWILIO_BULKEXPORTS_BASE_URL": sandbox.base_url,
                "TWILIO_MESSAGING_BASE_URL": sandbox.base_url,
            })
        base.update(env or {})
        self.env = base
        self._db: Database | None = None
        self._started: list[RunningCli] = []

    def write_channels(self, channels: Iterable[Mapping] | str) -> None:
        text = channels if isinstance(channels, str) else yaml.safe_dump(
            {"channels": [dict(c) for c in channels]}, sort_keys=False, allow_unicode=True)
        self.channels_path.write_text(text, encoding="utf-8")

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.db_url)
        return self._db

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> RunningCli:
        self._runs += 1
        out = self.root / f"cli-{self._runs}.out"
        err = self.root / f"cli-{self._runs}.err"
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(cli_command() + list(args), stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                    env={**self.env, **(env or {})}, cwd=str(self.root), start_new_session=True)
        running = RunningCli(proc, tuple(args), out, err)
        self._started.append(running)
        return running

    def run(self, *args: str, timeout: float = 240, env: Mapping[str, str] | None = None) -> CliResult:
        return self.start(*args, env=env).wait(timeout)

    def instance(self):
        """The Dagster instance the CLI runs record into (a context manager)."""
        import dagster as dg
        from dagster._core.instance import InstanceRef

        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))

    def close(self) -> None:
        """Kill whatever a failed test left running, then let go of the database."""
        for running in self._started:
            running.kill()
        if self._db is not None:
            self._db.dispose()


@pytest.fixture
def make_cli(tmp_path):
    """Factory of CLI installations; every database is disposed at the end of the test."""
    made: list[PipelineCli] = []

    def make(sandbox: SandboxProcess | None, channels: Iterable[Mapping] | str = (), *, name: str = "cli",
             db_url: str | None = None, env: Mapping[str, str] | None = None) -> PipelineCli:
        cli = PipelineCli(tmp_path / name, sandbox, channels or [channel()], db_url=db_url, env=env)
        made.append(cli)
        return cli

    yield make
    for cli in made:
        cli.close()


# ---- audiences ------------------------------------------------------------------------------------

# Twilio's magic numbers that the sandbox refuses at create time, with their error codes.
REFUSED = {"+15005550001": 21211, "+15005550002": 21612, "+15005550003": 21408, "+15005550009": 21614,
           "+15005550004": 21610}
INVALID = [None, "", "   ", "12345", "not a number", "+1 415 555", "+99912345678", "+1415555010012345"]


@dataclass
class Audience:
    contacts: list[tuple[int, str | None, dict]]
    eligible: dict[int, str]  # RPContactID -> E.164 of every recipient who must get exactly one message
    expected: dict[int, str]  # RPContactID -> expected ledger Outcome

    @property
    def refused(self) -> dict[int, int]:
        """RPContactID -> the Twilio error code its create must be refused with."""
        return {rid: REFUSED[c[1]] for rid, c in enumerate(self.contacts, start=1)
                if c[1] in REFUSED}


def mixed_audience(sb: SandboxProcess, n: int, seed: int, area: str = "415") -> Audience:
    """`n` contacts with known truth: mostly unique valid numbers, plus invalid ones, exact and formatted
    duplicates of earlier contacts, numbers that replied STOP at the sandbox (some then START, so they
    are eligible again) and, last, Twilio's refusing magic numbers. The STOP/START replies are injected
    into the sandbox, dated before now, for the suppression refresh to find."""
    rng = random.Random(seed)
    contacts: list[tuple[int, str | None, dict]] = []
    eligible: dict[int, str] = {}
    expected: dict[int, str] = {}
    valid: list[str] = []
    inbound = []
    now = sb.clock()["now_epoch"]
    magic = list(REFUSED)
    first_magic = n - len(magic) + 1
    for rid in range(1, n + 1):
        attrs = {"FirstName": f"P{rid}"}
        slot = rid % 50
        if rid >= first_magic:
            number = magic[rid - first_magic]
            expected[rid] = "refused"
        elif slot == 0:
            number = INVALID[(rid // 50) % len(INVALID)]
            expected[rid] = "invalid"
        elif slot in (1, 2) and valid:
            e164 = rng.choice(valid[-300:])
            d = e164[2:]
            number = e164 if slot == 1 else f"+1 ({d[:3]}) {d[3:6]}-{d[6:]}"
            expected[rid] = "duplicate"
        elif slot in (3, 4):
            number = f"+1{int(area) + 1}{rid:07d}"
            inbound.append({"From": number, "To": SENDER, "Body": "STOP", "DateSent": _iso(now - 7200)})
            if slot == 4:
                inbound.append({"From": number, "To": SENDER, "Body": "START", "DateSent": _iso(now - 3600)})
                eligible[rid] = number
                expected[rid] = "sent"
            else:
                expected[rid] = "suppressed"
        else:
            number = f"+1{area}{rid:07d}"
            valid.append(number)
            eligible[rid] = number
            expected[rid] = "sent"
        contacts.append((rid, number, attrs))
    if inbound:
        sb.inbound_bulk(inbound)
    return Audience(contacts, eligible, expected)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# ---- shared checks ------------------------------------------------------------------------------

def assert_no_traceback(text: str) -> None:
    """Neither Python's traceback nor the stack Dagster appends to a failed step's log line."""
    for mark in ("Traceback (most recent call last)", "Stack Trace:", '\n  File "'):
        assert mark not in text, text[-4000:]


def ledger(db: Database, execution_id: int) -> list[dict]:
    led = db.tables.ledger
    with db.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(led).where(led.c.ChannelExecutionID == execution_id).order_by(led.c.RPContactID)).mappings()]


def tracked_sids(db: Database, execution_id: int) -> dict[str, int]:
    ids = db.tables.message_ids
    with db.connect() as conn:
        return {r[0]: int(r[1]) for r in conn.execute(
            sa.select(ids.c.MessageID, ids.c.RPContactID).where(ids.c.ChannelExecutionID == execution_id))}


def outbound_messages(sb: SandboxProcess) -> list[dict]:
    return sb.messages(direction="outbound-api")


def assert_sid_by_sid(db: Database, sb: SandboxProcess, execution_id: int, eligible: Mapping[int, str],
                      area: str | None = None) -> dict:
    """Ledger, Twilio_MessageIDs and the sandbox agree SID by SID; every eligible recipient (RPContactID ->
    E.164) has exactly one message at the sandbox and nobody else has one. `area`: only the sandbox's
    messages to numbers of this audience count (`mixed_audience`'s area and area + 1), when other
    executions share the sandbox. Returns RPContactID -> SID."""
    rows = ledger(db, execution_id)
    sent = {r["RPContactID"]: r for r in rows if r["Outcome"] == "sent" and not r["IsSeed"]}
    assert set(sent) == set(eligible), (
        f"recipients sent {len(sent)} vs eligible {len(eligible)}: "
        f"missing {sorted(set(eligible) - set(sent))[:10]}, extra {sorted(set(sent) - set(eligible))[:10]}")
    created = sb.stats()["messages_created_by_to"]
    mine = None if area is None else (f"+1{area}", f"+1{int(area) + 1}", "+1500555")
    if mine is not None:
        created = {to: n for to, n in created.items() if to.startswith(mine)}
    twice = {to: n for to, n in created.items() if n != 1}
    assert not twice, f"texted more than once: {dict(list(twice.items())[:10])}"
    assert set(created) == set(eligible.values()), (
        f"texted but not eligible: {sorted(set(created) - set(eligible.values()))[:10]}; "
        f"eligible but never texted: {sorted(set(eligible.values()) - set(created))[:10]}")
    by_sid = {m["sid"]: m for m in outbound_messages(sb) if mine is None or m["to"].startswith(mine)}
    for rid, row in sent.items():
        msg = by_sid.get(row["MessageSID"])
        assert msg is not None, f"RPContactID {rid}: ledger SID {row['MessageSID']} unknown to the sandbox"
        assert msg["to"] == row["ToNumber"] == eligible[rid], (rid, msg["to"], row["ToNumber"], eligible[rid])
    assert {r["MessageSID"] for r in sent.values()} == set(by_sid)
    staged = tracked_sids(db, execution_id)
    assert staged == {r["MessageSID"]: rid for rid, r in sent.items()}, "Twilio_MessageIDs disagrees with the ledger"
    stuck = [r["RPContactID"] for r in rows if r["Outcome"] in ("planned", "inflight", "ambiguous")]
    assert not stuck, f"recipients without a final outcome: {stuck[:10]}"
    return {rid: r["MessageSID"] for rid, r in sent.items()}


def assert_identities(results: Mapping[str, float]) -> None:
    parts = sum(results[k] for k in ("InvalidNumbers", "Duplicates", "Unsubscribed", "NotRendered", "Targeted",
                                    "Pending"))
    assert results["CountBeforeDedup"] == parts, results
    assert results["Targeted"] == results["Sent"] + results["SendFailed"] + results["Unresolved"], results


def assert_unique_states(db: Database) -> None:
    st = db.tables.states
    delivery = (sa.select(st.c.ChannelExecutionID, st.c.RPContactID, st.c.FulfillmentState, sa.func.count())
                .where(st.c.FulfillmentState != "Replied")
                .group_by(st.c.ChannelExecutionID, st.c.RPContactID, st.c.FulfillmentState)
                .having(sa.func.count() > 1))
    replies = (sa.select(st.c.ChannelExecutionID, st.c.RPContactID, st.c.EventName, st.c.Timestamp, sa.func.count())
               .where(st.c.FulfillmentState == "Replied")
               .group_by(st.c.ChannelExecutionID, st.c.RPContactID, st.c.EventName, st.c.Timestamp)
               .having(sa.func.count() > 1))
    with db.connect() as conn:
        assert conn.execute(delivery).all() == [], "a delivery state stored twice"
        assert conn.execute(replies).all() == [], "a reply stored twice"
