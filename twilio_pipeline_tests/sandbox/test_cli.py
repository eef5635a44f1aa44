"""`twilio-pipeline sandbox`: the contract's flags and defaults, credentials, bad input, clean stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from twilio_pipeline.sandbox.cli import build_parser, config_from_args, main
from twilio_pipeline.sandbox.credentials import SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN
from twilio_pipeline.sandbox.process import child_environment


def test_contract_flags_and_defaults():
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.store) == ("127.0.0.1", 8787, None)
    assert (args.latency_ms, args.max_concurrency, args.status_delay_ms) == (0, 100, 1000)
    assert (args.undelivered_rate, args.failed_rate, args.reply_rate, args.seed) == (0, 0, 0, 0)
    assert (args.fault_429_rate, args.fault_500_rate, args.fault_reset_rate, args.fault_timeout_rate) == (0, 0, 0, 0)
    assert args.fault_after_create == 0.5
    assert args.timeout_s == 60 and args.reply_keywords == "MORE"


def test_credentials_come_from_flags_then_environment_then_sandbox_defaults():
    parse = build_parser().parse_args
    config = config_from_args(parse([]), environ={})
    assert (config.account_sid, config.auth_token) == (SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN)
    env = {"TWILIO_ACCOUNT_SID": "AC" + "a" * 32, "TWILIO_AUTH_TOKEN": "from-env"}
    config = config_from_args(parse([]), environ=env)
    assert (config.account_sid, config.auth_token) == ("AC" + "a" * 32, "from-env")
    config = config_from_args(parse(["--account-sid", "AC" + "b" * 32, "--auth-token", "flag"]), environ=env)
    assert (config.account_sid, config.auth_token) == ("AC" + "b" * 32, "flag")


@pytest.mark.parametrize(
    "argv",
    [["--account-sid", "nope"], ["--api-key-sid", "SK" + "1" * 32], ["--pool-numbers", "abc"],
     ["--failed-rate", "0.7", "--undelivered-rate", "0.7"], ["--messaging-service-sid", "MG1"],
     ["--owned-numbers", "+1555"], ["--pool-short-codes", "1234"], ["--pool-alpha-senders", "TOO LONG NAME"],
     ["--subaccount", f"{SANDBOX_ACCOUNT_SID}:token"]],
)
def test_bad_values_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twilio-pipeline sandbox: ")


def test_second_round_flags_and_defaults():
    parse = build_parser().parse_args
    config = config_from_args(parse([]), environ={})
    assert config.owned_numbers == ("+15005550006",)
    assert (config.pool_short_codes, config.pool_alpha_senders, config.subaccounts) == ((), (), ())
    assert (config.sent_final_rate, config.list_lag_s, config.redact_bodies) == (0, 0, False)
    sub1, sub2 = "AC" + "1" * 32, "AC" + "2" * 32
    config = config_from_args(parse([
        "--owned-numbers", "+15017120001, +15017120002", "--pool-short-codes", "24680",
        "--pool-alpha-senders", "ACME,Acme Shop", "--subaccount", f"{sub1}:t1", "--subaccount", f"{sub2}:t2",
        "--sent-final-rate", "0.25", "--list-lag-ms", "1500", "--redact-bodies"]), environ={})
    assert config.owned_numbers == ("+15017120001", "+15017120002")
    assert (config.pool_short_codes, config.pool_alpha_senders) == (("24680",), ("ACME", "Acme Shop"))
    assert config.subaccounts == ((sub1, "t1"), (sub2, "t2"))
    assert (config.sent_final_rate, config.list_lag_s, config.redact_bodies) == (0.25, 1.5, True)
    with pytest.raises(SystemExit):
        parse(["--subaccount", "not-a-pair"])


def test_rates_are_checked_by_the_parser():
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--reply-rate", "1.5"])
    assert exc.value.code == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_foreground_run_stops_cleanly(tmp_path, signum):
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "twilio_pipeline.sandbox", "--port", "0", "--port-file", str(port_file),
         "--store", str(tmp_path / "store")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_environment(), text=True,
    )
    deadline = time.monotonic() + 20
    while not port_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "listening on http://127.0.0.1:" in out and "stopped" in out
    assert SANDBOX_AUTH_TOKEN not in out
