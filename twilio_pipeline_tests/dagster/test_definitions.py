"""The code location as users see it in the UI: it loads, and names the assets, checks, jobs,
sensors and schedules the docs promise."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import dagster as dg
import pytest

from twilio_pipeline.definitions import defs
from twilio_pipeline.settings import project_root

OUTBOUND = {"suppression_refresh", "dedupe", "send", "message_id_staging"}
INBOUND = {"keyword_parse", "status_fetch", "state_bulk_load", "aggregate_results"}


def test_definitions_validate():
    dg.Definitions.validate_loadable(defs)


def test_asset_graph_has_the_cards_groups():
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert {k for k, g in groups.items() if g == "outbound"} == OUTBOUND
    assert {k for k, g in groups.items() if g == "inbound"} == INBOUND
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, f"{key} has no description"


def test_descriptions_render_their_placeholders_on_the_asset_page():
    """The UI renders descriptions as Markdown: a bare `<status>` is swallowed as an HTML tag, so every
    placeholder in angle brackets must sit inside a code span."""
    graph = defs.resolve_asset_graph()
    texts = [graph.get(key).description or "" for key in graph.get_all_asset_keys()]
    texts += [job.description or "" for job in defs.resolve_all_job_defs()]
    for text in texts:
        outside_code = re.sub(r"`[^`]*`", "", text)
        assert not re.search(r"<[A-Za-z][^>]*>", outside_code), f"markup swallowed by the UI in: {text!r}"


def test_checks_jobs_sensors_schedules_are_there():
    graph = defs.resolve_asset_graph()
    checks = {k.name for k in graph.asset_check_keys}
    assert {"twilio_connectivity", "invalid_number_rate", "outbound_identities_hold", "no_sids_past_validity",
            "states_match_offer_history", "results_identities_hold", "delivery_rate"} <= checks
    for job in ("outbound_job", "channel_sync_job", "execution_sync_job"):
        assert defs.resolve_job_def(job)
    assert defs.resolve_sensor_def("queue_listener") and defs.resolve_sensor_def("execution_sync_chain")
    assert defs.resolve_schedule_def("channel_sync_schedule") and defs.resolve_schedule_def("daily_suppression_refresh")


def test_twilio_steps_are_in_the_twilio_api_pool():
    graph = defs.resolve_asset_graph()
    for name in ("suppression_refresh", "send", "keyword_parse", "status_fetch"):
        node = graph.get(dg.AssetKey(name))
        assert node.pools == {"twilio_api"}, name


@pytest.mark.slow
def test_dagster_cli_validates_the_workspace(tmp_path):
    workspace = project_root() / "workspace.yaml"
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(workspace)],
                          capture_output=True, text=True, env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
                          timeout=180, cwd=project_root())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Validation successful" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_dg_knows_the_project_from_the_repo_root():
    """`dg check defs` and `dg list defs`, Dagster's current CLI, load this code location from the repo root."""
    venv = os.path.dirname(os.path.dirname(sys.executable))
    env = {**os.environ, "VIRTUAL_ENV": venv, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    dg_cli = os.path.join(os.path.dirname(sys.executable), "dg")
    check = subprocess.run([dg_cli, "check", "defs"], cwd=project_root(), env=env, capture_output=True, text=True,
                           timeout=180)
    assert check.returncode == 0 and "All definitions loaded successfully" in check.stdout + check.stderr, check
    listed = subprocess.run([dg_cli, "list", "defs", "--json"], cwd=project_root(), env=env, capture_output=True,
                            text=True, timeout=180)
    assert listed.returncode == 0, listed
    inventory = json.loads(listed.stdout)
    assets = {a["asset_key"] for a in inventory["assets"]}
    assert assets >= OUTBOUND | INBOUND, assets
    assert {s["name"] for s in inventory["sensors"]} >= {"queue_listener", "execution_sync_chain"}
