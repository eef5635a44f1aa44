"""Jobs: the outbound send of one execution, the channel-level sync, the execution-level sync."""

import dagster as dg

from twilio_pipeline.defs.inbound import (
    aggregate_results,
    keyword_parse,
    state_bulk_load,
    status_fetch,
)
from twilio_pipeline.defs.outbound import OUTBOUND_ASSETS

outbound_job = dg.define_asset_job(
    "outbound_job",
    selection=dg.AssetSelection.assets(*OUTBOUND_ASSETS),
    description="Send one channel execution (partition = ChannelExecutionID): connectivity test, suppression "
                "refresh, dedupe and validation, send, message-ID staging and results.",
    # A send is never retried as a whole by Dagster: the ledger makes a manual re-run safe instead.
    tags={"dagster/max_retries": "0"},
)

channel_sync_job = dg.define_asset_job(
    "channel_sync_job",
    selection=dg.AssetSelection.assets(keyword_parse),
    description="Channel level of the sync: inbound replies, keywords, suppression, follow-ups.",
)

execution_sync_job = dg.define_asset_job(
    "execution_sync_job",
    selection=dg.AssetSelection.assets(status_fetch, state_bulk_load, aggregate_results),
    description="Execution level of the sync: status fetch, state bulk-load, aggregate results.",
)
