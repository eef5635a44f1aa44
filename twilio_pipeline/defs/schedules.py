"""Schedules: the channel sync every `sync_interval_minutes` (the smallest of the channels) and a daily
suppression refresh, both visible and switchable in the UI."""

from __future__ import annotations

import dagster as dg

from twilio_pipeline.channels import ChannelConfigError, load_channels
from twilio_pipeline.defs.automation import default_schedule_status
from twilio_pipeline.defs.jobs import channel_sync_job
from twilio_pipeline.settings import load_settings


def sync_interval_minutes() -> int:
    try:
        channels = load_channels(load_settings().channels_path)
    except (ChannelConfigError, ValueError):
        return 15
    return min(c.sync_interval_minutes for c in channels.channels)


def _cron(minutes: int) -> str:
    if minutes < 60:
        return f"*/{minutes} * * * *"
    hours = max(1, minutes // 60)
    return f"0 */{hours} * * *" if hours < 24 else "0 0 * * *"


channel_sync_schedule = dg.ScheduleDefinition(
    name="channel_sync_schedule",
    job=channel_sync_job,
    cron_schedule=_cron(sync_interval_minutes()),
    execution_timezone="UTC",
    default_status=default_schedule_status(),
    description="The channel sync; on success the execution_sync_chain sensor syncs each eligible execution.",
)

daily_suppression_refresh = dg.ScheduleDefinition(
    name="daily_suppression_refresh",
    job=channel_sync_job,
    cron_schedule="30 5 * * *",
    execution_timezone="UTC",
    default_status=default_schedule_status(),
    description="Daily refresh of every channel's opt-outs and opt-ins, even when no sync ran that day.",
)
