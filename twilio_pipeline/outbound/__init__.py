"""Outbound fulfillment (the guide's steps 1-8): connectivity, plan into the send ledger, send with
reconciliation, commit of states and results. No Dagster here: the outbound assets (`defs/outbound.py`)
compose these steps, and every run of a whole send is a run of the outbound job."""

from twilio_pipeline.outbound.commit import OutboundResults, commit_execution, compute_results, record_interruption
from twilio_pipeline.outbound.connectivity import check_connectivity
from twilio_pipeline.outbound.errors import ExecutionBusy, ExecutionCancelled, LeaseLost, OutboundInputError
from twilio_pipeline.outbound.execution import (
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_READY,
    STATUS_SENDING,
    STATUS_SENT,
    ExecutionRow,
    load_execution,
    mark_failed,
    read_execution,
    send_refusal,
    set_status,
)
from twilio_pipeline.outbound.interaction_log import InteractionLog
from twilio_pipeline.outbound.lease import ExecutionLease, busy_holder, execution_lease
from twilio_pipeline.outbound.ledger import LedgerCounts, ledger_counts
from twilio_pipeline.outbound.plan import PlanSummary, plan_execution
from twilio_pipeline.outbound.send import SendSummary, drain_check, send_execution

__all__ = [
    "ExecutionBusy", "ExecutionCancelled", "ExecutionLease", "ExecutionRow", "InteractionLog", "LeaseLost", "LedgerCounts",
    "OutboundInputError", "OutboundResults", "PlanSummary", "STATUS_FAILED", "STATUS_READY",
    "STATUS_SENDING", "STATUS_SENT", "SendSummary", "busy_holder", "check_connectivity",
    "commit_execution", "compute_results", "drain_check", "execution_lease",
    "ledger_counts", "load_execution", "mark_failed", "plan_execution", "read_execution", "record_interruption",
    "send_execution", "send_refusal", "set_status", "STATUS_CANCELLED",
]
