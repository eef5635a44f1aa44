"""How runs start their steps (twilio_pipeline.worker): the multiprocess executor forks each step from a
forkserver that imported the code location and the instance's classes once, unless the run config names
another start method. A real run through it is in reliability/test_interruption.py (a run terminated as
the UI does) and in test_lifecycle.py (every run of the deployment)."""

from __future__ import annotations

import shutil

from dagster._core.definitions.executor_definition import MULTI_PROC_CONFIG

from twilio_pipeline.step_preload import instance_modules, preload
from twilio_pipeline.worker import SharedForkserverExecutor, executor_from_config, job_executor
from twilio_pipeline_tests.deployment.harness import DEPLOY


def _executor(run_config: dict) -> SharedForkserverExecutor:
    """The executor a run gets from its run config (`execution: config: ...`)."""
    from dagster._config import process_config

    processed = process_config(MULTI_PROC_CONFIG.config_type, run_config)
    assert processed.success, processed.errors
    return executor_from_config(processed.value)


def test_steps_are_forked_from_a_preloaded_forkserver_unless_the_run_config_says_otherwise():
    assert job_executor({}).name == "multiprocess"
    default = _executor({})
    assert isinstance(default, SharedForkserverExecutor)
    assert default._start_method == "forkserver"
    assert default._explicit_forkserver_preload == ["twilio_pipeline.step_preload"]
    spawn = _executor({"start_method": {"spawn": {}}, "max_concurrent": 2})
    assert spawn._start_method == "spawn" and spawn._max_concurrent == 2


def test_the_preload_imports_the_code_location_and_the_production_instance_classes(tmp_path, monkeypatch):
    shutil.copy(DEPLOY / "dagster.prod.yaml", tmp_path / "dagster.yaml")
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "5432" if name.endswith("PORT") else "unused")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    modules = instance_modules(str(tmp_path))
    assert {"dagster_postgres", "twilio_pipeline.defs.run_coordinator"} <= set(modules)
    assert preload() == []  # nothing left for a step process to import
