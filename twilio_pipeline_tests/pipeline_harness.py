"""Whole sends and syncs as production runs them: the code location's jobs, in process, through the runner
the CLI uses (`defs/runner.py`), with the real resources pointed at a test database and a sandbox.

A test that checks one step calls the step function; a test that checks a whole send or a whole sync runs
`PipelineHarness.send` / `.sync` / `.backfill`, so it proves the path users run (CLI, sensors, UI), not a
composition of its own. The sandbox is a separate HTTP server configured by URL, so fault injection works
as it does for the CLI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from twilio_pipeline.channels import Channel, ChannelFile
from twilio_pipeline.db import Database
from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
from twilio_pipeline.defs.runner import (
    JobRun,
    SyncRuns,
    backfill_run,
    channel_sync_run,
    send_run,
    sync_report,
    sync_runs,
)
from twilio_pipeline.logs import ListLog
from twilio_pipeline.outbound import read_execution

HARNESS_TAGS = {"twilio_pipeline/test": "1"}


class StepFailed(Exception):
    """A run that failed, as the CLI sees it: the failing step and its error in one line (`log`: what the
    run's steps logged)."""

    def __init__(self, run: JobRun, instance: dg.DagsterInstance):
        failure = run.failure
        assert failure is not None
        super().__init__(f"{failure.error_class}: {failure.message} (step {failure.step}, run {run.run_id})")
        self.run = run
        self.error_class = failure.error_class
        self.message = failure.message
        self.step = failure.step
        self.log = run_log(instance, run)


class Figures:
    """A step's figures as its materialization recorded them (attribute or key access)."""

    def __init__(self, values: Mapping[str, Any]):
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no figure {name!r} among {sorted(self._values)}") from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def as_metadata(self) -> dict[str, Any]:
        return dict(self._values)


def _summed(parts: Iterable[Mapping[str, Any]], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[name] = out.get(name, 0) + value
            else:
                out[name] = value
    return out


def run_log(instance: dg.DagsterInstance, run: JobRun) -> ListLog:
    """The lines the run's steps logged (context.log), in order, warnings also apart: what the UI shows."""
    log = ListLog()
    for entry in instance.all_logs(run.run_id):
        if entry.is_dagster_event:
            continue
        (log.warning if entry.level >= logging.WARNING else log.info)(entry.user_message)
    return log


@dataclass
class SendOutcome:
    """One run of the outbound job."""

    run: JobRun
    execution_id: int
    db: Database
    instance: dg.DagsterInstance

    @property
    def log(self) -> ListLog:
        return run_log(self.instance, self.run)

    @property
    def plan(self) -> Figures:
        return Figures(self.run.metadata("dedupe"))

    @property
    def send(self) -> Figures:
        return Figures(self.run.metadata("send"))

    @property
    def commit(self) -> Figures:
        return Figures(self.run.metadata("message_id_staging"))

    @property
    def results(self) -> dict[str, float]:
        return self.db.read_results(self.execution_id)

    @property
    def status(self) -> str | None:
        row = read_execution(self.db, self.execution_id)
        return None if row is None else row.status

    @property
    def connectivity(self) -> dict[str, Any] | None:
        """The connectivity check's metadata, None when the channel skips the probe."""
        for evaluation in self.run.result.get_asset_check_evaluations():
            if evaluation.check_name == "twilio_connectivity":
                meta = {k: v.value for k, v in evaluation.metadata.items()}
                return None if meta.get("skipped") else meta
        return None


@dataclass
class SyncOutcome:
    """A whole channel sync (or a backfill): the figures of each step, added up over its runs."""

    runs: list[JobRun]
    execution_ids: list[int]
    report: list[str]
    exit_code: int = 0  # what `twilio-pipeline sync` would exit with

    def _nodes(self, node: str) -> list[dict[str, Any]]:
        return [m for run in self.runs if (m := run.metadata(node))]

    @property
    def refresh(self) -> Figures:
        return Figures(_summed(self._nodes("keyword_parse"), "refresh_"))

    @property
    def keywords(self) -> Figures:
        return Figures(_summed(self._nodes("keyword_parse"), "parse_"))

    @property
    def fetch(self) -> Figures | None:
        parts = self._nodes("status_fetch")
        return Figures(_summed(parts)) if parts else None

    @property
    def load(self) -> Figures | None:
        parts = self._nodes("state_bulk_load")
        return Figures(_summed(parts)) if parts else None

    @property
    def api_calls(self) -> int:
        fetch = self.fetch
        return int(self.refresh.as_metadata().get("api_calls", 0)) + (int(fetch.api_calls) if fetch else 0)


def channel_file(channels: ChannelFile | Channel | Iterable[Channel]) -> ChannelFile:
    if isinstance(channels, ChannelFile):
        return channels
    if isinstance(channels, Channel):
        return ChannelFile(channels=(channels,))
    return ChannelFile(channels=tuple(channels))


class PipelineHarness:
    """The pipeline installed against `db` and `sandbox`: its own channel file and an ephemeral Dagster
    instance. `auth_token` replaces the sandbox's (a wrong token: credentials rejected)."""

    def __init__(self, db: Database, sandbox, channels: ChannelFile | Channel | Iterable[Channel], root: Path,
                 *, auth_token: str | None = None):
        self.db = db
        self.sandbox = sandbox
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.channels_path = root / "channels.yaml"
        self.auth_token = auth_token
        self.set_channels(channels)
        self.instance = dg.DagsterInstance.ephemeral()

    def set_channels(self, channels: ChannelFile | Channel | Iterable[Channel]) -> None:
        self.channels = channel_file(channels)
        specs = [c.model_dump(mode="json", exclude_defaults=True) for c in self.channels.channels]
        self.channels_path.write_text(yaml.safe_dump({"channels": specs}, sort_keys=False, allow_unicode=True),
                                      encoding="utf-8")

    @property
    def resources(self) -> dict[str, object]:
        sb = self.sandbox
        return {
            "database": DatabaseResource(url=self.db.url.render_as_string(hide_password=False),
                                         schema_name=self.db.schema, table_prefix=self.db.prefix),
            "twilio": TwilioResource(account_sid=sb.account_sid, auth_token=self.auth_token or sb.auth_token,
                                     api_base_url=sb.base_url, bulkexports_base_url=sb.base_url,
                                     messaging_base_url=sb.base_url, channels_path=str(self.channels_path),
                                     data_dir=str(self.root / "data")),
        }

    @property
    def database(self) -> Database:
        """The Database the runs use (one per process and URL, as in production): listen to its engine to see
        the statements a run issues."""
        return self.resources["database"].get_database()

    def sandbox_now(self) -> datetime:
        """Twilio's "now" for the tests: the sandbox's clock, which tests move on."""
        return datetime.fromtimestamp(self.sandbox.clock()["now_epoch"], tz=UTC)

    def send(self, execution_id: int, *, force: bool = False, check: bool = True) -> SendOutcome:
        """One run of the outbound job for the execution; a failed run raises StepFailed unless `check=False`."""
        run = send_run(self.instance, execution_id, None, tags=HARNESS_TAGS, force=force, resources=self.resources)
        if check and run.failure is not None:
            raise StepFailed(run, self.instance)
        return SendOutcome(run, execution_id, self.db, self.instance)

    def sync(self, channel: str | None = None, *, now: datetime | None = None, check: bool = True) -> SyncOutcome:
        """The channel sync as `twilio-pipeline sync` runs it (every channel, or one), at `now` (default: the
        sandbox's clock)."""
        runs = sync_runs(self.instance, self.db, self.channels, channel, tags=HARNESS_TAGS,
                         now=now or self.sandbox_now(), resources=self.resources)
        return self._outcome(runs, check)

    def sync_channels(self, channel: str | None = None, *, now: datetime | None = None,
                      check: bool = True) -> SyncOutcome:
        """`channel_sync_job` alone, as the schedule launches it (no execution-level runs)."""
        run = channel_sync_run(self.instance, channel, tags=HARNESS_TAGS, now=now or self.sandbox_now(),
                               resources=self.resources)
        if check and run.failure is not None:
            raise StepFailed(run, self.instance)
        return SyncOutcome([run], [], run.lines("keyword_parse"))

    def backfill(self, execution_ids: list[int], *, now: datetime | None = None, check: bool = True) -> SyncOutcome:
        """The execution-level sync over neighbouring executions, each over its whole window (a UI backfill)."""
        run = backfill_run(self.instance, execution_ids, tags=HARNESS_TAGS, now=now or self.sandbox_now(),
                           resources=self.resources)
        if check and run.failure is not None:
            raise StepFailed(run, self.instance)
        return SyncOutcome([run], list(execution_ids), [])

    def _outcome(self, runs: SyncRuns, check: bool) -> SyncOutcome:
        every = [runs.channel_run, *(part.run for part in runs.executions)]
        if check:
            for run in every:
                if run.failure is not None:
                    raise StepFailed(run, self.instance)
        report, code = sync_report(self.db, runs)
        return SyncOutcome(every, runs.execution_ids, report, code)

    def close(self) -> None:
        self.instance.dispose()
