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
