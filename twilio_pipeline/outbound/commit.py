"""Step 5: offer-history commit - first states, the outbound results, the execution's Status.

Everything is derived from the ledger (one GROUP BY for the counts, INSERT ... WHERE NOT EXISTS
for the states), so committing twice, or after a re-run, gives the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from twilio_pipeline.channels import Channel
from twilio_pipeline.db import Database, utcnow
from twilio_pipeline.outbound.execution import (
    STATUS_FAILED,
    STATUS_SENT,
    mark_failed,
    set_status,
)
from twilio_pipeline.outbound.interaction_log import InteractionLog
from twilio_pipeline.outbound.lease import execution_lease
from twilio_pipeline.outbound.ledger import (
    AMBIGUOUS,
    DUPLICATE,
    INFLIGHT,
    INVALID,
    NOT_RENDERED,
    PLANNED,
    REFUSED,
    SENT,
    SUPPRESSED,
    held_back_codes,
    ledger_counts,
)
from twilio_pipeline.outbound.plan import repeated_rows
from twilio_pipeline.rules.states import STATUS_RANK, state_name

STATE_MATCH = ["ChannelExecutionID", "RPContactID", "FulfillmentState"]


@dataclass
class OutboundResults:
    execution_id: int
    channel: str
    status: str
    status_reason: str | None
    results: dict[str, int | float] = field(default_factory=dict)
    first_states: int = 0
    failed_states: int = 0
    interaction_log: str = ""

    def as_metadata(self) -> dict[str, int | float | str]:
        meta: dict[str, int | float | str] = {"execution_id": self.execution_id, "channel": self.channel,
                                              "status": self.status, "first_states": self.first_states,
                                              "failed_states": self.failed_states}
        if self.status_reason:
            meta["status_reason"] = self.status_reason
        meta.update(self.results)
        meta["interaction_log"] = self.interaction_log
        return meta


def compute_results(db: Database, channel: Channel, execution_id: int) -> dict[str, int | float]:
    """Outbound results (docs/reference.md "Results") from the ledger. `Pending` counts planned rows no run requested
    yet (an interrupted or cancelled send): CountBeforeDedup = InvalidNumbers + Duplicates + Unsubscribed +
    NotRendered + Targeted + Pending."""
    c = ledger_counts(db, execution_id)
    p, s = c.people, c.seeds
    repeated = repeated_rows(db, execution_id, p.total)  # rows repeating a contact: Duplicates, no ledger row
    unresolved = p.get(AMBIGUOUS) + p.get(INFLIGHT)
    targeted = p.get(SENT) + p.get(REFUSED) + unresolved
    segments = p.segments.get(SENT, 0)
    results: dict[str, int | float] = {
        "CountBeforeDedup": p.total + repeated,
        "InvalidNumbers": p.get(INVALID),
        "Duplicates": p.get(DUPLICATE) + repeated,
        "Unsubscribed": p.get(SUPPRESSED),
        "NotRendered": p.get(NOT_RENDERED),
        "Targeted": targeted,
        "Sent": p.get(SENT),
        "SendFailed": p.get(REFUSED),
        "Unresolved": unresolved,
        "Pending": p.get(PLANNED),
        "Segments": segments,
        "SeedsSent": s.get(SENT),
        "InvalidSeeds": s.get(INVALID),
        "UnsubscribedSeeds": s.get(SUPPRESSED),
    }
    if channel.price_per_segment is not None:
        results["EstimatedCost"] = round(segments * channel.price_per_segment, 6)
    return results


def _first_states(db: Database, conn, execution_id: int) -> tuple[int, int]:
    """Queued / Accepted / Scheduled as Twilio answered each create (or the status an adopted message
    already had), and Failed (EventName = error code) for the recipients Twilio refused; at most one row
    per (execution, contact, state)."""
    led = db.tables.ledger
    state = sa.case({k: state_name(k) for k in STATUS_RANK}, value=led.c.MessageStatus, else_="Queued")
    # A message adopted after an ambiguous answer may already be failed/undelivered: its code goes with it.
    failure = sa.case(
        (led.c.MessageStatus.in_(["failed", "undelivered"]), sa.cast(led.c.ErrorCode, sa.Unicode(255))),
        else_=sa.null())
    accepted = sa.select(
        led.c.RPContactID, led.c.ChannelExecutionID, state.label("FulfillmentState"),
        failure.label("EventName"), led.c.StatusAt.label("Timestamp"),
    ).where(led.c.ChannelExecutionID == execution_id, led.c.Outcome == SENT, led.c.IsSeed == sa.false())
    refused = sa.select(
        led.c.RPContactID, led.c.ChannelExecutionID, sa.literal("Failed", sa.Unicode(40)).label("FulfillmentState"),
        sa.cast(led.c.ErrorCode, sa.Unicode(255)).label("EventName"),
        sa.func.coalesce(led.c.UpdatedAt, led.c.AttemptedAt).label("Timestamp"),
    ).where(led.c.ChannelExecutionID == execution_id, led.c.Outcome == REFUSED, led.c.IsSeed == sa.false())
    states = db.tables.states
    first = db.insert_missing(conn, states, accepted, match=STATE_MATCH)
    failed = db.insert_missing(conn, states, refused, match=STATE_MATCH)
    return first, failed


def commit_execution(db: Database, channel: Channel, execution_id: int, *, run_id: str, log) -> OutboundResults:
    """Write first states and results, and move the execution to `sent` (or `failed`, with the reason)."""
    execution_id = int(execution_id)
    with execution_lease(db, execution_id, run_id, log=log):
        ilog = InteractionLog(log, channel.name)
        results = compute_results(db, channel, execution_id)
        with db.begin() as conn:
            first, failed = _first_states(db, conn, execution_id)
            db.write_results(conn, execution_id, results)
        problems = []
        if results["Unresolved"]:
            problems.append(f"{results['Unresolved']} message(s) unresolved after reconciliation "
                            "(Twilio's answer was ambiguous; re-run to check them again)")
        held = held_back_codes(db, execution_id)  # refused for the sender's/account's fault: unsent
        if results["Pending"] or held:  # (held seeds too: a `sent` execution would never send them)
            why = (f"{sum(held.values())} refused for the sender's or the account's fault with "
                   f"{', '.join(str(c) for c in sorted(held))}; a later send sends them" if held
                   else "the send did not finish")
            problems.append(f"{results['Pending'] or sum(held.values())} recipient(s) not sent yet ({why})")
        status = STATUS_FAILED if problems else STATUS_SENT
        reason = "; ".join(problems) or None
        # Conditional: an upstream's `cancelled` (or any status of its own) written during the send stays.
        stored = set_status(db, execution_id, status, reason)
        if stored != status:
            log.info(f"execution {execution_id}: Status {stored!r} set by the upstream is kept")
            status = stored or status
        db.drop_orphan_staging()
        ilog.final_counts(int(results["Sent"]), int(results["InvalidNumbers"]), int(results["Unsubscribed"]),
                          int(results["SeedsSent"]), int(results["InvalidSeeds"]), int(results["UnsubscribedSeeds"]))
        if reason:
            ilog.warning(f"execution {execution_id} {'marked failed' if status == STATUS_FAILED else 'stays ' + status}: "
                         f"{reason}")
        out = OutboundResults(execution_id, channel.name, status, reason, results, first, failed)
        out.interaction_log = ilog.text()
        log.info(f"execution {execution_id}: results written at {utcnow():%Y-%m-%d %H:%M:%S} UTC, status {status}")
        return out


def record_interruption(db: Database, channel: Channel, execution_id: int, *, cause: str, phase: str) -> str:
    """After SIGTERM, SIGINT or a Dagster run termination: the results as the ledger stands (what was never
    requested counts as `Pending`) and Status `failed` with a reason starting `interrupted` (unless the
    upstream set a status of its own). Returns the reason. A later send resumes from the ledger."""
    execution_id = int(execution_id)
    results = compute_results(db, channel, execution_id)
    requested, pending = int(results["Targeted"]), int(results["Pending"])
    if results["CountBeforeDedup"]:
        with db.begin() as conn:
            db.write_results(conn, execution_id, results)
    if requested or pending:
        progress = f"{requested} of {requested + pending} recipients requested"
    else:
        progress = "no recipient requested yet"
    reason = f"interrupted by {cause} during {phase}; {progress}; a later send resumes"
    mark_failed(db, execution_id, reason)
    return reason
