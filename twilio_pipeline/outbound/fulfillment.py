"""The whole outbound fulfillment of one execution, composed (what a script or test calls at once;
the Dagster assets call the steps one by one)."""

from __future__ import annotations

from dataclasses import dataclass

from twilio_pipeline.channels import Channel, ChannelFile
from twilio_pipeline.db import Database
from twilio_pipeline.db.database import LeaseHolder
from twilio_pipeline.outbound.commit import OutboundResults, commit_execution
from twilio_pipeline.outbound.connectivity import check_connectivity
from twilio_pipeline.outbound.dispatch import Progress
from twilio_pipeline.outbound.errors import ExecutionBusy, OutboundInputError
from twilio_pipeline.outbound.execution import ExecutionRow, load_execution, mark_failed, record_unsendable
from twilio_pipeline.outbound.interaction_log import InteractionLog
from twilio_pipeline.outbound.lease import execution_lease, lease_key
from twilio_pipeline.outbound.plan import PlanSummary, plan_execution
from twilio_pipeline.outbound.send import SendSummary, send_execution
from twilio_pipeline.twilio import CredentialsRejected, Endpoints, RetrySettings, TwilioClient, TwilioCredentials


@dataclass
class OutboundRun:
    execution: ExecutionRow
    channel: Channel
    connectivity: dict | None
    refresh: object | None
    plan: PlanSummary
    send: SendSummary
    results: OutboundResults


def client_for_channel(credentials: TwilioCredentials, channel: Channel, endpoints: Endpoints = Endpoints(),
                       **options) -> TwilioClient:
    """A TwilioClient with the channel's concurrency, rate and retry settings."""
    r = channel.retry
    return TwilioClient(
        credentials, endpoints=endpoints,
        retry=RetrySettings(r.max_attempts, r.min_delay_s, r.max_delay_s, r.throttle_budget_s),
        max_concurrency=channel.max_concurrency, requests_per_second=channel.requests_per_second, **options,
    )


def busy_holder(db: Database, execution_id: int) -> LeaseHolder | None:
    """The live run holding the execution's lease, or None (dead local pids and expired remote leases are free)."""
    return db.live_lease_holder(lease_key(execution_id))


def run_outbound(db: Database, client, channels: ChannelFile, execution_id: int, *, run_id: str, log,
                 progress: Progress | None = None, **send_options) -> OutboundRun:
    """Steps 1-8 for one execution under one lease: connectivity, suppression refresh, plan, send, commit.

    A failure marks the execution `failed` with the reason and re-raises, bad input (OutboundInputError)
    included (CONTRACT "Execution status, whoever starts the run"); a busy execution (ExecutionBusy) is left
    to the run that holds it.
    """
    from twilio_pipeline.inbound.refresh import refresh_inbound

    try:
        row, channel = load_execution(db, channels, execution_id)
    except OutboundInputError as exc:
        if str(execution_id).lstrip("-").isdigit():
            record_unsendable(db, int(execution_id), str(exc))
        raise
    ilog = InteractionLog(log, channel.name)
    with execution_lease(db, row.execution_id, run_id, log=log):
        ilog.starting()
        try:
            connectivity = None
            if channel.connectivity_test:
                connectivity = check_connectivity(client, channel, log)
            else:
                log.info(f"Action: {channel.name} Activity: connectivity test skipped (connectivity_test: false)")
            ilog.retrieving_subscription_data()
            refresh = refresh_inbound(db, client, channel, log=log)
            plan = plan_execution(db, channel, row.execution_id, run_id=run_id, log=log)
            sent = send_execution(db, client, channel, row.execution_id, run_id=run_id, log=log,
                                  progress=progress, **send_options)
            results = commit_execution(db, channel, row.execution_id, run_id=run_id, log=log)
            ilog.finishing()
        except (ExecutionBusy, OutboundInputError):
            raise
        except CredentialsRejected as exc:
            mark_failed(db, row.execution_id, f"credentials rejected: {exc}")
            raise
        except Exception as exc:
            mark_failed(db, row.execution_id, f"{type(exc).__name__}: {exc}")
            raise
    return OutboundRun(row, channel, connectivity, refresh, plan, sent, results)
