"""The console logger of CLI runs: Dagster's log lines, with an error reduced to its one-line cause.

Dagster's default console logger appends the whole stack of a failed step to the line. On the command
line that reads as a crash even when the failure is an expected, explained one (another run holds the
execution, Twilio rejected the credentials). The stack is not lost: it stays in the run's event log,
which the Dagster UI shows; the CLI's own answer is its one line on stdout.
"""

from __future__ import annotations

import copy
import logging
import sys

import dagster as dg

# Dagster wraps the exception raised in a step in these; the user's own error is their cause.
FRAMEWORK_WRAPPERS = ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError")


def user_error(error) -> tuple[str, str]:
    """(class name, first line of the message) of the error a step raised, unwrapped from Dagster's
    framework errors; `error` is a SerializableErrorInfo."""
    while error.cause is not None and error.cls_name in FRAMEWORK_WRAPPERS:
        error = error.cause
    lines = error.message.strip().splitlines()
    first = lines[0] if lines else ""
    if ": " in first and error.cls_name in first.split(": ", 1)[0]:  # "module.Class: message"
        first = first.split(": ", 1)[1]
    return error.cls_name, first or error.cls_name


class OneLineErrors(logging.Formatter):
    """Formats a record as Dagster's console logger does, but an event's error as `Class: message`."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event") if isinstance(meta, dict) else None
        error = getattr(getattr(event, "event_specific_data", None), "error", None)
        if error is not None:
            record = copy.copy(record)
            head = record.getMessage().split("\n\n", 1)[0]
            cls_name, message = user_error(error)
            record.msg, record.args = f"{head} {cls_name}: {message}", ()
        return super().format(record)


@dg.logger(
    dg.Field({"log_level": dg.Field(str, is_required=False, default_value="INFO")}),
    description="Console logger of CLI runs: one line per event, errors without their stack.",
)
def one_line_console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    level = logging.getLevelName(init_context.logger_config["log_level"].upper())
    logger = logging.Logger("dagster", level=level if isinstance(level, int) else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineErrors("%(asctime)s - %(name)s - %(levelname)s - %(message)s", "%Y-%m-%d %H:%M:%S %z"))
    logger.addHandler(handler)
    return logger
