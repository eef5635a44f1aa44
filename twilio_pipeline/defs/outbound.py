"""Outbound assets (group `outbound`), one partition per channel execution:
suppression refresh -> dedupe -> send -> message-ID staging (the guide's outbound steps 1-8)."""


import sys
from contextlib import contextmanager

import dagster as dg
from pydantic import Field

from twilio_pipeline import quality
from twilio_pipeline.defs.partitions import TWILIO_POOL, execution_partitions
from twilio_pipeline.defs.progress import progress_reporter
from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
from twilio_pipeline.defs.steps import counts_table, metadata, setup, twilio_failure
from twilio_pipeline.twilio import CredentialsRejected, SenderRejected, TwilioUnavailable

OWNERS = ["team:messaging"]
INVALID_RATE_THRESHOLD = 0.2
# What each step is doing, for "interrupted by SIGTERM during sending; ..." (also the CLI's fallback).
PHASES = {"suppression_refresh": "the suppression refresh", "dedupe": "planning", "send": "sending",
          "message_id_staging": "the commit"}
INTERRUPTS = (KeyboardInterrupt, dg.DagsterExecutionInterruptedError)
GATED_STEPS = ("suppression_refresh", "dedupe", "send")  # the steps that refuse an execution not to be sent


class OutboundConfig(dg.Config):
    force: bool = Field(
        default=False,
        description="Send even if the execution's Status is not ready/sending/failed/sent (e.g. cancelled, "
                    "draft) or its SendAfter is still ahead. Set on any outbound step, it applies to the run "
                    "(what `twilio-pipeline send --force` sets).")


def forced(context, config: OutboundConfig) -> bool:
    """`force: true` in this step's config or in any other step's config of the run: one switch per run."""
    if config.force:
        return True
    ops = (context.run.run_config or {}).get("ops") or {}
    return any(isinstance(op, dict) and isinstance(op.get("config"), dict) and op["config"].get("force") is True
               for op in ops.values())


def refuse_unless_sendable(context, db, execution_id: int, config: OutboundConfig) -> None:
    """A `cancelled`/`draft` execution or a SendAfter still ahead fails the step in one line, before anything
    is requested or any Status is written (the upstream's Status stays as it is)."""
    from twilio_pipeline.outbound import read_execution, send_refusal

    row = read_execution(db, execution_id)
    refusal = send_refusal(row, force=forced(context, config)) if row is not None else None
    if refusal:
        raise dg.Failure(description=refusal, allow_retries=False)


def interrupt_cause(context) -> str:
    """A run termination when the run is being cancelled (the UI's Terminate, which reaches a step process
    as a SIGINT), else the signal this process received, else a generic interrupt."""
    from twilio_pipeline.signals import stop_signal

    try:
        run = context.instance.get_run_by_id(context.run.run_id)
    except Exception:  # noqa: BLE001 - the reason must still be written
        run = None
    if run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
        return "a Dagster run termination"
    return stop_signal() or "an interrupt (SIGINT or SIGTERM)"


def stops_on_signal(progress):
    """The send's progress callback (the dispatcher calls it every 0.5 s from its main loop), also the
    point where a signal whose interrupt was lost stops the send: the dispatcher then stops as for any
    error - requests under way finish and are recorded, the rest go back to planned."""
    from twilio_pipeline.signals import pending_stop

    def report(done: int, total: int, rate_per_s: float) -> None:
        if pending_stop():
            raise dg.DagsterExecutionInterruptedError()
        progress(done, total, rate_per_s)
    return report


@contextmanager
def _marks_failure(context, db, channel, execution_id: int, step: str):
    """A step that fails leaves the execution `failed` with the reason, so the upstream sees it; one that is
    interrupted (SIGTERM, Ctrl-C, run termination) leaves it `failed` with a reason starting `interrupted` and
    the results as they stand; a run that found the execution busy leaves it alone (the other run owns it)."""
    from twilio_pipeline.outbound import ExecutionBusy, LeaseLost, OutboundInputError, mark_failed, record_interruption
    from twilio_pipeline.signals import mark_stop_handled, pending_stop, record_signals, signals_deferred

    record_signals()
    try:
        yield
        if pending_stop():  # its interrupt was lost in a GC callback: stop now, before the next step
            raise dg.DagsterExecutionInterruptedError()
    except (ExecutionBusy, LeaseLost):
        raise
    except dg.Failure as exc:
        mark_failed(db, execution_id, exc.description or "the run failed")
        raise
    except OutboundInputError as exc:  # its message is the reason, as the CLI says it
        mark_failed(db, execution_id, str(exc))
        raise
    except Exception as exc:
        mark_failed(db, execution_id, f"{type(exc).__name__}: {exc}")
        raise
    except INTERRUPTS:
        mark_stop_handled()
        with signals_deferred():
            reason = record_interruption(db, channel, execution_id, cause=interrupt_cause(context),
                                         phase=PHASES[step])
            context.log.warning(f"execution {execution_id}: {reason}")
        raise


@dg.asset(
    group_name="outbound",
    partitions_def=execution_partitions,
    pool=TWILIO_POOL,
    kinds={"twilio", "sql"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("twilio_connectivity", asset="suppression_refresh",
                                   description="IncomingPhoneNumbers answered 200 with the channel's credentials")],
    description="Connectivity test, then the inbound replies to the channel's sender are listed since its "
                "watermark into TwilioSMS_Inbound and their opt-outs/opt-ins merged into TwilioSMS_Suppression.",
)
def suppression_refresh(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource,
                        config: OutboundConfig):
    from twilio_pipeline.inbound import refresh_inbound
    from twilio_pipeline.outbound import InteractionLog, check_connectivity

    db, channel, eid = setup(context, database, twilio)
    refuse_unless_sendable(context, db, eid, config)
    ilog = InteractionLog(context.log, channel.name)
    ilog.starting()
    with _marks_failure(context, db, channel, eid, "suppression_refresh"), \
            twilio.get_client(channel, trace=context.log.info) as client:
        try:
            if channel.connectivity_test:
                conn_meta = check_connectivity(client, channel, context.log)
                check = dg.AssetCheckResult(check_name="twilio_connectivity", passed=True, metadata=metadata(conn_meta))
            else:
                context.log.info(f"Action: {channel.name} Activity: connectivity test skipped (connectivity_test: false)")
                check = dg.AssetCheckResult(check_name="twilio_connectivity", passed=True,
                                            metadata={"skipped": dg.MetadataValue.bool(True)})
            ilog.retrieving_subscription_data()
            summary = refresh_inbound(db, client, channel, log=context.log)
        except (CredentialsRejected, TwilioUnavailable) as exc:
            raise twilio_failure(exc) from None
    meta = summary.as_metadata()
    return dg.MaterializeResult(metadata={**metadata(meta), "sender": channel.sender}, check_results=[check])


@dg.asset(
    group_name="outbound",
    partitions_def=execution_partitions,
    deps=[suppression_refresh],
    kinds={"pandas", "sql"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("invalid_number_rate", asset="dedupe",
                                   description=f"At most {INVALID_RATE_THRESHOLD:.0%} of the audience has invalid numbers")],
    description="Recipients read in chunks, normalised to E.164, deduplicated (lowest RPContactID wins), "
                "suppressed numbers dropped, bodies rendered and segments counted; the plan lands in the send ledger.",
)
def dedupe(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource,
           config: OutboundConfig):
    from twilio_pipeline.outbound import (
        OutboundInputError,
        execution_lease,
        plan_execution,
    )

    db, channel, eid = setup(context, database, twilio)
    refuse_unless_sendable(context, db, eid, config)
    try:
        with execution_lease(db, eid, context.run.run_id), _marks_failure(context, db, channel, eid, "dedupe"):
            summary = plan_execution(db, channel, eid, run_id=context.run.run_id, log=context.log)
    except OutboundInputError as exc:
        raise twilio_failure(exc) from None
    meta = summary.as_metadata()
    rate = quality.invalid_number_rate(db, eid)
    check = dg.AssetCheckResult(
        check_name="invalid_number_rate", passed=rate <= INVALID_RATE_THRESHOLD,
        severity=dg.AssetCheckSeverity.WARN, metadata={"invalid_rate": dg.MetadataValue.float(round(rate, 4))})
    return dg.MaterializeResult(metadata={**metadata(meta), "counts": counts_table("Plan", meta)},
                                check_results=[check])


@dg.asset(
    group_name="outbound",
    partitions_def=execution_partitions,
    deps=[dedupe],
    pool=TWILIO_POOL,
    kinds={"twilio"},
    owners=OWNERS,
    description="One POST per planned recipient, many in flight, rate limited and backed off on 429; every "
                "recipient claimed in the ledger before its request, so a re-run never sends twice.",
)
def send(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource,
         config: OutboundConfig):
    from twilio_pipeline.outbound import execution_lease, send_execution

    db, channel, eid = setup(context, database, twilio)
    refuse_unless_sendable(context, db, eid, config)
    progress = progress_reporter(context.log, interactive=context.run.tags.get("twilio_pipeline/cli") == "1"
                                 and sys.stderr.isatty())
    # The lease outside: an interruption is recorded while this run still holds the execution.
    with execution_lease(db, eid, context.run.run_id), _marks_failure(context, db, channel, eid, "send"), \
            twilio.get_client(channel, trace=context.log.info) as client:
        try:
            summary = send_execution(db, client, channel, eid, run_id=context.run.run_id, log=context.log,
                                     progress=stops_on_signal(progress))
        except (CredentialsRejected, SenderRejected, TwilioUnavailable) as exc:
            raise twilio_failure(exc) from None
        finally:
            progress.close()
    meta = summary.as_metadata()
    return dg.MaterializeResult(metadata={**metadata(meta), "counts": counts_table("Send", meta)})


@dg.asset(
    group_name="outbound",
    partitions_def=execution_partitions,
    deps=[send],
    kinds={"sql"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("outbound_identities_hold", asset="message_id_staging",
                                   description="CountBeforeDedup = InvalidNumbers + Duplicates + Unsubscribed + "
                                               "NotRendered + Targeted + Pending and Targeted = Sent + SendFailed + Unresolved")],
    description="Accepted SIDs staged in Twilio_MessageIDs, first states in OfferHistorySG_States, the guide's "
                "counts in op_ChannelExecutionResults, the execution marked sent or failed; staging tables dropped.",
)
def message_id_staging(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource):
    from twilio_pipeline.outbound import InteractionLog, commit_execution, execution_lease

    db, channel, eid = setup(context, database, twilio)
    with execution_lease(db, eid, context.run.run_id), \
            _marks_failure(context, db, channel, eid, "message_id_staging"):
        outcome = commit_execution(db, channel, eid, run_id=context.run.run_id, log=context.log)
    InteractionLog(context.log, channel.name).finishing()
    problems = quality.outbound_identity_problems(db, eid)
    check = dg.AssetCheckResult(check_name="outbound_identities_hold", passed=not problems,
                                metadata={"problems": dg.MetadataValue.text("; ".join(problems) or "none")})
    meta = outcome.as_metadata()
    return dg.MaterializeResult(
        metadata={**metadata(meta), "results": counts_table("op_ChannelExecutionResults", outcome.results)},
        check_results=[check],
    )


OUTBOUND_ASSETS = [suppression_refresh, dedupe, send, message_id_staging]
