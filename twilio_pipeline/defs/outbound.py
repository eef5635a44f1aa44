"""Outbound assets (group `outbound`), one partition per channel execution:
suppression refresh -> dedupe -> send -> message-ID staging (the guide's outbound steps 1-8)."""


import sys
from contextlib import contextmanager

import dagster as dg

from twilio_pipeline import quality
from twilio_pipeline.defs.partitions import TWILIO_POOL, execution_partitions
from twilio_pipeline.defs.progress import progress_reporter
from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
from twilio_pipeline.defs.steps import counts_table, metadata, setup, twilio_failure
from twilio_pipeline.twilio import CredentialsRejected, TwilioUnavailable

OWNERS = ["team:messaging"]
INVALID_RATE_THRESHOLD = 0.2




@contextmanager
def _marks_failure(db, execution_id: int):
    """A step that fails leaves the execution `failed` with the reason, so the upstream sees it; a run that
    found the execution busy leaves it alone (the other run owns it)."""
    from twilio_pipeline.outbound import ExecutionBusy, LeaseLost, mark_failed

    try:
        yield
    except (ExecutionBusy, LeaseLost):
        raise
    except dg.Failure as exc:
        mark_failed(db, execution_id, exc.description or "the run failed")
        raise
    except Exception as exc:
        mark_failed(db, execution_id, f"{type(exc).__name__}: {exc}")
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
def suppression_refresh(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource):
    from twilio_pipeline.inbound import refresh_inbound
    from twilio_pipeline.outbound import check_connectivity

    db, channel, eid = setup(context, database, twilio)
    with _marks_failure(db, eid), twilio.get_client(channel, trace=context.log.info) as client:
        try:
            if channel.connectivity_test:
                conn_meta = check_connectivity(client, channel, context.log)
                check = dg.AssetCheckResult(check_name="twilio_connectivity", passed=True, metadata=metadata(conn_meta))
            else:
                context.log.info(f"Action: {channel.name} Activity: connectivity test skipped (connectivity_test: false)")
                check = dg.AssetCheckResult(check_name="twilio_connectivity", passed=True,
                                            metadata={"skipped": dg.MetadataValue.bool(True)})
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
def dedupe(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource):
    from twilio_pipeline.outbound import (
        OutboundInputError,
        execution_lease,
        plan_execution,
    )

    db, channel, eid = setup(context, database, twilio)
    try:
        with _marks_failure(db, eid), execution_lease(db, eid, context.run.run_id):
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
def send(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource):
    from twilio_pipeline.outbound import execution_lease, send_execution

    db, channel, eid = setup(context, database, twilio)
    progress = progress_reporter(context.log, interactive=context.run.tags.get("twilio_pipeline/cli") == "1"
                                 and sys.stderr.isatty())
    with _marks_failure(db, eid), twilio.get_client(channel, trace=context.log.info) as client:
        try:
            with execution_lease(db, eid, context.run.run_id):
                summary = send_execution(db, client, channel, eid, run_id=context.run.run_id, log=context.log,
                                         progress=progress)
        except (CredentialsRejected, TwilioUnavailable) as exc:
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
                                               "NotRendered + Targeted and Targeted = Sent + SendFailed + Unresolved")],
    description="Accepted SIDs staged in Twilio_MessageIDs, first states in OfferHistorySG_States, the guide's "
                "counts in op_ChannelExecutionResults, the execution marked sent or failed; staging tables dropped.",
)
def message_id_staging(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource):
    from twilio_pipeline.outbound import commit_execution, execution_lease

    db, channel, eid = setup(context, database, twilio)
    with _marks_failure(db, eid), execution_lease(db, eid, context.run.run_id):
        outcome = commit_execution(db, channel, eid, run_id=context.run.run_id, log=context.log)
    problems = quality.outbound_identity_problems(db, eid)
    check = dg.AssetCheckResult(check_name="outbound_identities_hold", passed=not problems,
                                metadata={"problems": dg.MetadataValue.text("; ".join(problems) or "none")})
    meta = outcome.as_metadata()
    return dg.MaterializeResult(
        metadata={**metadata(meta), "results": counts_table("op_ChannelExecutionResults", outcome.results)},
        check_results=[check],
    )


OUTBOUND_ASSETS = [suppression_refresh, dedupe, send, message_id_staging]
