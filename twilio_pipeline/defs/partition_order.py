"""The execution partitions in an order that reads naturally in the UI and its metadata plots: upstream
executions by ID, then the follow-ups (-1, -2, ... in the order they were made), then anything else.

Dagster lists dynamic partitions in the order they were added, so a key that arrives out of order moves
the keys that must follow it: they are deleted and added again after it (their materializations stay, they
are keyed by name). A key with a queued or running run is never moved (its run reads the partition list);
the order is then put right by a later addition."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG, PARTITION_NAME_TAG

from twilio_pipeline.defs.partitions import execution_partitions

ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def partition_order(key: str) -> tuple:
    """Upstream executions ascending, follow-ups (negative IDs) after them, newest last; other keys last."""
    try:
        eid = int(key)
    except ValueError:
        return (2, 0, key)
    return (0, eid, "") if eid >= 0 else (1, -eid, "")


def placement(existing: list[str], new: list[str]) -> tuple[list[str], list[str]]:
    """(keys to delete, keys to add in this order) so that existing + new end up in partition_order; only
    the shortest tail of `existing` that is out of place moves."""
    known = set(existing)
    new = [k for k in dict.fromkeys(new) if k not in known]
    if not new:
        return [], []
    desired = sorted(existing + new, key=partition_order)
    keep = 0
    while keep < len(existing) and existing[keep] == desired[keep]:
        keep += 1
    return existing[keep:], desired[keep:]


def _busy_keys(instance: dg.DagsterInstance) -> set[str] | None:
    """Partition keys of queued or running runs; None when a run over a range is active (any move could
    change what its range covers)."""
    busy: set[str] = set()
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=ACTIVE)):
        tags = record.dagster_run.tags
        if ASSET_PARTITION_RANGE_START_TAG in tags:
            return None
        if PARTITION_NAME_TAG in tags:
            busy.add(tags[PARTITION_NAME_TAG])
    return busy


def ordered_add_requests(instance: dg.DagsterInstance, keys: list[str]) -> list:
    """Dynamic-partition requests (for a SensorResult) that add `keys` in their natural place."""
    existing = list(instance.get_dynamic_partitions(execution_partitions.name))
    delete, add = placement(existing, keys)
    if not add:
        return []
    if delete:
        busy = _busy_keys(instance)
        if busy is None or busy & set(delete):
            known = set(existing)
            return [execution_partitions.build_add_request([k for k in dict.fromkeys(keys) if k not in known])]
        return [execution_partitions.build_delete_request(delete), execution_partitions.build_add_request(add)]
    return [execution_partitions.build_add_request(add)]


def add_in_order(instance: dg.DagsterInstance, keys: list[str]) -> None:
    """The same, applied at once (the CLI, follow-ups created by a channel sync)."""
    for request in ordered_add_requests(instance, keys):
        if isinstance(request, dg.DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(execution_partitions.name, key)
        else:
            instance.add_dynamic_partitions(execution_partitions.name, list(request.partition_keys))
