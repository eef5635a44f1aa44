"""Shared fixtures: a database per test on SQLite and on the real PostgreSQL and MariaDB/MySQL servers.

PostgreSQL runs when TWILIO_PIPELINE_TEST_POSTGRES_URL is set, MariaDB/MySQL when
TWILIO_PIPELINE_TEST_MYSQL_URL is set (`.ci/run` sets both): the session creates its own database on each
server and drops it at the end; each test gets its own table prefix.
"""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

from twilio_pipeline.db import Database
from twilio_pipeline.db.database import normalise_url
from twilio_pipeline.sandbox.process import SandboxProcess

PG_ENV = "TWILIO_PIPELINE_TEST_POSTGRES_URL"
MYSQL_ENV = "TWILIO_PIPELINE_TEST_MYSQL_URL"


@pytest.fixture(scope="session")
def postgres_url():
    server = os.environ.get(PG_ENV)
    if not server:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL server configured for the real-database tests")
    name = f"tp_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = normalise_url(server).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin.dispose()


@pytest.fixture(scope="session")
def mysql_url():
    server = os.environ.get(MYSQL_ENV)
    if not server:
        pytest.skip(f"{MYSQL_ENV} is not set: no MariaDB/MySQL server configured for the real-database tests")
    name = f"tp_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(normalise_url(server).set(database=None), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")  # the server default collation: case-insensitive
    url = normalise_url(server).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    admin.dispose()


# The real servers' variants are `slow`: `make test-fast` runs every database test once, on SQLite.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow),
                        pytest.param("mysql", marks=pytest.mark.slow)])
def db_url(request, tmp_path):
    """A database URL on each backend (tests using it run once per backend)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pipeline.db'}"
    return request.getfixturevalue({"postgresql": "postgres_url", "mysql": "mysql_url"}[request.param])


@pytest.fixture
def db(db_url):
    database = Database(db_url, prefix=f"t{uuid.uuid4().hex[:6]}_")
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'pipeline.db'}")
    yield database
    database.dispose()


@pytest.fixture
def make_sandbox(tmp_path):
    """Start sandboxes with given flags (access log off); all are stopped at the end of the test."""
    started: list[SandboxProcess] = []

    def start(**flags) -> SandboxProcess:
        flags.setdefault("access_log", False)
        sb = SandboxProcess(tmp_path / f"sb{len(started)}", **flags).start()
        started.append(sb)
        return sb

    yield start
    for sb in started:
        sb.stop()


# MariaDB runs the suites that issue the pipeline's SQL (db/, outbound/, inbound/) and the lease-fencing
# stalls; the Dagster wiring and the other reliability suites repeat that SQL, so two backends cover them
# there and `make test` stays well under 15 minutes on 2 cores.
MYSQL_SUITES = ("db/", "outbound/", "inbound/", "reliability/test_lease_fencing.py")


def pytest_collection_modifyitems(config, items):
    root = os.path.dirname(__file__)
    keep, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_mysql = callspec is not None and callspec.params.get("db_url") == "mysql"
        where = os.path.relpath(str(item.fspath), root).replace(os.sep, "/")
        (dropped if on_mysql and not where.startswith(MYSQL_SUITES) else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def make_pipeline(tmp_path):
    """Factory of `PipelineHarness`es (the real jobs, in process, against a test database and a sandbox);
    each one's Dagster instance is disposed at the end of the test."""
    from twilio_pipeline_tests.pipeline_harness import PipelineHarness

    made: list[PipelineHarness] = []

    def make(db, sandbox, channels, **kw) -> PipelineHarness:
        harness = PipelineHarness(db, sandbox, channels, tmp_path / f"pipeline{len(made)}", **kw)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()
