"""Inbound assets (group `inbound`): keyword parse per channel; status fetch, state bulk-load and
aggregate results per channel execution (the guide's state data synchronization, steps 1-16)."""


import warnings
from collections import defaultdict
from datetime import datetime

import dagster as dg
from pydantic import Field

from twilio_pipeline import quality
from twilio_pipeline.channels import Channel
from twilio_pipeline.defs.partition_order import add_in_order
from twilio_pipeline.defs.partitions import FULL_WINDOW_TAG, TWILIO_POOL, execution_partitions
from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
from twilio_pipeline.defs.steps import (
    announce,
    channel_of,
    counts_table,
    metadata,
    report,
    tag_run,
    twilio_failure,
)
from twilio_pipeline.defs.sync_selection import sync_keys
from twilio_pipeline.logs import TeeLog
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


NOW_DESCRIPTION = ("The moment the step takes as now (ISO 8601, UTC), e.g. the clock of a sandbox that was moved "
                   "on; unset: the wall clock.")


class KeywordParseConfig(dg.Config):
    channel: str | None = Field(None, description="Only this channel (the CLI's --channel); all channels when unset.")
    now: str | None = Field(None, description=NOW_DESCRIPTION)


class StatusFetchConfig(dg.Config):
    now: str | None = Field(None, description=NOW_DESCRIPTION)


def _now(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _is_backfill(context) -> bool:
    return "dagster/backfill" in context.run.tags or context.run.tags.get(FULL_WINDOW_TAG) == "1"


def _numbers(summary, prefix: str = "") -> dict[str, int | float]:
    return {f"{prefix}{k}": v for k, v in summary.as_metadata().items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _by_channel(context, database: DatabaseResource, twilio: TwilioResource) -> dict[str, tuple[Channel, list[int]]]:
    """The run's executions by channel. In a run over several partitions (a backfill, a batched chain run) an
    execution that cannot be synced is recorded (Status `failed` with the reason, unless it was sent) and
    skipped, so the others are still synced and stay green; a run of that one execution alone fails."""
    db = database.get_database()
    groups: dict[str, tuple[Channel, list[int]]] = {}
    ids: dict[str, list[int]] = defaultdict(list)
    keys = sync_keys(context)
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
    check_specs=[dg.AssetCheckSpec("every_channel_synced", asset="keyword_parse",
                                   description="Every selected channel's replies were read: none was skipped for an "
                                               "unset account, rejected credentials or an unreachable Twilio")],
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
    now = _now(config.now)
    log = TeeLog(context.log)
    totals: dict[str, int | float] = defaultdict(int)
    follow_up_ids: list[int] = []
    not_synced: dict[str, str] = {}
    twilio_errors = 0
    # One channel's missing account, rejected credentials or unreachable Twilio must not stop the other
    # channels' replies and opt-outs (a STOP is a legal duty): it is logged, the others are synced, and the
    # every_channel_synced check fails naming it. Only when no channel could be read does the step fail.
    for channel in selected:
        problem = twilio.account_problem(channel)
        if problem is not None:
            log.warning(f"channel {channel.name!r} not synced: {problem}")
            not_synced[channel.name] = problem
            continue
        with twilio.get_client(channel, trace=context.log.info) as client:
            try:
                refreshed = refresh_inbound(db, client, channel, log=log, now=now)
            except (CredentialsRejected, TwilioUnavailable) as exc:
                if len(selected) == 1:
                    raise twilio_failure(exc) from None
                log.warning(f"channel {channel.name!r} not synced: {exc}")
                not_synced[channel.name] = str(exc)
                twilio_errors += 1
                continue
        parsed = parse_keywords(db, channel, log=log, limit_records=channel.records_per_sync, now=now,
                                peers=channels.sharing_sender(channel))
        # Each step's figures under its own name: the two steps count different things (listed vs parsed).
        for k, v in {**_numbers(refreshed, "refresh_"), **_numbers(parsed, "parse_")}.items():
            totals[k] += v
        follow_up_ids += create_follow_ups(db, channel, log=log)
    if follow_up_ids:
        add_in_order(context.instance, [str(i) for i in follow_up_ids])
    totals["follow_up_executions"] = len(follow_up_ids)
    if twilio_errors and len(not_synced) == len(selected):
        raise dg.Failure(description="no channel synced: " + "; ".join(f"{n}: {r}" for n, r in not_synced.items()),
                         allow_retries=False)
    meta = {**metadata(dict(totals)), "channels": dg.MetadataValue.int(len(selected) - len(not_synced)), **report(log)}
    if not_synced:
        meta["channels_not_synced"] = dg.MetadataValue.text(", ".join(not_synced))
    check = dg.AssetCheckResult(
        check_name="every_channel_synced", passed=not not_synced, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"not_synced": dg.MetadataValue.text("; ".join(f"{n}: {r}" for n, r in not_synced.items())
                                                      or "none")})
    return dg.MaterializeResult(metadata=meta, check_results=[check])


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
def status_fetch(context: dg.AssetExecutionContext, config: StatusFetchConfig, database: DatabaseResource,
                 twilio: TwilioResource):
    from twilio_pipeline.inbound import fetch_statuses

    announce(context, twilio)
    db = database.get_database()
    full_window = _is_backfill(context)
    log = TeeLog(context.log)
    totals: dict[str, int] = defaultdict(int)
    stale = 0
    for channel, ids in _by_channel(context, database, twilio).values():
        with twilio.get_client(channel, trace=context.log.info) as client:
            try:
                # A backfill re-reads everything it was given; a sync takes `records_per_sync`, the rest next time.
                summary = fetch_statuses(db, client, channel, ids, log=log, full_window=full_window,
                                         now=_now(config.now),
                                         limit_records=None if full_window else channel.records_per_sync)
            except (CredentialsRejected, TwilioUnavailable) as exc:
                raise twilio_failure(exc) from None
        for k, v in _numbers(summary).items():
            totals[k] += v
        stale += sum(quality.tracked_past_validity(db, i, channel.validity_period_s) for i in ids)
    check = dg.AssetCheckResult(check_name="no_sids_past_validity", passed=stale == 0,
                                severity=dg.AssetCheckSeverity.WARN,
                                metadata={"tracked_past_validity": dg.MetadataValue.int(stale)})
    meta = {**metadata(dict(totals)), "full_window": dg.MetadataValue.bool(full_window), **report(log)}
    return dg.MaterializeResult(metadata=meta, check_results=[check])


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
    ids = [int(k) for k in sync_keys(context)]
    log = TeeLog(context.log)
    summary = load_states(db, log=log, execution_ids=ids)
    orphans = sum(quality.states_without_offer_history(db, i) for i in ids)
    check = dg.AssetCheckResult(check_name="states_match_offer_history", passed=orphans == 0,
                                metadata={"states_without_offer_history": dg.MetadataValue.int(orphans)})
    return dg.MaterializeResult(metadata={**metadata(summary.as_metadata()), **report(log)}, check_results=[check])


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
    ids = [int(k) for k in sync_keys(context)]
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
