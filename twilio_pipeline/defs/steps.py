"""What every asset does around its domain call: find the execution and its channel, say which mode
it runs in, and turn summaries into metadata the UI can plot."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from twilio_pipeline.channels import Channel, ChannelConfigError
from twilio_pipeline.db import Database
from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
from twilio_pipeline.logs import ListLog
from twilio_pipeline.outbound.execution import record_unsendable

# The metadata entry holding the sentences a step logged about its work (the CLI prints them as they are).
REPORT = "report"


def report(log: ListLog) -> dict[str, dg.MetadataValue]:
    return {REPORT: dg.MetadataValue.text("\n".join(log.lines))} if log.lines else {}


def execution_id_of(context: dg.AssetExecutionContext) -> int:
    return int(context.partition_key)


def announce(context, twilio: TwilioResource, channel: Channel | None = None) -> None:
    """Sandbox mode is said in every run log and shown as a run tag, however the run was launched
    (per channel: a channel with its own `account:` is live whatever the deployment's account)."""
    from twilio_pipeline.defs.partitions import MODE_TAG

    tag = twilio.mode_tag if channel is None else twilio.channel_mode_tag(channel)
    if context.run.tags.get(MODE_TAG) != tag:
        context.instance.add_run_tags(context.run.run_id, {MODE_TAG: tag})
    notice = twilio.notice(channel)
    if notice:
        context.log.warning(notice)


def channel_of(db: Database, twilio: TwilioResource, execution_id: int) -> Channel:
    from twilio_pipeline.outbound import OutboundInputError, load_execution

    try:
        _row, channel = load_execution(db, twilio.get_channels(), execution_id)
    except (OutboundInputError, ChannelConfigError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    return channel


def setup(context, database: DatabaseResource, twilio: TwilioResource) -> tuple[Database, Channel, int]:
    db = database.get_database()
    eid = execution_id_of(context)
    try:
        channel = channel_of(db, twilio, eid)
    except dg.Failure as exc:
        announce(context, twilio)
        record_unsendable(db, eid, exc.description or "the execution cannot be sent")
        raise
    announce(context, twilio, channel)
    tag_run(context, eid, channel.name)
    return db, channel, eid


def tag_run(context, execution_id: int, channel_name: str) -> None:
    """The execution and channel tags on a run that was started without the run queue (`dagster asset
    materialize`, `execute_in_process` in a script): run filters find it all the same."""
    from twilio_pipeline.defs.partitions import CHANNEL_TAG, EXECUTION_TAG

    tags = {EXECUTION_TAG: str(execution_id), CHANNEL_TAG: channel_name}
    if any(context.run.tags.get(k) != v for k, v in tags.items()):
        context.instance.add_run_tags(context.run.run_id, tags)


def metadata(summary: Mapping[str, object]) -> dict[str, dg.MetadataValue]:
    """Numbers stay numbers (Dagster plots them across partitions); the rest becomes text."""
    out: dict[str, dg.MetadataValue] = {}
    for key, value in summary.items():
        if isinstance(value, bool):
            out[key] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            out[key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[key] = dg.MetadataValue.float(value)
        elif value is None:
            continue
        else:
            out[key] = dg.MetadataValue.text(str(value))
    return out


def counts_table(title: str, counts: Mapping[str, object]) -> dg.MetadataValue:
    rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
    return dg.MetadataValue.md(f"**{title}**\n\n| count | value |\n|---|---|\n{rows}\n")


def twilio_failure(exc: Exception) -> dg.Failure:
    """A Twilio error that stops a run (credentials rejected, Twilio unreachable) as one clear line;
    Dagster must not retry it: it would not help."""
    return dg.Failure(description=str(exc), allow_retries=False)
