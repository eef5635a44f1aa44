"""Security: secrets never leak, configured names are validated and quoted, every SQL statement is
parameterised, and the sandbox listens on 127.0.0.1 unless told otherwise.

The leak test runs a traced send and sync (channel `trace: true`) through the real CLI with a
recognisable auth token and API key secret, plus a send against a hostile server that echoes the
credentials back in its error bodies (a refusal stored in the ledger, a listing that ends the run with
an exception). Then it looks for the secrets - raw, URL-encoded and as the Basic-auth header value - in
the CLI output, every Dagster event and materialization, every file of the Dagster instance, and every
row and byte of the pipeline's database.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa

from twilio_pipeline.audience import create_execution
from twilio_pipeline.channels import parse_channels
from twilio_pipeline.db import Database
from twilio_pipeline.sandbox.process import SandboxProcess
from twilio_pipeline.settings import SettingsError, load_settings
from twilio_pipeline_tests.reliability.conftest import SENDER, assert_no_traceback, channel
from twilio_pipeline_tests.twilio.fake_server import Answer, FakeTwilio, reply

ACCOUNT = "AC" + "5e" * 16
TOKEN = "QZXtokQZX" + "7f3a9c2e5b1d8f4a6c0e9b3d"
KEY_SID = "SK" + "4d" * 16
KEY_SECRET = "QZXkeyQZX" + "0b1c2d3e4f5a6b7c8d9e0f1a"


def secret_forms() -> dict[str, str]:
    forms = {}
    for name, value in (("auth token", TOKEN), ("API key secret", KEY_SECRET)):
        forms[name] = value
        forms[f"{name} (URL-encoded)"] = quote(value, safe="")
        forms[f"{name} (form-encoded)"] = quote_plus(value)
    forms["Basic header (API key)"] = base64.b64encode(f"{KEY_SID}:{KEY_SECRET}".encode()).decode()
    forms["Basic header (token)"] = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    return forms


def assert_no_secret(text: str, where: str) -> None:
    for name, form in secret_forms().items():
        assert form not in text, f"the {name} leaked into {where}: ...{text[max(0, text.find(form) - 200):][:400]}"


def assert_no_secret_bytes(path: Path) -> None:
    data = path.read_bytes()
    for name, form in secret_forms().items():
        assert form.encode() not in data, f"the {name} leaked into {path}"


class EchoingServer:
    """A hostile 'Twilio' that echoes the credentials it receives in every error body."""

    def __init__(self):
        self.server = FakeTwilio()
        base = f"/2010-04-01/Accounts/{ACCOUNT}"
        self.server.script("GET", f"{base}/IncomingPhoneNumbers.json",
                           reply(200, {"incoming_phone_numbers": [{"phone_number": SENDER}]}))
        self.server.script("GET", f"{base}/Messages.json", self._list)
        self.server.script("POST", f"{base}/Messages.json", self._create)
        self.echoed = 0

    def _echo(self, seen) -> str:
        header = seen.headers.get("Authorization", "")
        user, _, password = base64.b64decode(header.split(" ", 1)[-1] or b"").decode().partition(":")
        self.echoed += 1
        return (f"denied for {user}:{password} (header {header}, encoded {quote(password, safe='')}, "
                f"form {quote_plus(password)})")

    def _list(self, seen) -> Answer:
        to = seen.query.get("To", [""])[0]
        if to == SENDER:
            return reply(200, {"messages": [], "next_page_uri": None})
        # the reconciliation's look-up of the ambiguous recipient: rejected, echoing the credentials
        return reply(401, {"code": 20003, "message": self._echo(seen), "status": 401})

    def _create(self, seen) -> Answer:
        to = seen.form["To"][0]
        if to == "+14155550301":
            return reply(400, {"code": 21211, "message": self._echo(seen), "status": 400})
        if to == "+14155550302":
            return reply(500, {"code": 20500, "message": self._echo(seen), "status": 500})
        sid = "SM" + uuid.uuid4().hex
        return reply(201, {"sid": sid, "status": "queued", "to": to, "from": SENDER, "body": seen.form["Body"][0],
                           "direction": "outbound-api", "num_segments": "1"})

    def close(self):
        self.server.close()


def _dagster_texts(cli) -> list[tuple[str, str]]:
    """Every Dagster event of every run, and every materialization's metadata, as text."""
    out = []
    with cli.instance() as instance:
        for run in instance.get_runs():
            out.append((f"run {run.run_id} tags/config", json.dumps(run.tags) + json.dumps(run.run_config,
                                                                                            default=str)))
            for record in instance.all_logs(run.run_id):
                out.append((f"event of run {run.run_id}", f"{record.user_message} {record.dagster_event!r}"))
                mat = record.asset_materialization
                if mat is not None:
                    out.append((f"materialization {mat.asset_key}", repr(mat.metadata)))
    return out


def _table_dump(db: Database) -> str:
    inspector = sa.inspect(db.engine)
    parts = []
    with db.connect() as conn:
        for name in inspector.get_table_names():
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            parts.extend(repr(tuple(r)) for r in conn.execute(sa.select(table)))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_secrets_never_leak_from_a_traced_send_and_sync(make_sandbox, make_cli):
    sb = make_sandbox(account_sid=ACCOUNT, auth_token=TOKEN, api_key_sid=KEY_SID, api_key_secret=KEY_SECRET,
                      status_delay_ms=200, failed_rate=0.05, seed=4)
    echo = EchoingServer()
    try:
        creds = {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_API_KEY_SID": KEY_SID,
                 "TWILIO_API_KEY_SECRET": KEY_SECRET}
        cli = make_cli(sb, [channel("Traced SMS", trace=True, keywords=["MORE"])], env=creds)
        numbers = [f"+1415555{i:04d}" for i in range(1, 61)] + ["+15005550001", "+15005550004"]
        create_execution(cli.db, 1, "Traced SMS", "Hi {{FirstName}}", [(i + 1, n, {"FirstName": f"P{i}"})
                                                                         for i, n in enumerate(numbers)])
        sent = cli.run("send", "1")
        assert sent.returncode == 0, sent.describe()
        sb.advance_clock(5)
        sb.inbound_bulk([{"From": numbers[0], "To": SENDER, "Body": "STOP"},
                         {"From": numbers[1], "To": SENDER, "Body": "MORE"}])
        synced = cli.run("sync")
        assert synced.returncode == 0, synced.describe()
        # The same installation against a server echoing the credentials: refusal, ambiguity, rejection.
        echo_env = {"TWILIO_API_BASE_URL": echo.server.url, "TWILIO_BULKEXPORTS_BASE_URL": echo.server.url,
                    "TWILIO_MESSAGING_BASE_URL": echo.server.url}
        create_execution(cli.db, 2, "Traced SMS", "Hello",
                         [(1, "+14155550300", None), (2, "+14155550301", None), (3, "+14155550302", None)])
        failed = cli.run("send", "2", env=echo_env)
    finally:
        echo.close()
    assert failed.returncode == 1 and "rejected the credentials" in failed.stdout, failed.describe()
    assert echo.echoed >= 3, "the hostile server was never asked"

    # The runs really traced their HTTP calls and recorded what the hostile server said (redacted).
    for result in (sent, synced, failed):
        assert_no_traceback(result.output)
        assert re.search(r"HTTP (GET|POST) http://127\.0\.0\.1:\d+/2010-04-01/Accounts/AC", result.stderr), \
            "the trace is on: every request is logged"
        assert_no_secret(result.output, f"the output of `twilio-pipeline {' '.join(result.args)}`")
    assert "[REDACTED]" in failed.output
    led = cli.db.tables.ledger
    with cli.db.connect() as conn:
        reason = conn.execute(sa.select(led.c.Reason).where(led.c.ChannelExecutionID == 2,
                                                            led.c.ToNumber == "+14155550301")).scalar()
    assert reason and "[REDACTED]" in reason, reason

    for where, text in _dagster_texts(cli):
        assert_no_secret(text, where)
    assert_no_secret(_table_dump(cli.db), "a table of the pipeline's database")
    cli.db.dispose()
    files = [p for p in cli.root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files if "dagster_home" in p.parts)
    for path in files:
        assert_no_secret_bytes(path)


# ---- configured names --------------------------------------------------------------------------

@pytest.mark.parametrize("variable, value", [
    ("TWILIO_PIPELINE_TABLE_PREFIX", 'x"; DROP TABLE "SMS_ChannelExecutions"; --'),
    ("TWILIO_PIPELINE_TABLE_PREFIX", "tp-"),
    ("TWILIO_PIPELINE_TABLE_PREFIX", "a b"),
    ("TWILIO_PIPELINE_DB_SCHEMA", "public; DROP SCHEMA public CASCADE"),
    ("TWILIO_PIPELINE_DB_SCHEMA", '"quoted"'),
    ("TWILIO_PIPELINE_DB_SCHEMA", "x" * 65),
])
def test_configured_names_are_validated(variable, value):
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: value})


def test_configured_names_are_quoted_and_data_travels_as_parameters(db_url, make_sandbox, make_pipeline):
    """A mixed-case prefix (and, on PostgreSQL, a schema) lands exactly as configured - so SQLAlchemy quoted
    it - and a channel name and body full of SQL go through a whole send and sync untouched."""
    schema = None
    if db_url.startswith("postgresql"):
        schema = f"Tp_Schema_{uuid.uuid4().hex[:6]}"
    prefix = f"Tp_Mixed_{uuid.uuid4().hex[:4]}_"
    db = Database(db_url, schema=schema, prefix=prefix)
    try:
        names = set(sa.inspect(db.engine).get_table_names(schema=schema))
        assert {f"{prefix}SMS_ChannelExecutions", f"{prefix}TwilioSMS_SendLedger", f"{prefix}OfferHistorySG"} <= names
        sb = make_sandbox(status_delay_ms=50)
        name = "O'Brien\"; DROP TABLE \"OfferHistorySG\"; --"
        body = "Robert'); DROP TABLE Students;-- {{FirstName}}"
        chans = parse_channels({"channels": [channel(name, max_concurrency=4)]})
        create_execution(db, 1, name, body, [(1, "+14155550401", {"FirstName": "x' OR '1'='1"}),
                                             (2, "+14155550402", {"FirstName": "Ann"})])
        pipeline = make_pipeline(db, sb, chans)
        run = pipeline.send(1)
        sb.advance_clock(5)
        pipeline.sync()
        assert run.results["Sent"] == 2
        assert {m["body"] for m in sb.messages(direction="outbound-api")} == {
            "Robert'); DROP TABLE Students;-- x' OR '1'='1", "Robert'); DROP TABLE Students;-- Ann"}
        assert db.read_results(1)["Status:delivered"] == 2
        assert set(sa.inspect(db.engine).get_table_names(schema=schema)) >= names
    finally:
        with db.begin() as conn:
            db.tables.metadata.drop_all(conn)
            if schema:
                conn.execute(sa.schema.DropSchema(schema, cascade=True))
        db.dispose()


# ---- parameterised SQL -------------------------------------------------------------------------

_DDL = re.compile(r"^\s*(CREATE|DROP|ALTER|PRAGMA|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|COPY)\b", re.I)


def test_every_sql_statement_is_parameterised(db, make_sandbox, make_pipeline):
    """A whole send and sync with recognisable data: no value ever appears in a statement's text - numbers,
    bodies, names, SIDs, run ids and dates all travel as bound parameters (or in COPY's data stream)."""
    sb = make_sandbox(status_delay_ms=50)
    marker = "QZXdata"
    chans = parse_channels({"channels": [channel(f"{marker} Channel", max_concurrency=4, keywords=["MORE"],
                                                 seeds=["+14155550499"])]})
    create_execution(db, 1, f"{marker} Channel", f"{marker} offer for {{{{FirstName}}}}",
                     [(i, f"+141555505{i:02d}", {"FirstName": f"{marker}{i}"}) for i in range(1, 21)]
                     + [(21, "not a number", None), (22, "+14155550501", None), (23, "+15005550001", None)])
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    pipeline = make_pipeline(db, sb, chans)
    engine = pipeline.database.engine  # the engine the runs use
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        pipeline.send(1)
        sb.advance_clock(5)
        sb.inbound_bulk([{"From": "+14155550501", "To": SENDER, "Body": "STOP"},
                         {"From": "+14155550502", "To": SENDER, "Body": "MORE"}])
        summary = pipeline.sync()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert summary.load is not None and summary.load.replies == 2
    dml = [s for s in statements if not _DDL.match(s)]
    assert len(dml) > 50
    leaks = [s for s in dml if marker in s or re.search(r"\+?1\d{10}|SM[0-9a-f]{32}|'", s)]
    assert not leaks, "values pasted into SQL:\n" + "\n---\n".join(leaks[:5])


# ---- the sandbox binds to this machine only --------------------------------------------------------

def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():  # no IPv6 on this machine
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


def test_the_sandbox_listens_on_localhost_by_default(tmp_path):
    from twilio_pipeline.sandbox.cli import build_parser

    assert build_parser().parse_args([]).host == "127.0.0.1"
    assert SandboxProcess(tmp_path / "p").host == "127.0.0.1"
    port_file = tmp_path / "port"
    script = Path(sys.executable).parent / "twilio-pipeline"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "twilio_pipeline.cli"]
    proc = subprocess.Popen(command + ["sandbox", "--port", "0", "--port-file", str(port_file), "--no-access-log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip().isdigit()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.05)
        port = int(port_file.read_text())
        # The kernel's table of listening sockets: bound to 127.0.0.1 (0100007F) only, not to 0.0.0.0 or ::.
        addresses = _listening_addresses(port)
        assert addresses == {"0100007F"}, f"listening on {addresses}, not only on 127.0.0.1"
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        proc.terminate()
        proc.wait(15)
