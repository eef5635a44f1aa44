"""SQL Server readiness without a server: every statement a whole campaign (send + sync) issues, compiled on
the mssql dialect, is T-SQL (NVARCHAR text, DATETIME2, no LIMIT, under 2,100 parameters); an unreachable
`mssql+pyodbc` database is one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import sqlalchemy as sa
from sqlalchemy.sql.ddl import ExecutableDDLElement

from twilio_pipeline.audience import create_execution
from twilio_pipeline.channels import parse_channels
from twilio_pipeline.db import Database
from twilio_pipeline_tests.inbound.helpers import SENDER, numbers

MSSQL_URL = "mssql+pyodbc://sa:s3cret-pw@127.0.0.1:1/pipeline?driver=ODBC+Driver+18+for+SQL+Server"
MAX_PARAMETERS = 2_100


def _campaign_statements(db: Database, pipeline) -> list[tuple[sa.ClauseElement, list[dict]]]:
    """Every SQLAlchemy statement of a send, a reply, an opt-out and two syncs (the jobs, as production runs
    them), with its parameter sets."""
    seen: list[tuple[sa.ClauseElement, list[dict]]] = []

    def _record(conn, element, multiparams, params, execution_options):
        if isinstance(element, sa.ClauseElement):
            seen.append((element, list(multiparams) if multiparams else [params or {}]))

    sb = pipeline.sandbox
    sa.event.listen(db.engine, "before_execute", _record)
    db.create_all()
    nums = numbers(30)
    create_execution(db, 7, "E2E", "Hi {{FirstName}} 😀", [(i + 1, n, {"FirstName": "Ada"}) for i, n in enumerate(nums)])
    sa.event.remove(db.engine, "before_execute", _record)
    engine = pipeline.database.engine  # the engine the runs use
    sa.event.listen(engine, "before_execute", _record)
    try:
        pipeline.send(7)
        sb.advance_clock(5)
        sb.inbound(nums[0], SENDER, "STOP")
        sb.inbound(nums[1], SENDER, "MORE")
        for _ in range(2):
            pipeline.sync()
    finally:
        sa.event.remove(engine, "before_execute", _record)
    return seen


def _parameter_count(compiled, param_sets: list[dict]) -> int:
    """Parameters of one execution of the statement (expanding IN lists counted per value)."""
    biggest = 0
    for params in param_sets:
        n = 0
        for bind in compiled.binds.values():
            value = params.get(bind.key, bind.value) if isinstance(params, dict) else bind.value
            n += len(value) if bind.expanding and isinstance(value, (list, tuple)) else 1
        biggest = max(biggest, n)
    return biggest


def test_every_statement_of_a_campaign_compiles_to_t_sql(tmp_path, make_sandbox, make_pipeline):
    db = Database(f"sqlite:///{tmp_path / 'pipeline.db'}", create=False)
    mssql_db = Database(MSSQL_URL, create=False)  # builds the engine; connects to nothing
    dialect = mssql_db.engine.dialect
    channels = parse_channels({"channels": [{"name": "E2E", "from_number": SENDER, "keywords": ["MORE"],
                                             "connectivity_test": False}]})
    try:
        statements = _campaign_statements(db, make_pipeline(db, make_sandbox(status_delay_ms=50), channels))
    finally:
        db.dispose()
    kinds = {type(e).__name__ for e, _ in statements}
    assert {"CreateTable", "CreateIndex", "Insert", "Update", "Delete", "Select"} <= kinds, kinds
    problems = []
    for element, param_sets in statements:
        sql = str(element.compile(dialect=dialect))
        if "strftime" in sql:  # SQLite's lease clock: the dialect's own form is checked below
            continue
        if re.search(r"\bLIMIT\b|\bON CONFLICT\b|\bRETURNING\b|\bILIKE\b|\|\|", sql):
            problems.append(f"not T-SQL: {sql[:200]}")
        if isinstance(element, ExecutableDDLElement):
            if re.search(r"(?<!N)VARCHAR|N?TEXT\b|\bDATETIME\b(?!2)|\bTIMESTAMP\b", sql):
                problems.append(f"DDL types: {sql[:300]}")
            continue
        count = _parameter_count(element.compile(dialect=dialect), param_sets)
        if count >= MAX_PARAMETERS:
            problems.append(f"{count} parameters: {sql[:200]}")
    assert not problems, "\n".join(problems)
    clock = str(mssql_db.clock(60).compile(dialect=dialect))
    assert "sysutcdatetime()" in clock.lower() and "dateadd" in clock.lower()
    assert mssql_db.engine.dialect.fast_executemany is True
    mssql_db.dispose()


def test_an_unreachable_sql_server_is_one_clear_line_without_the_password(tmp_path):
    pytest.importorskip("pyodbc", reason="the mssql extra (pyodbc, unixODBC) is not installed")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "TWILIO_PIPELINE_DATABASE_URL": MSSQL_URL,
           "TWILIO_PIPELINE_CHANNELS": str(tmp_path / "channels.yaml")}
    (tmp_path / "channels.yaml").write_text("channels: []\n")
    proc = subprocess.run([sys.executable, "-m", "twilio_pipeline.cli", "init-db"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open the database mssql+pyodbc://"), proc.stderr
    assert "Traceback" not in proc.stderr and "s3cret-pw" not in proc.stdout + proc.stderr
