"""Outbound errors the CLI maps to exit codes: bad input (2), a busy execution (3)."""

from __future__ import annotations

from twilio_pipeline.db.database import LeaseHolder


class OutboundInputError(ValueError):
    """The execution cannot be sent as given (unknown, no channel, no recipients, bad sender).

    Raised before any Twilio request; str() is the one line the CLI prints (exit code 2).
    """


class ExecutionBusy(RuntimeError):
    """Another live run holds the execution's lease (exit code 3); `.holder` says who."""

    def __init__(self, execution_id: int, holder: LeaseHolder):
        self.execution_id = execution_id
        self.holder = holder
        super().__init__(
            f"execution {execution_id} is being sent by run {holder.owner} "
            f"(host {holder.host}, pid {holder.pid}, lease until {holder.expires_at:%Y-%m-%d %H:%M:%S} UTC)"
        )


class LeaseLost(RuntimeError):
    """The run's lease on the execution was taken over (heartbeat missed past its TTL): stop sending."""


class ExecutionCancelled(RuntimeError):
    """The upstream set the execution's Status to `cancelled` while it was sending: stop, send nothing more."""
