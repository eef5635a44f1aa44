"""The channel sync, composed: the channel level once, then the execution level.

Channel level: the suppression refresh's listing (same watermark) keeps the new inbound replies, then
the keyword parse attributes them. Execution level, for every eligible execution (or the ones given,
e.g. a backfill): status fetch, state bulk-load, aggregate results. Each step commits on its own and
is safe to repeat, so a sync killed anywhere is finished by the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from twilio_pipeline.channels import Channel
from twilio_pipeline.db import Database
from twilio_pipeline.inbound.aggregate import aggregate_results
from twilio_pipeline.inbound.common import Summary
from twilio_pipeline.inbound.eligibility import eligible_executions
from twilio_pipeline.inbound.keyword_parse import KeywordSummary, parse_keywords
from twilio_pipeline.inbound.refresh import RefreshSummary, refresh_inbound
from twilio_pipeline.inbound.state_load import LoadSummary, load_states
from twilio_pipeline.inbound.status_fetch import StatusFetchSummary, fetch_statuses
from twilio_pipeline.logs import Log
from twilio_pipeline.twilio import TwilioClient


@dataclass
class SyncSummary(Summary):
    channel: str = ""
    execution_ids: list[int] = field(default_factory=list)
    refresh: RefreshSummary | None = None
    keywords: KeywordSummary | None = None
    fetch: StatusFetchSummary | None = None
    load: LoadSummary | None = None
    results: dict[int, dict[str, float]] = field(default_factory=dict)
    api_calls: int = 0

    def as_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"channel": self.channel, "executions": len(self.execution_ids),
                               "api_calls": self.api_calls}
        for name in ("refresh", "keywords", "fetch", "load"):
            part = getattr(self, name)
            if part is None:
                continue
            for k, v in part.as_metadata().items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{name}_{k}"] = v
        return out

    def lines(self) -> list[str]:
        """What the CLI prints: one line per execution with its statuses, expiries and replies."""
        out = []
        for eid in self.execution_ids:
            r = self.results.get(eid, {})
            statuses = ", ".join(f"{k[7:]}={_num(v)}" for k, v in r.items() if k.startswith("Status:"))
            replies = ", ".join(f"{k[6:]}={_num(v)}" for k, v in r.items() if k.startswith("Reply:"))
            out.append(f"Execution {eid} ({self.channel}): statuses: {statuses or 'none yet'}; "
                       f"expired={_num(r.get('Expired', 0))}; replies: {replies or 'none'}")
        return out


def _num(v) -> str:
    return str(int(v)) if isinstance(v, (int, float)) and float(v).is_integer() else str(v)


def sync_channel(db: Database, client: TwilioClient, channel: Channel, *, log: Log,
                 execution_ids: list[int] | None = None, full_window: bool = False,
                 now: datetime | None = None, peers: Sequence[Channel] = ()) -> SyncSummary:
    """Run the whole sync for one channel. `execution_ids` restricts the execution level (a backfill),
    `full_window` re-reads each execution's whole DateSent window (also SIDs already retired), `peers`
    are the channels sharing its sender (see parse_keywords)."""
    calls_before = client.request_count
    summary = SyncSummary(channel=channel.name)
    backfill = execution_ids is not None
    limit = None if backfill else channel.records_per_sync
    summary.refresh = refresh_inbound(db, client, channel, log=log, now=now)
    summary.keywords = parse_keywords(db, channel, log=log, limit_records=limit, now=now, peers=peers)
    ids = list(execution_ids) if backfill else eligible_executions(db, channel, limit_records=limit)
    summary.execution_ids = ids
    if ids:
        summary.fetch = fetch_statuses(db, client, channel, ids, log=log, full_window=full_window, now=now,
                                       limit_records=None if (backfill or full_window) else limit)
        summary.load = load_states(db, log=log, execution_ids=ids)
        touched = sorted(set(ids) | set(summary.load.executions))
        summary.results = aggregate_results(db, touched, log=log)
    else:
        log.info(f"channel {channel.name}: no execution has anything to sync")
    summary.api_calls = client.request_count - calls_before
    return summary
