"""docs/reference.md names every user-facing name the code has: a variable read, a subcommand or flag, a
channel-file key, a table or column, a result, a Dagster definition added without its line there fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pydantic
import pytest

from twilio_pipeline.channels import Channel
from twilio_pipeline.cli import build_parser
from twilio_pipeline.db.schema import build_tables
from twilio_pipeline.defs.runner import OUTBOUND_ORDER
from twilio_pipeline.inbound.aggregate import INBOUND_PREFIXES
from twilio_pipeline.outbound import ledger
from twilio_pipeline.outbound.execution import SENDABLE, STATUS_CANCELLED
from twilio_pipeline.rules.states import DELIVERY_STATES, REPLIED, STATUS_RANK
from twilio_pipeline.sandbox.cli import build_parser as sandbox_parser

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
ENV_NAME = re.compile(r"^(TWILIO|DAGSTER)_[A-Z0-9_]*[A-Z0-9]$")


def _documented(name: str) -> bool:
    return f"`{name}`" in REFERENCE or f"`{name} " in REFERENCE or f"`{name}," in REFERENCE


def _string_constants(paths) -> set[str]:
    return {node.value for path in paths for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_every_environment_variable_the_code_reads_is_documented():
    names = {s for s in _string_constants((ROOT / "twilio_pipeline").rglob("*.py")) if ENV_NAME.match(s)}
    test_servers = re.compile(r"[\"'](TWILIO_PIPELINE_TEST_[A-Z0-9_]*[A-Z0-9])[\"']")
    for path in (ROOT / "twilio_pipeline_tests").rglob("*.py"):
        names |= set(test_servers.findall(path.read_text(encoding="utf-8")))
    deploy = ROOT / "deploy"
    for path in deploy.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            names |= set(re.findall(r"\{env: ([A-Z0-9_]+)\}", text))  # dagster.yaml / workspace env values
            names |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", text))  # shell and systemd expansions
            names |= set(re.findall(r"environ\.get\(\"([A-Z0-9_]+)\"", text))
    assert {"TWILIO_PIPELINE_DATABASE_URL", "TWILIO_PIPELINE_CODE_SERVER_HOST"} <= names  # the scan works
    missing = sorted(n for n in names if not _documented(n))
    assert not missing, f"read by the code but not in docs/reference.md: {missing}"


def _subcommands(parser) -> dict:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_cli_subcommand_and_flag_is_documented():
    commands = _subcommands(build_parser())
    assert {"init-db", "send", "sync", "results", "demo", "worker", "sandbox"} <= set(commands)
    missing = [f"twilio-pipeline {name}" for name in commands if f"`twilio-pipeline {name}" not in REFERENCE]
    flags = {opt for sub in commands.values() for a in sub._actions for opt in a.option_strings}
    flags |= {opt for a in sandbox_parser()._actions for opt in a.option_strings}
    missing += sorted(f for f in flags - {"-h", "--help"} if f not in REFERENCE)
    assert not missing, f"not in docs/reference.md: {missing}"


def _keys(model: type[pydantic.BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, pydantic.BaseModel):
            keys += _keys(nested, f"{prefix}{name}.")  # `retry.max_attempts`, ...
        else:
            keys.append(prefix + name)
    return keys


def test_every_channel_file_key_is_documented():
    from twilio_pipeline.channels import FollowUp

    keys = _keys(Channel) + _keys(FollowUp, "follow_ups.<KEYWORD>.")
    missing = [k for k in keys if f"| `{k}` |" not in REFERENCE]
    assert not missing, f"channel-file keys not in docs/reference.md: {missing}"


def test_every_table_and_column_is_documented():
    tables = build_tables()
    missing = [t.name for t in tables.metadata.tables.values() if f"`{t.name}`" not in REFERENCE]
    for table in tables.contract_tables():
        missing += [f"{table.name}.{c.name}" for c in table.columns if f"`{c.name}`" not in REFERENCE]
    assert not missing, f"not in docs/reference.md: {missing}"


def test_every_state_status_outcome_and_result_name_is_documented():
    names = list(OUTBOUND_ORDER) + list(DELIVERY_STATES) + [REPLIED, *SENDABLE, STATUS_CANCELLED]
    names += [f"{p}<{'status' if p == 'Status:' else 'KEYWORD'}>" for p in INBOUND_PREFIXES]
    names += [getattr(ledger, n) for n in ("PLANNED", "INFLIGHT", "SENT", "REFUSED", "AMBIGUOUS", "INVALID",
                                           "DUPLICATE", "SUPPRESSED", "NOT_RENDERED")]
    missing = [n for n in names if not _documented(n)]
    missing += [s for s in STATUS_RANK if s not in REFERENCE]
    assert not missing, f"not in docs/reference.md: {missing}"


@pytest.fixture(scope="module")
def definitions():
    from twilio_pipeline.definitions import defs

    return defs


def test_every_dagster_name_is_documented(definitions):
    repo = definitions.get_repository_def()
    names = [key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()]
    names += [check.name for check in repo.asset_graph.asset_check_keys]
    names += [job.name for job in repo.get_all_jobs() if not job.name.startswith("__")]
    names += [s.name for s in repo.sensor_defs] + [s.name for s in repo.schedule_defs]
    missing = [n for n in names if f"`{n}`" not in REFERENCE]
    assert not missing, f"Dagster names not in docs/reference.md: {missing}"
