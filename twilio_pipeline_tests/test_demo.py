"""`twilio-pipeline demo` as a user runs it, twice on one store: what it says and what it counts agree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from twilio_pipeline.sandbox.embedded import stop_embedded_sandbox
from twilio_pipeline.sandbox.process import admin_call
from twilio_pipeline.settings import project_root

pytestmark = pytest.mark.slow


def _last_results(out: str) -> dict[str, float]:
    block = out.rsplit("Execution ", 1)[-1]
    rows = [line.split() for line in block.splitlines() if line.startswith("  ") and len(line.split()) == 2]
    return {name: float(value.replace(",", "")) for name, value in rows}


def test_a_second_demo_counts_the_stops_it_tells_about_as_unsubscribed(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(project_root() / "dagster.yaml", home / "dagster.yaml")
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
    env.update(DAGSTER_HOME=str(home), TWILIO_PIPELINE_DATA_DIR=str(data))

    def stopped_21610() -> int:
        server = json.loads((data / "sandbox" / "server.json").read_text())
        stats = admin_call(server["base_url"], "AC" + "0" * 32, "sandbox-auth-token", "GET", "/_sandbox/stats")
        return int(stats["errors_by_code"].get("21610", 0))

    try:
        for _ in range(2):  # the second run is the one that contradicted itself
            proc = subprocess.run([sys.executable, "-m", "twilio_pipeline.cli", "demo", "--contacts", "60"],
                                  env=env, capture_output=True, text=True, timeout=400, cwd=project_root())
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "5 recipients" in proc.stdout and "replied STOP" in proc.stdout
            assert _last_results(proc.stdout)["Unsubscribed"] >= 5, proc.stdout
            assert stopped_21610() == 0  # no told-about STOP was texted and refused instead
    finally:
        stop_embedded_sandbox(data)
