"""What the benchmarks run against: fresh databases (SQLite, PostgreSQL, MariaDB), the sandbox in its
own process, channels and clients, and clean audiences (numbers Twilio accepts, no duplicates)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from twilio_pipeline_bench.reporting import one_line

SENDER = "+15005550006"
BODY_TEMPLATE = "Hi {{FirstName}}, your offer: 20% off today only at example.com/o/123. Reply STOP to opt out."
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
PG_ADMIN_URL = os.environ.get("TWILIO_PIPELINE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN_URL = os.environ.get("TWILIO_PIPELINE_BENCH_MYSQL_URL",
                                 "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4")


# ---- databases -------------------------------------------------------------------------------------
@contextmanager
def fresh_database(kind: str, workdir: Path, label: str) -> Iterator[str]:
    """A new empty database URL (a SQLite file under `workdir`, or a new PostgreSQL database that is
    dropped afterwards)."""
    if kind == "sqlite":
        path = workdir / f"{label}-{uuid.uuid4().hex[:6]}.sqlite"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        return
    if kind == "mysql":
        yield from _fresh_mysql(label)
        return
    if kind != "postgresql":
        raise ValueError(f"unknown database kind {kind!r}")
    import sqlalchemy as sa

    name = f"tp_bench_{label}_{uuid.uuid4().hex[:8]}".lower()
    admin_url = sa.engine.make_url(PG_ADMIN_URL)
    # A killed benchmark must not leave a query running for hours: sessions of this database notice a
    # vanished client within a second, and no statement runs past 10 minutes (where the server knows how).
    yield from _server_database(
        admin_url.set(drivername="postgresql+psycopg2"), admin_url.set(database=name),
        f'CREATE DATABASE "{name}"', f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        optional=[f'ALTER DATABASE "{name}" SET {setting}'
                  for setting in ("client_connection_check_interval = 1000", "statement_timeout = 600000")],
    )


def _fresh_mysql(label: str) -> Iterator[str]:
    """A new MariaDB/MySQL database (server default collation: the tables set their own), dropped after."""
    import sqlalchemy as sa

    name = f"tp_bench_{label}_{uuid.uuid4().hex[:8]}".lower()
    admin_url = sa.engine.make_url(MYSQL_ADMIN_URL)
    yield from _server_database(admin_url, admin_url.set(database=name),
                                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4", f"DROP DATABASE IF EXISTS `{name}`")


def _server_database(admin_url, url, create: str, drop: str, optional: Iterable[str] = ()) -> Iterator[str]:
    """Run `create` (then each `optional` statement, skipped where the server refuses it) on the server,
    yield `url`, and run `drop` however the benchmark ends."""
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(create)
            for statement in optional:
                with contextlib.suppress(sa.exc.DBAPIError):  # an older server without the setting
                    conn.exec_driver_sql(statement)
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(drop)
    finally:
        admin.dispose()


def mysql_available() -> str | None:
    """None when the MariaDB/MySQL server answers (and its driver is installed), else why not."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(sa.engine.make_url(MYSQL_ADMIN_URL))
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure is a reason to skip
        return one_line(exc)
    return None


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg2"))
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"

# ---- sandbox, channels, clients ---------------------------------------------------------------------
@dataclass(frozen=True)
class SandboxInfo:
    """What a child process needs to reach a sandbox (picklable)."""

    base_url: str
    account_sid: str
    auth_token: str
    pid: int

    @classmethod
    def of(cls, sandbox) -> SandboxInfo:
        return cls(sandbox.base_url, sandbox.account_sid, sandbox.auth_token, sandbox.pid)

    @property
    def messages_url(self) -> str:
        return f"{self.base_url}/2010-04-01/Accounts/{self.account_sid}/Messages.json"


def start_sandbox(workdir: Path, label: str, **flags):
    """A sandbox child process with its own store; no access log (it would cost the sandbox CPU)."""
    from twilio_pipeline.sandbox.process import SandboxProcess

    flags.setdefault("access_log", False)
    flags.setdefault("status_delay_ms", 1000)
    return SandboxProcess(workdir / f"sandbox-{label}-{uuid.uuid4().hex[:6]}", **flags).start()


def channel_spec(name: str = "Bench SMS Channel", **overrides) -> dict:
    spec = {"name": name, "from_number": SENDER, "max_concurrency": 20, "connectivity_test": False}
    spec.update(overrides)
    return spec


def make_channel(spec: dict):
    from twilio_pipeline.channels import parse_channels

    return parse_channels({"channels": [spec]}, "benchmark channel").channels[0]


def make_client(info: SandboxInfo, channel):
    from twilio_pipeline.outbound import client_for_channel
    from twilio_pipeline.twilio import Endpoints, TwilioCredentials

    creds = TwilioCredentials(info.account_sid, info.auth_token)
    return client_for_channel(creds, channel, Endpoints(info.base_url, info.base_url, info.base_url))


def run_id(prefix: str = "bench") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"

# ---- audiences -------------------------------------------------------------------------------------
def clean_number(i: int, area: int = 415) -> str:
    """A unique, valid North American number for index i (< 8,000,000), never a Twilio magic number."""
    return f"+1{area}{2_000_000 + i:07d}"


def clean_audience(n: int, start_id: int = 1, area: int = 415) -> Iterator[tuple[int, str, dict]]:
    """n valid unique recipients (every one becomes a request), with the FirstName merge field."""
    for i in range(n):
        rid = start_id + i
        yield rid, clean_number(i, area), {"FirstName": FIRST_NAMES[rid % len(FIRST_NAMES)]}


def create_clean_execution(db_url: str, execution_id: int, channel_name: str, n: int, area: int = 415) -> int:
    from twilio_pipeline.audience import create_execution
    from twilio_pipeline.db import Database

    db = Database(db_url)
    try:
        return create_execution(db, execution_id, channel_name, BODY_TEMPLATE, clean_audience(n, area=area))
    finally:
        db.dispose()


def bare_forms(n: int, area: int = 650) -> list[dict[str, str]]:
    """The form the pipeline posts for a recipient (From, To, Body, ValidityPeriod), n distinct ones."""
    from twilio_pipeline.rules.render import render_body

    forms = []
    for i in range(n):
        body = render_body(BODY_TEMPLATE, {"FirstName": FIRST_NAMES[(i + 1) % len(FIRST_NAMES)]}, None).body
        forms.append({"From": SENDER, "To": clean_number(i, area), "Body": body, "ValidityPeriod": "36000"})
    return forms
