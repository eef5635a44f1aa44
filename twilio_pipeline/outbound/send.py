"""Step 4: send the planned recipients of an execution (and reconcile what is in doubt first).

Order matters for "never twice": rows a dead run left in flight and ambiguous rows of earlier runs
are reconciled before anything else is claimed; then the planned rows are claimed in batches and
sent through the worker pool; then this run's ambiguous outcomes are reconciled (adopt or resend).
Refusals that blame the sender or the account (21606 ...) leave their recipients unsent (see dispatch.py);
`sender_error_limit` of them in a row stop the send: results are written (they count as Pending), Status
`failed` with the code, and SenderRejected is raised so the run fails with that one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from twilio_pipeline.channels import Channel
from twilio_pipeline.db import Database
from twilio_pipeline.outbound.dispatch import Dispatcher, Progress
from twilio_pipeline.outbound.errors import ExecutionCancelled, OutboundInputError
from twilio_pipeline.outbound.execution import mark_failed, read_execution
from twilio_pipeline.outbound.interaction_log import InteractionLog
from twilio_pipeline.outbound.lease import execution_lease
from twilio_pipeline.outbound.ledger import (
    AMBIGUOUS,
    INFLIGHT,
    PLANNED,
    Claims,
    ledger_counts,
)
from twilio_pipeline.outbound.outcomes import OutcomeWriter
from twilio_pipeline.outbound.reconcile import DEFAULT_ROUNDS, Reconciler
from twilio_pipeline.rules.phones import SEGMENTS_PER_SECOND, TWILIO_QUEUE_HOURS, drain_capacity, sender_kind
from twilio_pipeline.summary import Summary
from twilio_pipeline.twilio import CredentialsRejected, SenderRejected, TwilioApiError

CLAIM_BATCH = 500


@dataclass
class SendSummary(Summary):
    execution_id: int
    channel: str
    to_send: int = 0
    requests_this_run: int = 0
    sent: int = 0
    refused: int = 0
    ambiguous: int = 0
    adopted: int = 0
    resent: int = 0
    orphans: int = 0
    unresolved: int = 0
    opted_out_on_send: int = 0
    held_back: int = 0  # refused for the sender's or the account's fault: left unsent (Pending)
    segments: int = 0
    http_requests: int = 0
    throttled: int = 0
    duration_s: float = 0.0
    rate_per_s: float = 0.0
    drain_capacity_segments: float = 0.0
    drain_warning: str = ""
    nothing_to_send: bool = False
    error_codes: str = ""
    interaction_log: str = ""
    cancelled: bool = False


def drain_check(client, channel: Channel, segments: int, log) -> tuple[float, str]:
    """Segments the sender can hand to carriers before Twilio's queue (10 h, or the validity period)
    gives up, and a warning when the send exceeds it (messages beyond fail with 21611/30001 or expire)."""
    if channel.uses_service:
        try:
            numbers = client.list_service_phone_numbers(channel.messaging_service_sid)
        except CredentialsRejected:
            raise
        except TwilioApiError as exc:
            log.warning(f"could not list the Messaging Service pool to estimate its throughput: {exc}")
            return 0.0, ""
        kinds = [sender_kind(n) for n in numbers]
        who = f"Messaging Service {channel.messaging_service_sid} ({len(numbers)} number(s) in its pool)"
    else:
        kinds = [sender_kind(str(channel.from_number))]
        who = f"{channel.from_number} ({kinds[0].replace('_', ' ')})"
    window = min(channel.validity_period_s, TWILIO_QUEUE_HOURS * 3600)
    capacity = drain_capacity(kinds) * window / (TWILIO_QUEUE_HOURS * 3600) if kinds else 0.0
    if segments <= capacity or segments == 0:
        return capacity, ""
    per_long_code = SEGMENTS_PER_SECOND["long_code"] * window
    pool = math.ceil(segments / per_long_code)
    warning = (
        f"{segments:,} segments exceed what {who} can hand to carriers within {window / 3600:.1f} h "
        f"({capacity:,.0f} segments): the rest would fail with 21611/30001 or expire. Send through a "
        f"Messaging Service pool of at least {pool:,} long codes (or a toll-free number / short code)"
    )
    return capacity, warning


def send_execution(db: Database, client, channel: Channel, execution_id: int, *, run_id: str, log,
                   progress: Progress | None = None, claim_batch: int = CLAIM_BATCH,
                   settle_s: float | None = None, reconcile_rounds: int = DEFAULT_ROUNDS,
                   lease_ttl_s: float = 60.0) -> SendSummary:
    """Send what was never sent; reconcile what is in doubt. Holds the execution's lease throughout.

    `settle_s` overrides the channel's `reconcile.settle_s` (tests)."""
    execution_id = int(execution_id)
    row = read_execution(db, execution_id)
    if row is None:
        raise OutboundInputError(f"execution {execution_id} does not exist in SMS_ChannelExecutions")
    with execution_lease(db, execution_id, run_id, ttl_s=lease_ttl_s, log=log) as lease:
        db.drop_orphan_staging()
        with db.staging_table("send", OutcomeWriter.staging_columns()) as stg:
            writer = OutcomeWriter(db, channel, execution_id, run_id, stg)
            claims = Claims(db, execution_id, run_id, lease=lease)
            dispatcher = Dispatcher(client, channel, writer, claims, media_url=row.media_url, log=log,
                                    progress=progress, lease=lease)
            reconciler = Reconciler(
                db, client, channel, execution_id, writer=writer, claims=claims, dispatcher=dispatcher, log=log,
                settle_s=channel.reconcile.settle_s if settle_s is None else settle_s, rounds=reconcile_rounds,
                resend_unconfirmed=channel.reconcile.resend_unconfirmed)
            ilog = InteractionLog(log, channel.name)
            summary = SendSummary(execution_id=execution_id, channel=channel.name)
            requests_before, throttled_before = client.request_count, getattr(client, "throttled_count", 0)
            stopped: SenderRejected | None = None
            try:
                _send(db, client, channel, execution_id, claims, dispatcher, reconciler, writer, ilog, summary,
                      log, claim_batch)
            except ExecutionCancelled as exc:  # not a failure: the upstream asked; the rest stays planned
                summary.cancelled = True
                ilog.warning(str(exc))
            except SenderRejected as exc:  # the channel is at fault: stop, keep the recipients unsent
                stopped = exc
            finally:
                writer.close()
        if stopped is not None:
            _record_sender_stop(db, channel, execution_id, stopped, ilog)
    summary.held_back = sum(dispatcher.sender_errors.values())
    _summarise(db, client, execution_id, writer, reconciler, ilog, summary, requests_before, throttled_before)
    if stopped is not None:
        raise stopped
    return summary


def _record_sender_stop(db: Database, channel: Channel, execution_id: int, exc: SenderRejected,
                        ilog: InteractionLog) -> None:
    """Results as the ledger stands (the held-back recipients count as Pending) and Status `failed`
    naming the code (unless the upstream set a status of its own), before the run fails."""
    from twilio_pipeline.outbound.commit import compute_results

    results = compute_results(db, channel, execution_id)
    with db.begin() as conn:
        db.write_results(conn, execution_id, results)
    mark_failed(db, execution_id, str(exc))
    ilog.warning(str(exc))


def _send(db: Database, client, channel: Channel, execution_id: int, claims: Claims, dispatcher: Dispatcher,
          reconciler: Reconciler, writer: OutcomeWriter, ilog: InteractionLog, summary: SendSummary, log,
          claim_batch: int) -> None:
    summary.orphans = claims.orphans_to_ambiguous()
    if summary.orphans:
        ilog.warning(f"{summary.orphans} message(s) were left in flight by an interrupted run: "
                     "checking Twilio for them before sending anything else")
    counts = ledger_counts(db, execution_id)
    if counts.people.get(AMBIGUOUS) + counts.seeds.get(AMBIGUOUS):
        reconciler.run()
        counts = ledger_counts(db, execution_id)

    ilog.about_to_send()
    ilog.count_before_dedup(counts.people.total)
    ilog.preparing_to_send()
    summary.to_send = counts.people.get(PLANNED) + counts.seeds.get(PLANNED)
    capacity, warning = drain_check(client, channel, counts.planned_segments, log)
    summary.drain_capacity_segments = round(capacity, 1)
    if warning:
        summary.drain_warning = warning
        ilog.warning(warning)
    ilog.first_batch(summary.to_send)
    if summary.to_send:
        # Claims run just ahead of the pool: after a crash, at most about one batch is in doubt.
        size = max(1, min(claim_batch, max(100, dispatcher.workers * 5)))
        batches = iter(lambda: claims.next_planned(size), [])
        stats = dispatcher.run(batches, summary.to_send)
        summary.duration_s = round(stats.elapsed_s, 3)
        summary.rate_per_s = round(stats.requested / stats.elapsed_s, 1) if stats.elapsed_s else 0.0
    writer.sync()
    if writer.stats.ambiguous:
        reconciler.run()


def _summarise(db: Database, client, execution_id: int, writer: OutcomeWriter, reconciler: Reconciler,
               ilog: InteractionLog, summary: SendSummary, requests_before: int, throttled_before: int) -> None:
    rec, w = reconciler.stats, writer.stats
    summary.requests_this_run = w.sent + w.refused + w.ambiguous + summary.held_back
    summary.sent, summary.refused, summary.ambiguous = w.sent, w.refused, w.ambiguous
    summary.adopted, summary.resent = rec.adopted, rec.resent
    summary.opted_out_on_send = w.opted_out
    summary.segments = w.segments
    summary.error_codes = ", ".join(f"{code}: {n}" for code, n in sorted(w.error_codes.items(), key=str))
    after = ledger_counts(db, execution_id)
    summary.unresolved = (after.people.get(AMBIGUOUS) + after.people.get(INFLIGHT)
                          + after.seeds.get(AMBIGUOUS) + after.seeds.get(INFLIGHT))
    summary.nothing_to_send = summary.requests_this_run == 0 and rec.adopted == 0
    summary.http_requests = client.request_count - requests_before
    summary.throttled = getattr(client, "throttled_count", 0) - throttled_before
    if summary.nothing_to_send:
        ilog.info("nothing new to send: every recipient already has its outcome")
    else:
        ilog.info(
            f"this run: {w.sent} accepted, {w.refused} refused by Twilio"
            + (f" ({summary.error_codes})" if summary.error_codes else "")
            + (f", {summary.held_back} refused for the sender's or the account's fault (left unsent)"
               if summary.held_back else "")
            + f", {rec.adopted} found at Twilio after an ambiguous answer, {rec.resent} re-sent, "
            f"{summary.unresolved} unresolved; {summary.http_requests} HTTP request(s), "
            f"{summary.throttled} throttled"
        )
    if summary.unresolved:
        ilog.warning(f"{summary.unresolved} message(s) remain unresolved (Twilio's answer was ambiguous and "
                     "the message could not be found or re-sent); a re-run checks them again")
    summary.interaction_log = ilog.text()
