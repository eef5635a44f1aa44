# Every target sets itself up: a fresh machine needs only Python 3.11 and pip.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export DAGSTER_HOME ?= $(CURDIR)/.dagster

.PHONY: demo test test-fast ui bench install clean-data

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "python3.11 not found; set PYTHON=..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,celery]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP) $(DAGSTER_HOME)/dagster.yaml

# The CLI, make demo and make ui share one instance: the repo's dagster.yaml under .dagster/.
$(DAGSTER_HOME)/dagster.yaml:
	@mkdir -p $(DAGSTER_HOME)
	@ln -sf $(CURDIR)/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: install
	$(BIN)/twilio-pipeline demo

# Three test processes: most suites wait on subprocesses, sandboxes and daemons, so 2 cores run three
# at once well (every test makes its own databases, sandboxes, instances and ports). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 3

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The developer loop (under 2 minutes): everything but the tests marked slow - crash, fault, deployment and celery
# suites, real-process CLI/dg/dagster runs, the PostgreSQL/MariaDB variants (database tests run once, on SQLite).
test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow"

ui: install
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $${PORT:-3000}

bench: install
	$(BIN)/python -m twilio_pipeline_bench

clean-data:
	rm -rf .data .dagster/storage .dagster/history .dagster/schedules
