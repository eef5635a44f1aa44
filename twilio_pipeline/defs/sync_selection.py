"""Which executions a run of the execution-level sync syncs.

A run over several executions covers a range of the partition list, as a backfill run of the sync assets
does (their backfill policy). The chain sensor batches the executions that have something to sync into such
ranges and lists them in SYNC_EXECUTIONS_TAG: the other partitions a range happens to cover (an execution
with nothing to sync, one not sent yet) are left alone by the run, never read as an execution to sync nor
marked failed. A run without the tag (a backfill, one partition) syncs every partition it covers.
"""

from __future__ import annotations

SYNC_EXECUTIONS_TAG = "twilio_pipeline/sync_executions"


def listed_executions(execution_ids: list[int]) -> dict[str, str]:
    """The tag naming the executions a run syncs."""
    return {SYNC_EXECUTIONS_TAG: ",".join(str(eid) for eid in execution_ids)}


def sync_keys(context) -> list[str]:
    """The partition keys of this run that it syncs, in partition order (all of them without the tag)."""
    keys = list(context.partition_keys)
    listed = context.run.tags.get(SYNC_EXECUTIONS_TAG)
    if listed is None:
        return keys
    wanted = set(listed.split(","))
    chosen = [k for k in keys if k in wanted]
    left = len(keys) - len(chosen)
    if left:
        context.log.info(f"{left} partition{'' if left == 1 else 's'} of this range left alone "
                         f"(nothing to sync when the run was requested); syncing {', '.join(chosen) or 'none'}")
    return chosen
