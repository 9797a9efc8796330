# certvault — `make run` sets up and runs the embedded default; `make test` sets up and runs every test.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export CERTVAULT_HOME ?= ./var
export CERTVAULT_PORT ?= 8080

.PHONY: setup run test lint bench clean

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

bench: setup
	$(BIN)/python bench/archive.py
	$(BIN)/python bench/release.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/enroll.py
	$(BIN)/python bench/kdf.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/agent_decrypt.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
