# lunarchive — the two commands: `make demo` and `make test`.
# Both create the virtual environment on first use; nothing else needs installing by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# the temporary Prefect API the CLI starts: 20 s is too short on a loaded small machine
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 300

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 12))' || \
	  { echo "lunarchive needs Python >= 3.12 (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make demo: generate the demo lunar archive, run the whole pipeline into ./lunarchive-data
demo: $(STAMP)
	$(BIN)/lunarchive demo --store ./lunarchive-data

## make lint: ruff, formatting, mypy, import contracts
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PYTHONPATH=.import-root $(BIN)/lint-imports

## make test: install, start SeaweedFS + PostgreSQL/PostGIS, lint, run the suite, stop the services
test: $(STAMP) lint
	$(BIN)/python infra/services.py run --state .services -- $(BIN)/python -m pytest tests --ignore=tests/benchmarks

## make bench: the benchmarks (not part of make test); figures in the README
bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench_cubes --size-mb 288
	$(BIN)/python -m tests.benchmarks.bench_cubes --memory-limit-mib 640
	$(BIN)/python -m tests.benchmarks.bench_catalog --items 100000 --store folder
	$(BIN)/python -m tests.benchmarks.bench_sync --items 20000 --chunks 100 --json bench-sync.json

clean:
	rm -rf $(VENV) .prefect .services .mypy_cache .ruff_cache .pytest_cache lunarchive.egg-info
