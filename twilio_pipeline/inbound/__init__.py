"""Inbound: the suppression refresh and the channel sync (the guide's "State data synchronization").

No Dagster here: the assets in `twilio_pipeline.defs` and the CLI call these functions.
"""

from twilio_pipeline.inbound.aggregate import aggregate_results
from twilio_pipeline.inbound.eligibility import eligible_executions
from twilio_pipeline.inbound.keyword_parse import KeywordSummary, parse_keywords
from twilio_pipeline.inbound.refresh import RefreshSummary, refresh_inbound
from twilio_pipeline.inbound.state_load import LoadSummary, load_states
from twilio_pipeline.inbound.status_fetch import StatusFetchSummary, fetch_statuses
from twilio_pipeline.inbound.sync import SyncSummary, sync_channel
from twilio_pipeline.suppression import record_refusals_as_stop, suppressed_numbers

__all__ = [
    "KeywordSummary",
    "LoadSummary",
    "RefreshSummary",
    "StatusFetchSummary",
    "SyncSummary",
    "aggregate_results",
    "eligible_executions",
    "fetch_statuses",
    "load_states",
    "parse_keywords",
    "record_refusals_as_stop",
    "refresh_inbound",
    "suppressed_numbers",
    "sync_channel",
]
