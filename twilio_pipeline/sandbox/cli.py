"""`twilio-pipeline sandbox [flags]`: run the Twilio-compatible sandbox in the foreground.

Flags and defaults are the ones docs/reference.md "Sandbox" lists; credentials default to the environment's
TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN (and TWILIO_API_KEY_SID / TWILIO_API_KEY_SECRET), else to
the fixed sandbox credentials of `credentials.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from pathlib import Path

from twilio_pipeline.sandbox.config import SandboxConfig
from twilio_pipeline.sandbox.credentials import (
    SANDBOX_ACCOUNT_SID,
    SANDBOX_AUTH_TOKEN,
    SANDBOX_MESSAGING_SERVICE_SID,
    SANDBOX_OWNED_NUMBERS,
    SANDBOX_POOL_NUMBERS,
)
from twilio_pipeline.sandbox.rules import is_alpha_sender, is_e164, is_short_code
from twilio_pipeline.sandbox.server import serve

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
_API_KEY_SID = re.compile(r"^SK[0-9a-fA-F]{32}$")


def _numbers(flag: str, text: str, check, what: str) -> tuple[str, ...]:
    """A comma-separated flag value as a tuple; ValueError naming the flag and the bad item."""
    items = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    for item in items:
        if not check(item):
            raise ValueError(f"{flag}: {item!r} is not {what}")
    return items


def _subaccount(text: str) -> tuple[str, str]:
    sid, sep, token = text.partition(":")
    if not sep or not _ACCOUNT_SID.match(sid.strip()) or not token.strip():
        raise argparse.ArgumentTypeError("expected SID:TOKEN with SID 'AC' followed by 32 hex digits")
    return sid.strip(), token.strip()


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="twilio-pipeline sandbox",
        description="Run the Twilio-compatible sandbox (API 2010-04-01 Messages and "
        "IncomingPhoneNumbers, Messaging v1 Services, Bulk Exports v1) in the foreground. "
        "Stops cleanly (state flushed, exit 0) on SIGTERM or Ctrl-C.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8787, help="port (default 8787; 0 picks a free one, see --port-file)")
    p.add_argument("--store", type=Path, default=None,
                   help="directory holding the state (locked while the sandbox runs); "
                        "without it the state lives in memory only")
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port to this file once listening")
    p.add_argument("--account-sid", default=None,
                   help="account SID accepted (default: $TWILIO_ACCOUNT_SID, else the sandbox's fixed one)")
    p.add_argument("--auth-token", default=None,
                   help="auth token accepted (default: $TWILIO_AUTH_TOKEN, else the sandbox's fixed one)")
    p.add_argument("--api-key-sid", default=None, help="API key SID (SK...) also accepted as Basic username")
    p.add_argument("--api-key-secret", default=None, help="secret of --api-key-sid")
    p.add_argument("--latency-ms", type=_non_negative, default=0.0, help="added to every API request (default 0)")
    p.add_argument("--max-concurrency", type=_positive_int, default=100,
                   help="requests in flight beyond this get 429 / 20429, not processed (default 100)")
    p.add_argument("--status-delay-ms", type=_non_negative, default=1000.0,
                   help="simulated time per lifecycle step, e.g. queued -> sending (default 1000)")
    p.add_argument("--undelivered-rate", type=_rate, default=0.0, help="share of messages ending undelivered")
    p.add_argument("--failed-rate", type=_rate, default=0.0, help="share of messages ending failed")
    p.add_argument("--reply-rate", type=_rate, default=0.0, help="share of delivered messages that get a reply")
    p.add_argument("--reply-keywords", default="MORE",
                   help="comma-separated channel keywords recipients may reply with (default MORE)")
    p.add_argument("--seed", type=int, default=0, help="seed of outcomes, replies and faults (default 0)")
    p.add_argument("--fault-429-rate", type=_rate, default=0.0, help="share of API requests answered 429 / 20429")
    p.add_argument("--fault-500-rate", type=_rate, default=0.0, help="share of API requests answered 500")
    p.add_argument("--fault-reset-rate", type=_rate, default=0.0, help="share of API requests whose connection is reset")
    p.add_argument("--fault-timeout-rate", type=_rate, default=0.0,
                   help="share of API requests never answered (stalled for --timeout-s, then closed)")
    p.add_argument("--fault-after-create", type=_rate, default=0.5,
                   help="for creates hit by a 500 or a timeout: the share where the message was created "
                        "anyway (default 0.5)")
    p.add_argument("--timeout-s", type=_non_negative, default=60.0, help="how long a timeout fault stalls (default 60)")
    p.add_argument("--messaging-service-sid", default=SANDBOX_MESSAGING_SERVICE_SID,
                   help="SID of the built-in Messaging Service")
    p.add_argument("--pool-numbers", default=",".join(SANDBOX_POOL_NUMBERS),
                   help="comma-separated sender pool of the built-in Messaging Service")
    p.add_argument("--owned-numbers", default=",".join(SANDBOX_OWNED_NUMBERS),
                   help="comma-separated phone numbers the account owns besides the pool numbers, listed by "
                        "IncomingPhoneNumbers; any other From gets 400 / 21606 (default +15005550006)")
    p.add_argument("--pool-short-codes", default="",
                   help="comma-separated short codes of the built-in Messaging Service (its ShortCodes)")
    p.add_argument("--pool-alpha-senders", default="",
                   help="comma-separated alphanumeric sender IDs of the built-in service (its AlphaSenders; send only)")
    p.add_argument("--subaccount", action="append", type=_subaccount, default=[], metavar="SID:TOKEN",
                   help="another account (repeatable) with the same numbers that sees only its own messages")
    p.add_argument("--sent-final-rate", type=_rate, default=0.0,
                   help="share of messages that reach 'sent' and never get a carrier receipt (default 0)")
    p.add_argument("--list-lag-ms", type=_non_negative, default=0.0,
                   help="a created message is listed only this long after creation, on the sandbox clock "
                        "(a fetch by SID finds it at once; default 0)")
    p.add_argument("--redact-bodies", action="store_true",
                   help="listings, fetches and exports return outbound bodies as \"\" (Twilio Message Redaction)")
    p.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="do not log each request (method, path, status, duration; never credentials)")
    return p


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> SandboxConfig:
    """Flags, then environment, then the fixed sandbox credentials; ValueError on bad values."""
    env = os.environ if environ is None else environ
    account_sid = args.account_sid or env.get("TWILIO_ACCOUNT_SID") or SANDBOX_ACCOUNT_SID
    auth_token = args.auth_token or env.get("TWILIO_AUTH_TOKEN") or SANDBOX_AUTH_TOKEN
    api_key_sid = args.api_key_sid or env.get("TWILIO_API_KEY_SID") or None
    api_key_secret = args.api_key_secret or env.get("TWILIO_API_KEY_SECRET") or None
    if not _ACCOUNT_SID.match(account_sid):
        raise ValueError("--account-sid must be 'AC' followed by 32 hex digits")
    if (api_key_sid is None) != (api_key_secret is None):
        raise ValueError("--api-key-sid and --api-key-secret go together")
    if api_key_sid is not None and not _API_KEY_SID.match(api_key_sid):
        raise ValueError("--api-key-sid must be 'SK' followed by 32 hex digits")
    if not _SERVICE_SID.match(args.messaging_service_sid):
        raise ValueError("--messaging-service-sid must be 'MG' followed by 32 hex digits")
    pool = _numbers("--pool-numbers", args.pool_numbers, lambda n: is_e164(n) or is_short_code(n),
                    "an E.164 number or a short code")
    if not pool:
        raise ValueError("--pool-numbers needs at least one number")
    owned = _numbers("--owned-numbers", args.owned_numbers, lambda n: is_e164(n) or is_short_code(n),
                     "an E.164 number or a short code")
    short_codes = _numbers("--pool-short-codes", args.pool_short_codes, is_short_code, "a 5-6 digit short code")
    alpha = _numbers("--pool-alpha-senders", args.pool_alpha_senders, is_alpha_sender,
                     "an alphanumeric sender ID (1-11 letters, digits or spaces, at least one letter)")
    subaccounts = tuple(dict.fromkeys(args.subaccount))
    if any(sid == account_sid for sid, _ in subaccounts):
        raise ValueError("--subaccount: a subaccount cannot have the main account's SID")
    if len({sid for sid, _ in subaccounts}) != len(subaccounts):
        raise ValueError("--subaccount: each SID once")
    if not 0 <= args.port <= 65535:
        raise ValueError("--port must be between 0 and 65535")
    keywords = tuple(k.strip().upper() for k in args.reply_keywords.split(",") if k.strip())
    return SandboxConfig(
        host=args.host, port=args.port, store=args.store, port_file=args.port_file,
        account_sid=account_sid, auth_token=auth_token,
        api_key_sid=api_key_sid, api_key_secret=api_key_secret,
        latency_s=args.latency_ms / 1000.0, max_concurrency=args.max_concurrency,
        status_delay_s=args.status_delay_ms / 1000.0,
        undelivered_rate=args.undelivered_rate, failed_rate=args.failed_rate,
        reply_rate=args.reply_rate, reply_keywords=keywords, seed=args.seed,
        fault_429_rate=args.fault_429_rate, fault_500_rate=args.fault_500_rate,
        fault_reset_rate=args.fault_reset_rate, fault_timeout_rate=args.fault_timeout_rate,
        fault_after_create=args.fault_after_create, timeout_s=args.timeout_s,
        messaging_service_sid=args.messaging_service_sid, pool_numbers=pool,
        access_log=args.access_log, owned_numbers=owned, pool_short_codes=short_codes,
        pool_alpha_senders=alpha, subaccounts=subaccounts, sent_final_rate=args.sent_final_rate,
        list_lag_s=args.list_lag_ms / 1000.0, redact_bodies=args.redact_bodies,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox until SIGTERM/SIGINT; 0 then, 2 on bad flags, a taken store or a busy port."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"twilio-pipeline sandbox: {exc}", file=sys.stderr)
        return 2
    if config.failed_rate + config.undelivered_rate > 1.0:
        print("twilio-pipeline sandbox: --failed-rate + --undelivered-rate must not exceed 1", file=sys.stderr)
        return 2
    if config.fault_429_rate + config.fault_500_rate + config.fault_reset_rate + config.fault_timeout_rate > 1.0:
        print("twilio-pipeline sandbox: the --fault-*-rate flags must not add up to more than 1", file=sys.stderr)
        return 2
    logger = logging.getLogger("twilio_pipeline.sandbox")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        return _run_loop(serve(config))
    except KeyboardInterrupt:
        return 0


def _run_loop(coro) -> int:
    """Run on uvloop when it is installed (about a third less CPU per request), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
