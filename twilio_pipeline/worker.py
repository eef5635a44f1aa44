"""Scale-out on celery: the executor every job gets from TWILIO_PIPELINE_EXECUTOR, and `twilio-pipeline
worker`, a celery worker that runs this code location's steps.

The orchestrating run worker and every celery worker build their celery app from the same settings here,
so a deployment configures the broker once (TWILIO_PIPELINE_CELERY_BROKER/_BACKEND) for both sides.
What keeps a send exactly-once does not depend on the executor: the execution lease and the ledger live
in the pipeline database, and the `twilio_api` pool's slots are claimed by the run's orchestrator in the
Dagster instance before a step is handed to celery (dagster-celery's execution loop runs the same
instance concurrency context as the multiprocess executor).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import uuid

import dagster as dg
from dagster._core.definitions.executor_definition import (
    MULTI_PROC_CONFIG,
    _core_multiprocess_executor_creation,
    multiple_process_executor_requirements,
)
from dagster._core.executor.multiprocess import MultiprocessExecutor

from twilio_pipeline import step_forkserver
from twilio_pipeline.settings import ExecutorSettings, SettingsError, executor_settings

QUEUE = "dagster"  # dagster-celery's queue: its execution loop submits every step there by default

# How the multiprocess executor starts a step's process unless the run config says otherwise. Dagster's default,
# `spawn`, starts a fresh interpreter per step that imports Dagster and the code location again (seconds of CPU
# each: on a small host a burst of runs spent more CPU starting step processes than sending). A forkserver
# imports the code location once per run and forks every step from it: each step still runs in its own process.
DEFAULT_START_METHOD = {"forkserver": {"preload_modules": [step_forkserver.STEP_PRELOAD]}}

# Celery settings of both sides (dagster-celery passes them as `config_source`). A task is acknowledged
# only once its step ended, and a worker that dies mid-step hands it back to the broker (RabbitMQ
# redelivers the unacknowledged message to another worker); a step already under way is never prefetched
# twice. The redelivered step resumes the send from the ledger under the execution's lease.
CELERY_CONFIG_SOURCE: dict = {
    "worker_prefetch_multiplier": 1,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "broker_connection_retry_on_startup": True,
}


def _require_dagster_celery() -> None:
    try:
        import dagster_celery  # noqa: F401
    except ImportError:
        raise SettingsError("TWILIO_PIPELINE_EXECUTOR=celery needs the celery extra: "
                            "pip install 'twilio_pipeline[celery]'") from None


def _forkserver_unless_configured(config: dict) -> dict:
    if config.get("start_method") or "forkserver" not in multiprocessing.get_all_start_methods():
        return config  # what the run config says, or Dagster's default where there is no forkserver (Windows)
    return {**config, "start_method": DEFAULT_START_METHOD}


class SharedForkserverExecutor(MultiprocessExecutor):
    """Dagster's multiprocess executor; with the forkserver start method, its steps come from the code
    server's shared, preloaded forkserver when there is one for this code (twilio_pipeline.step_forkserver),
    else from a forkserver of the run's own, as Dagster starts it. The run's event log says which."""

    def execute(self, plan_context, execution_plan):
        if self._start_method == "forkserver":
            from dagster._core.events import DagsterEvent, EngineEventData

            yield DagsterEvent.engine_event(plan_context, step_forkserver.attach(), EngineEventData())
        yield from super().execute(plan_context, execution_plan)


@dg.executor(name="multiprocess", config_schema=MULTI_PROC_CONFIG,
             requirements=multiple_process_executor_requirements())
def _multiprocess(init_context) -> SharedForkserverExecutor:
    return executor_from_config(init_context.executor_config)


def executor_from_config(config: dict) -> SharedForkserverExecutor:
    """The executor a run gets from its (processed) `execution: config:`."""
    base = _core_multiprocess_executor_creation(_forkserver_unless_configured(dict(config)))  # Dagster's reading
    executor = SharedForkserverExecutor.__new__(SharedForkserverExecutor)
    executor.__dict__.update(base.__dict__)
    return executor


def multiprocess_executor() -> dg.ExecutorDefinition:
    """Dagster's multiprocess executor, one process per step, started from a forkserver that has the code
    location preloaded (the code server's, shared by its runs, when there is one). Its run config is unchanged
    (`max_concurrent`, `retries`, ...), and a run config that names a `start_method` (`spawn: {}`) still gets it."""
    return _multiprocess


def job_executor(env: dict[str, str] | None = None) -> dg.ExecutorDefinition:
    """The executor of every job, from TWILIO_PIPELINE_EXECUTOR. In-process CLI runs are unaffected
    (execute_in_process always runs in its own process)."""
    settings = executor_settings(env)
    if settings.name == "in_process":
        return dg.in_process_executor
    if settings.name == "multiprocess":
        return multiprocess_executor()
    _require_dagster_celery()
    from dagster_celery import celery_executor

    return celery_executor.configured(
        {"broker": settings.celery_broker, "backend": settings.celery_backend,
         "config_source": dict(CELERY_CONFIG_SOURCE)},
        name="celery",
    )


def worker_app(settings: ExecutorSettings):
    """dagster-celery's worker app (its `execute_plan` task) on our broker and backend."""
    _require_dagster_celery()
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    executor = CeleryExecutor.for_cli(broker=settings.celery_broker, backend=settings.celery_backend,
                                      config_source=dict(CELERY_CONFIG_SOURCE))
    app = make_app(executor.app_args())
    create_task(app)
    return app


def worker_argv(concurrency: int, name: str | None = None, loglevel: str = "INFO") -> list[str]:
    node = name or f"twilio-pipeline-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    return ["worker", f"--concurrency={concurrency}", "-Q", QUEUE, f"--hostname={node}",
            f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"]


def _stop_recording_signals() -> None:
    """The CLI records SIGTERM/SIGINT for its in-process runs (twilio_pipeline.signals, a wakeup-fd pipe). In
    a worker the main process's signals are celery's (SIGTERM = warm shutdown), and every pool process forked
    from it would inherit that pipe and take the worker's SIGTERM for its own, interrupting the step it
    should finish. So the worker's main process stops recording before the pool forks; a step still
    records the signals its own process receives."""
    import signal

    from twilio_pipeline import signals

    if signals._pipe is None:
        return
    signal.set_wakeup_fd(-1)
    for fd in signals._pipe:
        os.close(fd)
    signals._pipe = None
    signals._seen.clear()


def run_worker(concurrency: int, name: str | None = None) -> int:
    """Run a worker in the foreground until SIGTERM/SIGINT. Celery's warm shutdown lets the steps under
    way finish (unstarted prefetched messages go back to the broker) and then the worker exits 0."""
    if concurrency < 1:
        raise SettingsError(f"--concurrency must be at least 1, not {concurrency}")
    settings = executor_settings()
    app = worker_app(settings)
    _stop_recording_signals()
    try:
        app.worker_main(worker_argv(concurrency, name))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
