"""Inbound assets (group `inbound`): keyword parse per channel; status fetch, state bulk-load and
aggregate results per channel execution (the guide's state data synchronization, steps 1-16)."""


import warnings
from collections import defaultdict

import dagster as dg

from twilio_pipeline import quality
from twilio_pipeline.channels import Channel
from twilio_pipeline.defs.partition_order import add_in_order
from twilio_pipeline.defs.partitions import TWILIO_POOL, execution_partitions
from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
from twilio_pipeline.defs.steps import (
    announce,
    channel_of,
    counts_table,
    metadata,
    tag_run,
    twilio_failure,
)
from twilio_pipeline.outbound.execution import record_unsendable
from twilio_pipeline.rules.keywords import OPT_OUT_KEYWORDS
from twilio_pipeline.twilio import CredentialsRejected, TwilioUnavailable

# The backfill policy is what keeps a backfill of past executions from flooding the account. Dagster 1.13
# marks the parameter beta; the release is pinned, so its warning on every load would tell users nothing.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)

OWNERS = ["team:messaging"]
DELIVERY_RATE_THRESHOLD = 0.8
# A backfill over many executions runs 10 per run, and dagster.yaml caps backfill runs at 2 at once.
SYNC_BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=10)


class KeywordParseConfig(dg.Config):
    channel: str | None = None  # only this channel (the CLI's --channel); all channels when unset


def _is_backfill(context) -> bool:
    return "dagster/backfill" in context.run.tags or context.run.tags.get("twilio_pipeline/full_window") == "1"


def _by_channel(context, database: DatabaseResource, twilio: TwilioResource) -> dict[str, tuple[Channel, list[int]]]:
    """The run's executions by channel. In a run over several partitions (a backfill, a batched chain run) an
    execution that cannot be synced is recorded (Status `failed` with the reason, unless it was sent) and
    skipped, so the others are still synced and stay green; a run of that one execution alone fails."""
    db = database.get_database()
    groups: dict[str, tuple[Channel, list[int]]] = {}
    ids: dict[str, list[int]] = defaultdict(list)
    keys = context.partition_keys
    for key in keys:
        try:
            eid = int(key)
            channel = channel_of(db, twilio, eid)
        except (ValueError, dg.Failure) as exc:
            reason = exc.description if isinstance(exc, dg.Failure) else f"partition {key!r} is not an execution ID"
            recorded = isinstance(exc, dg.Failure) and record_unsendable(db, eid, reason)
            if len(keys) == 1:
                raise dg.Failure(description=reason, allow_retries=False) from None
            context.log.warning(f"Skipped execution {key}: {reason}" + (" (Status failed)" if recorded else ""))
            continue
        groups.setdefault(channel.name, (channel, ids[channel.name]))
        ids[channel.name].append(eid)
        if len(keys) == 1:
            tag_run(context, eid, channel.name)
    return groups




@dg.asset(
    group_name="inbound",
    pool=TWILIO_POOL,
    kinds={"twilio", "sql"},
    owners=OWNERS,
    description="Per channel: inbound replies listed into TwilioSMS_Inbound (same listing and watermark as the "
                "suppression refresh), keywords parsed (opt-out, opt-in, help, the channel's own), opt-outs merged "
                "into TwilioSMS_Suppression and keyword replies attributed to executions as Replied states; "
                "follow-up executions created for keywords that name one.",
)
def keyword_parse(context: dg.AssetExecutionContext, config: KeywordParseConfig, database: DatabaseResource,
                  twilio: TwilioResource):
    from twilio_pipeline.follow_ups import create_follow_ups
    from twilio_pipeline.inbound import parse_keywords, refresh_inbound

    announce(context, twilio)
    db = database.get_database()
    channels = twilio.get_channels()
    selected = [channels.get(config.channel)] if config.channel else list(channels.channels)
    totals: dict[str, int] = defaultdict(int)
    follow_up_ids: list[int] = []
    for channel in selected:
        with twilio.get_client(channel, trace=context.log.info) as client:
            try:
                refreshed = refresh_inbound(db, client, channel, log=context.log)
            except (CredentialsRejected, TwilioUnavailable) as exc:
                raise twilio_failure(exc) from None
        parsed = parse_keywords(db, channel, log=context.log, peers=channels.sharing_sender(channel))
        for summary in (refreshed, parsed):
            for k, v in summary.as_metadata().items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    totals[k] += v
        follow_up_ids += create_follow_ups(db, channel, log=context.log)
    if follow_up_ids:
        add_in_order(context.instance, [str(i) for i in follow_up_ids])
    totals["follow_up_executions"] = len(follow_up_ids)
    return dg.MaterializeResult(metadata={**metadata(dict(totals)), "channels": len(selected)})


@dg.asset(
    group_name="inbound",
    partitions_def=execution_partitions,
    backfill_policy=SYNC_BACKFILL_POLICY,
    pool=TWILIO_POOL,
    kinds={"twilio"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("no_sids_past_validity", asset="status_fetch",
                                   description="No SID is still tracked after the channel's validity period")],
    description="Delivery statuses of the execution's tracked SIDs: one listing by sender and DateSent window "
                "(1,000 per page), a GET only for SIDs the listing did not return; never a step backwards.",
)
def status_fetch(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource):
    from twilio_pipeline.inbound import fetch_statuses

    announce(context, twilio)
    db = database.get_database()
    totals: dict[str, int] = defaultdict(int)
    stale = 0
    for channel, ids in _by_channel(context, database, twilio).values():
        with twilio.get_client(channel, trace=context.log.info) as client:
            try:
                summary = fetch_statuses(db, client, channel, ids, log=context.log, full_window=_is_backfill(context))
            except (CredentialsRejected, TwilioUnavailable) as exc:
                raise twilio_failure(exc) from None
        for k, v in summary.as_metadata().items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                totals[k] += v
        stale += sum(quality.tracked_past_validity(db, i, channel.validity_period_s) for i in ids)
    check = dg.AssetCheckResult(check_name="no_sids_past_validity", passed=stale == 0,
                                severity=dg.AssetCheckSeverity.WARN,
                                metadata={"tracked_past_validity": dg.MetadataValue.int(stale)})
    return dg.MaterializeResult(metadata=metadata(dict(totals)), check_results=[check])


@dg.asset(
    group_name="inbound",
    partitions_def=execution_partitions,
    backfill_policy=SYNC_BACKFILL_POLICY,
    deps=[status_fetch, keyword_parse],
    kinds={"sql"},
    owners=OWNERS,
    check_specs=[dg.AssetCheckSpec("states_match_offer_history", asset="state_bulk_load",
                                   description="Every state row belongs to a contact of the execution's offer history")],
    description="Observed states bulk-loaded into OfferHistorySG_States through a per-run staging table with "
                "INSERT ... WHERE NOT EXISTS (a re-run inserts nothing twice); terminal SIDs retired in the same "
                "transaction.",
)
def state_bulk_load(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource):
    from twilio_pipeline.inbound import load_states

    announce(context, twilio)
    db = database.get_database()
    ids = [int(k) for k in context.partition_keys]
    summary = load_states(db, log=context.log, execution_ids=ids)
    orphans = sum(quality.states_without_offer_history(db, i) for i in ids)
    check = dg.AssetCheckResult(check_name="states_match_offer_history", passed=orphans == 0,
                                metadata={"states_without_offer_history": dg.MetadataValue.int(orphans)})
    return dg.MaterializeResult(metadata=metadata(summary.as_metadata()), check_results=[check])


@dg.asset(
    group_name="inbound",
    partitions_def=execution_partitions,
    backfill_policy=SYNC_BACKFILL_POLICY,
    deps=[state_bulk_load],
    kinds={"sql"},
    owners=OWNERS,
    check_specs=[
        dg.AssetCheckSpec("results_identities_hold", asset="aggregate_results",
                          description="Status:* results sum to Sent"),
        dg.AssetCheckSpec("delivery_rate", asset="aggregate_results",
                          description=f"At least {DELIVERY_RATE_THRESHOLD:.0%} of finished messages delivered"),
    ],
    description="Inbound results (`Status:<status>`, `Expired`, `Reply:<KEYWORD>`) recomputed from the stored states "
                "into op_ChannelExecutionResults, keeping the outbound ones; recomputing twice gives the same rows.",
)
def aggregate_results(context: dg.AssetExecutionContext, database: DatabaseResource, twilio: TwilioResource):
    from twilio_pipeline.inbound import aggregate_results as aggregate

    announce(context, twilio)
    db = database.get_database()
    ids = [int(k) for k in context.partition_keys]
    per_execution = aggregate(db, ids, log=context.log)
    problems = [p for i in ids for p in quality.inbound_identity_problems(db, i)]
    rates = [r for r in (quality.delivery_rate(db, i) for i in ids) if r is not None]
    rate = min(rates) if rates else None
    results = per_execution.get(ids[0], {}) if len(ids) == 1 else {}
    plot = {
        "sent": int(results.get("Sent", 0)),
        "delivered": int(results.get("Status:delivered", 0)),
        "undelivered": int(results.get("Status:undelivered", 0)),
        "failed": int(results.get("Status:failed", 0)),
        "expired": int(results.get("Expired", 0)),
        "opt_outs": int(sum(v for k, v in results.items() if k in {f"Reply:{w}" for w in OPT_OUT_KEYWORDS})),
        "segments": int(results.get("Segments", 0)),
    }
    meta = metadata(plot)
    if rate is not None:
        meta["delivery_rate"] = dg.MetadataValue.float(round(rate, 4))
    if "EstimatedCost" in results:
        meta["estimated_cost"] = dg.MetadataValue.float(float(results["EstimatedCost"]))
    if results:
        meta["results"] = counts_table("op_ChannelExecutionResults", results)
    checks = [
        dg.AssetCheckResult(check_name="results_identities_hold", passed=not problems,
                            metadata={"problems": dg.MetadataValue.text("; ".join(problems) or "none")}),
        dg.AssetCheckResult(check_name="delivery_rate", passed=rate is None or rate >= DELIVERY_RATE_THRESHOLD,
                            severity=dg.AssetCheckSeverity.WARN,
                            metadata={"delivery_rate": dg.MetadataValue.float(rate if rate is not None else 1.0)}),
    ]
    return dg.MaterializeResult(metadata=meta, check_results=checks)


INBOUND_ASSETS = [keyword_parse, status_fetch, state_bulk_load, aggregate_results]
