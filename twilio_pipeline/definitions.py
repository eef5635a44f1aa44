"""The code location: one Definitions object (workspace.yaml points here)."""

import dagster as dg

from twilio_pipeline.defs.inbound import INBOUND_ASSETS
from twilio_pipeline.defs.jobs import channel_sync_job, execution_sync_job, outbound_job
from twilio_pipeline.defs.outbound import OUTBOUND_ASSETS
from twilio_pipeline.defs.resources import build_resources
from twilio_pipeline.defs.schedules import channel_sync_schedule, daily_suppression_refresh
from twilio_pipeline.defs.sensors import execution_sync_chain, queue_listener
from twilio_pipeline.worker import job_executor

defs = dg.Definitions(
    assets=[*OUTBOUND_ASSETS, *INBOUND_ASSETS],
    jobs=[outbound_job, channel_sync_job, execution_sync_job],
    sensors=[queue_listener, execution_sync_chain],
    schedules=[channel_sync_schedule, daily_suppression_refresh],
    resources=build_resources(),
    executor=job_executor(),  # TWILIO_PIPELINE_EXECUTOR: multiprocess, in_process or celery
)
