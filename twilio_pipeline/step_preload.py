"""What the multiprocess executor's forkserver imports once per run (twilio_pipeline.worker), so that a step
process forked from it starts without importing anything: the code location, the modules its steps import
when they run, Dagster's step execution, and the classes the Dagster instance is built from (its storage,
run coordinator, launcher and compute logs, as DAGSTER_HOME's dagster.yaml names them).

Imports only: every step process inherits this process's state, so nothing here opens a connection, a file
it keeps or a thread. A module that cannot be imported is left to the step (the forkserver ignores it too).
"""

from __future__ import annotations

import importlib
import os

CODE_LOCATION = (
    "twilio_pipeline.definitions",
    "twilio_pipeline.outbound",
    "twilio_pipeline.inbound",
    "twilio_pipeline.follow_ups",
    "twilio_pipeline.signals",
    "pandas",  # the plan step reads recipients with it; the code location imports it only there
)
DAGSTER_STEP = (
    "dagster._core.execution.api",
    "dagster._core.execution.plan.execute_plan",
    "dagster._core.instance.factory",
    # What a step still imported on first use (py-spy of a burst): the secrets loader of the instance, the
    # filesystem IO manager's path library, and the PostgreSQL driver SQLAlchemy loads at the first engine.
    "dagster._core.secrets.env_file",
    "upath",
    "upath.implementations.local",
    "psycopg2",
    "psycopg2.extensions",
    "psycopg2.extras",
)


def instance_modules(dagster_home: str | None) -> list[str]:
    """The modules of the classes the instance in `dagster_home` is configured with (read, not built)."""
    if not dagster_home:
        return []
    from dagster._core.instance.ref import InstanceRef

    try:
        ref = InstanceRef.from_dir(dagster_home)
    except Exception:  # an unreadable dagster.yaml is the step's to report, with its own message
        return []
    return sorted({data.module_name for data in ref if getattr(data, "module_name", None)})


def preload() -> list[str]:
    """Import everything above; returns the modules that could not be imported."""
    missing = []
    for name in (*CODE_LOCATION, *DAGSTER_STEP, *instance_modules(os.environ.get("DAGSTER_HOME"))):
        try:
            importlib.import_module(name)
        except Exception:
            missing.append(name)
    return missing


preload()
