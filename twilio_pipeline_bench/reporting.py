"""How the benchmarks report: figures (printed and kept for the JSON file), the scenario context.

A figure is printed as one line, `name: value unit (target …, PASS|FAIL)`; a figure without a target
(a reference, such as the bare loop's own rate) prints `(reference)` instead. Every figure also goes
to the JSON file `--json` names, which is rewritten after each scenario so a crash keeps what ran.
Comparisons are of medians and ratios: these machines are shared, absolute times are not.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twilio_pipeline_bench.measuring import ChildFailed, ChildTimeout


# ---- figures ---------------------------------------------------------------------------------------
@dataclass
class Figure:
    scenario: str
    name: str
    value: float | int | str | None
    unit: str = ""
    target: str | None = None
    passed: bool | None = None
    note: str | None = None
    error: str | None = None

    def line(self) -> str:
        if self.error is not None:
            return f"{self.name}: ERROR {self.error}"
        value = _fmt(self.value)
        unit = f" {self.unit}" if self.unit else ""
        tail = "(reference)" if self.target is None else f"(target {self.target}, {'PASS' if self.passed else 'FAIL'})"
        note = f"  [{self.note}]" if self.note else ""
        return f"{self.name}: {value}{unit} {tail}{note}"


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", "_") if abs(value) >= 100_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.1:
            return f"{value:.2f}"
        return f"{value:.4g}"
    return str(value)


class Report:
    """Collects figures and scenario timings; prints as it goes; writes the JSON file."""

    def __init__(self, json_path: Path, meta: dict[str, Any]):
        self.json_path = json_path
        self.meta = meta
        self.figures: list[Figure] = []
        self.scenarios: dict[str, dict[str, Any]] = {}
        self.current = ""
        self._lock = threading.Lock()

    def figure(self, name: str, value, unit: str = "", *, target: str | None = None,
               passed: bool | None = None, note: str | None = None) -> Figure:
        fig = Figure(self.current, name, value, unit, target, passed, note)
        with self._lock:
            self.figures.append(fig)
        print(fig.line(), flush=True)
        return fig

    def reference(self, name: str, value, unit: str = "", note: str | None = None) -> Figure:
        return self.figure(name, value, unit, note=note)

    def error(self, name: str, exc: BaseException | str) -> Figure:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        text = " ".join(str(text).split())[:300]
        fig = Figure(self.current, name, None, error=text)
        with self._lock:
            self.figures.append(fig)
        print(fig.line(), flush=True)
        return fig

    def note(self, text: str) -> None:
        print(f"  # {text}", flush=True)
        self.scenarios.setdefault(self.current, {}).setdefault("notes", []).append(text)

    def write(self) -> None:
        data = {
            "meta": self.meta,
            "scenarios": self.scenarios,
            "figures": [fig.__dict__ for fig in self.figures],
            "summary": {
                "pass": sum(1 for f in self.figures if f.passed is True),
                "fail": sum(1 for f in self.figures if f.passed is False and f.error is None),
                "error": sum(1 for f in self.figures if f.error is not None),
            },
        }
        tmp = self.json_path.with_suffix(self.json_path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.json_path)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf") if a else float("nan")


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def machine_meta() -> dict[str, Any]:
    try:
        import psutil

        mem = psutil.virtual_memory().total
    except Exception:  # noqa: BLE001
        mem = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "memory_bytes": mem, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

def one_line(exc: BaseException) -> str:
    if isinstance(exc, (ChildFailed, ChildTimeout)):
        return str(exc)
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}"

# ---- scenario context ------------------------------------------------------------------------------
@dataclass
class Context:
    """What `__main__` hands each scenario's `run(ctx)`."""

    report: Report
    workdir: Path
    quick: bool = False
    db_kind: str = "sqlite"
    profile_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def profile_path(self, label: str) -> str | None:
        if self.profile_dir is None:
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        return str(self.profile_dir / f"{label}.txt")

    def sized(self, what: str, used: int, issue: int) -> None:
        """Say so when a size differs from the issue's."""
        if used != issue:
            self.report.note(f"{what}: {used:,} instead of the issue's {issue:,}"
                             + (" (--quick)" if self.quick else ""))
