# certvault — `make run` sets up and runs the embedded default; `make test` sets up and runs every test.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export CERTVAULT_HOME ?= ./var
export CERTVAULT_PORT ?= 8080

.PHONY: setup run test lint bench drills clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

run: setup
	@bash scripts/run-embedded.sh

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: setup
	bash scripts/ensure-system-packages.sh
	$(MAKE) lint
	$(BIN)/pytest -n 2 --dist loadfile

# Every benchmark at full size; each prints its ratios and writes bench/results/<name>.json.
# `make test` runs each at a tiny size (tests/unit/test_bench_smoke.py).
bench: setup
	@set -e; for script in bench/[!_]*.py; do \
		echo "== $$script"; $(BIN)/python $$script; \
	done

# The fault drills in their long form (tests/faults; `make test` runs each in a short form).
drills: setup
	bash scripts/ensure-system-packages.sh
	CERTVAULT_DRILLS=long $(BIN)/pytest -p no:cacheprovider -s tests/faults

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
