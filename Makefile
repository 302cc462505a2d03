# Two commands matter: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint types pytest test test-fast demo bench bench-quick bench-soak clean settings-table

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

types: install
	$(BIN)/mypy --strict callflow

pytest: install
	$(BIN)/pytest

test: lint types pytest

# The inner loop: every test not marked slow, without coverage (about a minute).
test-fast: install
	$(BIN)/pytest -m "not slow" --no-cov -q

demo: install
	$(BIN)/callflow demo

# The settings page is generated from the one table in callflow/settings.py (a test checks it).
settings-table: install
	$(BIN)/python -c "from callflow.settings import settings_markdown as m; print(m(), end='')" \
		> docs/reference/settings-table.md

# Benchmarks: three processes on loopback (see benchmarks/harness.py); benchmark-only packages
# (msgraph-sdk, matplotlib, uvloop, py-spy) go into .venv here, never into the runtime deps.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): benchmarks/requirements-bench.txt | $(STAMP)
	$(BIN)/python -m pip install -q -r benchmarks/requirements-bench.txt
	touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.harness

bench-quick: install $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.harness --quick

# 100,000 calls with operations through one worker (several minutes; see benchmarks/SOAK.md).
bench-soak: install
	$(BIN)/python -m benchmarks.bench_soak

clean:
	rm -rf $(VENV) .coverage .mypy_cache .pytest_cache .ruff_cache
