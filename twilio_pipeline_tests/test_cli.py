"""`twilio-pipeline` as a user runs it: real subprocesses against the sandbox, runs recorded in the
Dagster instance, exit codes and one-line errors as docs/reference.md promises."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from twilio_pipeline.audience import create_execution
from twilio_pipeline.db import Database
from twilio_pipeline.sandbox.process import SandboxProcess
from twilio_pipeline.settings import project_root

pytestmark = pytest.mark.slow
CHANNEL = "CLI Channel"
TYPO_CHANNEL = "Typo Channel"
TYPO_NUMBER = "+15005550060"  # one digit off the account's +15005550006


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(project_root() / "dagster.yaml", home / "dagster.yaml")
    channels = tmp / "channels.yaml"
    channels.write_text(yaml.safe_dump({"channels": [
        {"name": CHANNEL, "from_number": "+15005550006", "keywords": ["MORE"], "price_per_segment": 0.01,
         "follow_ups": {"MORE": {"body": "Here is more, {{FirstName}}"}}},
        {"name": TYPO_CHANNEL, "from_number": TYPO_NUMBER}]}))
    db_url = f"sqlite:///{tmp / 'cli.db'}"
    with SandboxProcess(tmp / "sandbox", status_delay_ms=50) as sb:
        env = {**os.environ, "DAGSTER_HOME": str(home), "TWILIO_PIPELINE_DATABASE_URL": db_url,
               "TWILIO_PIPELINE_CHANNELS": str(channels), "TWILIO_ACCOUNT_SID": sb.account_sid,
               "TWILIO_AUTH_TOKEN": sb.auth_token, "TWILIO_API_BASE_URL": sb.base_url,
               "TWILIO_BULKEXPORTS_BASE_URL": sb.base_url, "TWILIO_MESSAGING_BASE_URL": sb.base_url}
        db = Database(db_url)
        create_execution(db, 77, CHANNEL, "Hi {{FirstName}}",
                         [(i, f"+1415555{i:04d}", {"FirstName": "Ada"}) for i in range(1, 31)]
                         + [(31, "+1 (415) 555-0001", {"FirstName": "Dup"}), (32, "nope", {"FirstName": "Bad"})])
        create_execution(db, 78, "No Such Channel", "Hi", [(1, "+14155550100", None)])
        create_execution(db, 79, TYPO_CHANNEL, "Hi", [(1, "+14155550901", None), (2, "+14155550902", None)])
        db.dispose()
        yield {"env": env, "sandbox": sb, "home": home, "db_url": db_url}


def _results(out: str) -> dict[str, float]:
    """The `results` table the CLI prints: '  Name   value' lines."""
    rows = [line.split() for line in out.splitlines() if line.startswith("  ") and len(line.split()) == 2]
    return {name: float(value.replace(",", "")) for name, value in rows}


def cli(env, *args, timeout=240):
    proc = subprocess.run([sys.executable, "-m", "twilio_pipeline.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=project_root())
    return proc.returncode, proc.stdout, proc.stderr


def test_send_prints_the_counts_records_the_run_and_a_rerun_sends_nothing(cli_env):
    code, out, err = cli(cli_env["env"], "send", "77")
    assert code == 0, out + err
    counts = _results(out)
    assert (counts["CountBeforeDedup"], counts["Duplicates"], counts["InvalidNumbers"], counts["Targeted"]) == (32, 1, 1, 30)
    assert cli_env["sandbox"].stats()["messages_total"] >= 30
    sent_before = sum(cli_env["sandbox"].stats()["messages_created_by_to"].values())
    code, out, _ = cli(cli_env["env"], "send", "77")
    assert code == 0 and "nothing new to send" in out
    assert sum(cli_env["sandbox"].stats()["messages_created_by_to"].values()) == sent_before
    os.environ["DAGSTER_HOME"], previous = str(cli_env["home"]), os.environ.get("DAGSTER_HOME")
    try:
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"twilio_pipeline/execution": "77"}))
            assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            assert runs[0].tags["twilio_pipeline/mode"] == "live" and runs[0].tags["twilio_pipeline/channel"] == CHANNEL
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def test_results_and_sync(cli_env):
    cli_env["sandbox"].advance_clock(60)
    code, out, err = cli(cli_env["env"], "sync")
    assert code == 0, out + err
    assert "Execution 77 (CLI Channel): loaded" in out
    code, out, _ = cli(cli_env["env"], "results", "77")
    assert code == 0
    lines = _results(out)
    statuses = sum(v for k, v in lines.items() if k.startswith("Status:"))
    assert statuses == lines["Sent"] == 30


def test_a_keyword_reply_gets_one_follow_up_also_after_a_second_sync(cli_env):
    sb = cli_env["sandbox"]
    sb.inbound("+14155550007", "+15005550006", "more")
    code, out, err = cli(cli_env["env"], "sync")
    assert code == 0, out + err
    code, out, err = cli(cli_env["env"], "send", "-1")  # follow-ups take negative execution IDs
    assert code == 0, out + err
    to_contact = [m for m in sb.messages(to="+14155550007") if m["direction"] != "inbound"]
    assert len(to_contact) == 2 and to_contact[0]["body"] != to_contact[1]["body"]
    assert any(m["body"] == "Here is more, Ada" for m in to_contact)
    code, out, err = cli(cli_env["env"], "sync")
    assert code == 0, out + err
    code, out, err = cli(cli_env["env"], "results", "-2")
    assert code == 2 and "unknown execution -2" in err  # the same reply never makes a second follow-up


@pytest.mark.parametrize("args, fragment", [
    (("results", "999"), "unknown execution 999"),
    (("send", "999"), "999"),
    (("send", "78"), "No Such Channel"),
    (("send", "abc"), "EXECUTION_ID must be an integer"),
    (("sync", "--channel", "Nope"), "unknown channel 'Nope'"),
])
def test_bad_input_is_one_line_and_exit_2(cli_env, args, fragment):
    code, out, err = cli(cli_env["env"], *args)
    assert code == 2, out + err
    assert fragment in err
    assert "Traceback" not in out + err



def test_a_from_number_the_account_does_not_own_fails_the_send_before_any_message(cli_env):
    code, out, err = cli(cli_env["env"], "send", "79")
    assert code == 2, out + err
    assert TYPO_NUMBER in out + err and "IncomingPhoneNumbers" in out + err
    assert "Traceback" not in out + err
    sb = cli_env["sandbox"]
    assert sb.messages(to="+14155550901") == [] and sb.messages(to="+14155550902") == []
    assert "21606" not in sb.stats()["errors_by_code"]  # no create was even tried


@pytest.mark.parametrize("execution", ["999", "78"])
def test_send_answers_bad_input_before_loading_dagster(cli_env, execution):
    """An unknown execution or channel is answered without importing Dagster (seconds sooner)."""
    probe = ("import sys; from twilio_pipeline.cli import main; code = main(['send', sys.argv[1]]); "
             "print('dagster loaded' if 'dagster' in sys.modules else 'dagster not loaded'); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe, execution], env=cli_env["env"], capture_output=True,
                          text=True, timeout=120, cwd=project_root())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "dagster not loaded" in proc.stdout, proc.stdout + proc.stderr

def test_without_an_account_every_output_says_sandbox_mode(cli_env, tmp_path):
    env = {k: v for k, v in cli_env["env"].items() if not k.startswith("TWILIO_ACCOUNT")}
    env["TWILIO_PIPELINE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'x.db'}"
    code, out, _ = cli(env, "init-db")
    assert code == 0 and "sandbox mode" in out
