"""One dynamic partition per channel execution (key = ChannelExecutionID), so any past execution can be
re-run or backfilled. Keys are added by the queue listener, the CLI and follow-ups."""

import dagster as dg

execution_partitions = dg.DynamicPartitionsDefinition(name="channel_executions")

TWILIO_POOL = "twilio_api"
EXECUTION_TAG = "twilio_pipeline/execution"
CHANNEL_TAG = "twilio_pipeline/channel"
MODE_TAG = "twilio_pipeline/mode"
HOST_TAG = "twilio_pipeline/host"
PID_TAG = "twilio_pipeline/pid"
# A run of the execution-level sync that re-reads each execution's whole DateSent window (as a backfill does).
FULL_WINDOW_TAG = "twilio_pipeline/full_window"
