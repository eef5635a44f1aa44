"""Base of the step summaries: plain values that become Dagster metadata."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class StepSummary:
    def as_metadata(self) -> dict[str, int | float | str | bool]:
        out: dict[str, int | float | str | bool] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, (dict, list, tuple)):
                continue
            out[f.name] = value
        return out
