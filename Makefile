# Two commands matter: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint types pytest test test-fast demo docs redis-server bench bench-quick bench-soak clean

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

# The suite starts real redis-server processes (fleet tests). On a fresh Debian or Ubuntu
# machine it is installed here, as .ci/run does, so `make test` stays the whole set-up.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "make: installing redis-server (the fleet tests start real ones)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  command -v apt-get >/dev/null 2>&1 \
	    && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
	    && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  command -v redis-server >/dev/null 2>&1 || { \
	    echo "make: the test suite needs redis-server on PATH: install it (apt-get install redis-server, brew install redis)"; \
	    exit 1; }; }

pytest: install redis-server
	$(BIN)/pytest

# The documentation site, into site/; --strict turns every broken link or reference into an error.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint types docs pytest

# The inner loop: every test not marked slow, without coverage (about a minute).
test-fast: install redis-server
	$(BIN)/pytest -m "not slow" --no-cov -q

demo: install
	$(BIN)/callflow demo

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
	rm -rf $(VENV) site .coverage .mypy_cache .pytest_cache .ruff_cache
