# Two commands on a fresh machine with python3 and make:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint types pytest chaos soak bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Benchmark-only extras (peer queues, matplotlib): never needed by the library or the tests.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

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

# The chaos harness (docs/reliability.md): a few minutes of faults; soak is the long profile.
chaos: $(STAMP)
	$(BIN)/python tests/chaos/harness.py --profile chaos

soak: $(STAMP)
	$(BIN)/python tests/chaos/harness.py --profile soak

# Benchmarks against peers and the filesystem floor (docs/benchmarks.md).
bench: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --profile full

bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/suite.py --profile quick

clean:
	rm -rf $(VENV) demo-farm .mypy_cache .pytest_cache .ruff_cache
