# Two commands on a fresh machine with python3 and make:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint types pytest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python demo/farm.py

test: lint types pytest

lint: $(STAMP)
	$(BIN)/ruff check fsqueue watchdog tests bench demo
	$(BIN)/ruff format --check fsqueue watchdog tests bench demo

types: $(STAMP)
	$(BIN)/mypy --strict fsqueue watchdog/fsqueue_watchdog

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-farm .mypy_cache .pytest_cache .ruff_cache
