"""The `log` the domain functions take, and a log that keeps its lines.

Outbound and inbound steps write to whatever they are given: Dagster's `context.log` in a run, a
`ListLog` when called directly (tests, benchmarks, a notebook) so the lines can be read afterwards.
"""

from __future__ import annotations

from typing import Any, Protocol


class Log(Protocol):
    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...


class ListLog:
    """Keeps every line in order (what Dagster's context.log would show), the warnings also apart;
    prints nothing."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.warnings: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(str(msg))

    def warning(self, msg: str) -> None:
        self.lines.append(str(msg))
        self.warnings.append(str(msg))

    def debug(self, msg: str) -> None:
        pass


class TeeLog(ListLog):
    """Forwards every line to another log and keeps it: a Dagster step's report (what the CLI prints) is
    then the very sentences the step logged."""

    def __init__(self, target: Log) -> None:
        super().__init__()
        self.target = target

    def info(self, msg: str) -> None:
        super().info(msg)
        self.target.info(msg)

    def warning(self, msg: str) -> None:
        super().warning(msg)
        self.target.warning(msg)

    def debug(self, msg: str) -> None:
        debug = getattr(self.target, "debug", None)
        if debug is not None:
            debug(msg)
