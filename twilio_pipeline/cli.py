"""`twilio-pipeline`: the command line of docs/reference.md "Commands". Runs go through Dagster in-process and are
recorded in the instance of DAGSTER_HOME (the repo's own by default, the one `make ui` shows).

Exit codes: 0 success; 1 the run failed; 2 bad input (one line, no traceback); 3 another live run is
sending the same execution.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from twilio_pipeline.cli_errors import EXIT_FAILED, EXIT_INPUT, EXIT_OK, CliError


def _prepare_dagster_home() -> None:
    """Unset DAGSTER_HOME means the repo's instance (.dagster/ holding a link to the repo's dagster.yaml)."""
    from twilio_pipeline.settings import project_root

    if os.environ.get("DAGSTER_HOME"):
        Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        return
    root = project_root()
    home = root / ".dagster"
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.exists() and (root / "dagster.yaml").exists():
        with suppress(FileExistsError):
            link.symlink_to(root / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)


def _say(text: str) -> None:
    print(text, flush=True)


def _settings_and_database():
    """Settings and the database (its tables created), each failure one clear line."""
    from twilio_pipeline.db import Database
    from twilio_pipeline.settings import SANDBOX_MODE_NOTICE, SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    if settings.sandbox_mode:
        _say(f"[{SANDBOX_MODE_NOTICE}]")
    try:
        db = Database(settings.database_url, schema=settings.db_schema, prefix=settings.table_prefix)
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one line
        raise CliError(f"cannot open the database {_safe_url(settings.database_url)}: {_first_line(exc)}") from None
    if db.upgraded:
        _say("Upgraded tables of an earlier release: added " + ", ".join(db.upgraded))
    return settings, db


@contextmanager
def _context():
    """Settings, database and channel file; the engine is disposed after."""
    from twilio_pipeline.channels import ChannelConfigError, load_channels

    settings, db = _settings_and_database()
    try:
        channels = load_channels(settings.channels_path)
    except ChannelConfigError as exc:
        db.dispose()
        raise CliError(str(exc)) from None
    try:
        yield settings, db, channels
    finally:
        db.dispose()


def _check_accounts(channels) -> None:
    """A channel naming an account whose TWILIO_<NAME>_ACCOUNT_SID is unset: one line, exit 2, before any
    run starts (never sandbox mode)."""
    from twilio_pipeline.settings import SettingsError, account_credentials

    for channel in channels:
        if channel.account is not None:
            try:
                account_credentials(channel.name, channel.account)
            except SettingsError as exc:
                raise CliError(str(exc)) from None


def _safe_url(url: str) -> str:
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparseable URL)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---- commands ---------------------------------------------------------------------------------

def cmd_init_db(_args) -> int:
    settings, db = _settings_and_database()
    names = ", ".join(t.name for t in db.tables.contract_tables())
    _say(f"Tables ready in {_safe_url(settings.database_url)}: {names} (+ internal ledger, watermarks, leases)")
    db.dispose()
    return EXIT_OK


def cmd_sandbox(argv: Sequence[str]) -> int:
    from twilio_pipeline.sandbox.cli import main as sandbox_main

    return sandbox_main(list(argv))


def cmd_send(args) -> int:
    from twilio_pipeline.channels import ChannelConfigError
    from twilio_pipeline.outbound import OutboundInputError, load_execution, send_refusal
    from twilio_pipeline.outbound.execution import record_unsendable

    with _context() as (settings, db, channels):
        try:  # bad input is answered before Dagster is even imported (seconds sooner)
            row, channel = load_execution(db, channels, args.execution_id)
        except (OutboundInputError, ChannelConfigError) as exc:
            if str(args.execution_id).lstrip("-").isdigit():  # the upstream sees why, as from any other launch
                record_unsendable(db, int(args.execution_id), str(exc))
            raise CliError(str(exc)) from None
        refusal = send_refusal(row, force=args.force)
        if refusal:
            raise CliError(refusal)
        _check_accounts([channel])
        from twilio_pipeline.defs.runner import run_send

        return run_send(settings, db, channel, args.execution_id, say=_say, force=args.force)


def cmd_sync(args) -> int:
    from twilio_pipeline.channels import ChannelConfigError
    from twilio_pipeline.defs.runner import run_sync

    with _context() as (settings, db, channels):
        if args.channel:
            try:
                channels.get(args.channel)
            except ChannelConfigError as exc:
                raise CliError(str(exc)) from None
        _check_accounts([channels.get(args.channel)] if args.channel else channels.channels)
        return run_sync(settings, db, channels, args.channel, say=_say)


def cmd_results(args) -> int:
    from twilio_pipeline.defs.runner import print_results

    with _context() as (_settings, db, _channels):
        return print_results(db, args.execution_id, say=_say)


DEMO_FORCED_DEFAULTS = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_KEY_SID", "TWILIO_API_KEY_SECRET",
                        "TWILIO_API_BASE_URL", "TWILIO_BULKEXPORTS_BASE_URL", "TWILIO_MESSAGING_BASE_URL",
                        "TWILIO_PIPELINE_DATABASE_URL", "TWILIO_PIPELINE_DB_SCHEMA", "TWILIO_PIPELINE_TABLE_PREFIX")


def cmd_demo(args) -> int:
    """The demo always runs on the embedded default: it must never text real phones or touch a real database."""
    from twilio_pipeline.demo import run_demo

    for name in DEMO_FORCED_DEFAULTS:
        os.environ.pop(name, None)
    with _context() as (settings, db, channels):
        return run_demo(settings, db, channels, contacts=args.contacts, say=_say)


def cmd_worker(args) -> int:
    """A celery worker for this code location's steps (TWILIO_PIPELINE_EXECUTOR=celery deployments)."""
    from twilio_pipeline.settings import SettingsError
    from twilio_pipeline.worker import run_worker

    try:
        return run_worker(args.concurrency)
    except SettingsError as exc:
        raise CliError(str(exc)) from None


def _execution_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"EXECUTION_ID must be an integer, not {text!r}") from None
    if not -2**31 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"EXECUTION_ID {value} is out of the INT range")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twilio-pipeline", description="Twilio SMS channel: send channel executions and sync their states.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init-db", help="create the tables (idempotent)")
    sub.add_parser("sandbox", help="run the Twilio-compatible sandbox in the foreground", add_help=False)
    p = sub.add_parser("send", help="send one channel execution (Status ready, sending, failed or sent)")
    p.add_argument("execution_id", type=_execution_id, metavar="EXECUTION_ID")
    p.add_argument("--force", action="store_true",
                   help="send even if its Status is another (cancelled, draft, ...) or its SendAfter is ahead")
    p = sub.add_parser("sync", help="run the channel sync")
    p.add_argument("--channel", metavar="NAME", help="only this channel")
    p = sub.add_parser("results", help="print an execution's results")
    p.add_argument("execution_id", type=_execution_id, metavar="EXECUTION_ID")
    p = sub.add_parser("demo", help="what `make demo` runs")
    p.add_argument("--contacts", type=int, default=2000, metavar="N")
    p = sub.add_parser("worker", help="a celery worker running this code location's steps")
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="steps run at once (default: the number of CPUs)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sandbox":
        return cmd_sandbox(argv[1:])
    args = build_parser().parse_args(argv)
    from twilio_pipeline.signals import record_signals, stop_signal

    record_signals()  # SIGTERM cleans up like Ctrl-C, and the StatusReason can name the signal
    _prepare_dagster_home()
    from twilio_pipeline.settings import SettingsError

    handlers = {"init-db": cmd_init_db, "send": cmd_send, "sync": cmd_sync, "results": cmd_results,
                "demo": cmd_demo, "worker": cmd_worker}
    try:
        return handlers[args.command](args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        print(f"interrupted by {stop_signal() or 'SIGINT'}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except SettingsError as exc:  # raised while loading the Definitions (e.g. TWILIO_PIPELINE_EXECUTOR)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
