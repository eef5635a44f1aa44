"""The base of every step summary (plan, send, refresh, keyword parse, status fetch, state load, sync).

A step returns a dataclass of its figures; `as_metadata()` turns them into plain values the Dagster
assets put on their materializations (and the CLI prints), so a step needs no Dagster to be tested.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any


@dataclass
class Summary:
    """Base of the step summaries: `as_metadata()` gives Dagster-friendly plain values."""

    def as_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, (set, frozenset, tuple)):
                value = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
            elif isinstance(value, dict):
                value = {str(k): v for k, v in value.items()}
            out[f.name] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
