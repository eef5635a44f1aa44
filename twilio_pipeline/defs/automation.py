"""Default status of the sensors and schedules (TWILIO_PIPELINE_AUTOMATION, docs/reference.md): nothing sends or
syncs on its own in a fresh production deployment until an operator turns it on; the stored state wins."""

from __future__ import annotations

import dagster as dg

from twilio_pipeline.settings import automation_on


def default_sensor_status() -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if automation_on() else dg.DefaultSensorStatus.STOPPED


def default_schedule_status() -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if automation_on() else dg.DefaultScheduleStatus.STOPPED
