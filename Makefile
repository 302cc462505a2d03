# Two commands matter: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint types pytest test test-fast test-pythons dist demo docs system-tools bench bench-quick bench-soak clean settings-table
.PHONY: fleet-demo

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

# The suite starts real redis-server and haproxy processes (fleet and deploy tests). On a fresh
# Debian or Ubuntu machine they are installed here, as .ci/run does, so `make test` stays the
# whole set-up.
system-tools:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null 2>&1 || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  echo "make: installing$$missing (the tests start real ones)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  command -v apt-get >/dev/null 2>&1 \
	    && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
	    && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  command -v redis-server >/dev/null 2>&1 && { command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null 2>&1 || { \
	    echo "make: the tests need redis-server and haproxy: install them (apt-get install redis-server haproxy)"; \
	    exit 1; }; \
	fi

pytest: install system-tools
	$(BIN)/pytest

# The documentation site, into site/; --strict turns every broken link or reference into an error.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint types docs pytest test-pythons

# The inner loop: every test not marked slow, without coverage (about a minute).
test-fast: install system-tools
	$(BIN)/pytest -m "not slow" --no-cov -q

# The fast suite on the other Pythons users run (3.11 is .venv's). Each gets .venv-3.X, built
# from python3.X on PATH or pyenv's install; a missing interpreter stops with a message.
OTHER_PYTHONS := 3.12 3.13

test-pythons: $(foreach v,$(OTHER_PYTHONS),test-python-$(v))

test-python-%: .venv-%/.installed system-tools
	.venv-$*/bin/pytest -m "not slow" --no-cov -q -p no:cacheprovider

.PRECIOUS: .venv-%/.installed
.venv-%/.installed: pyproject.toml
	@py=; for c in $$(command -v python$*) \
		$$(ls -d $(HOME)/.pyenv/versions/$*.*/bin/python$* 2>/dev/null | sort -V | tail -1); do \
		v=$$("$$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
		if [ "$$v" = "$*" ]; then py=$$c; break; fi; \
	done; \
	if [ -z "$$py" ]; then \
		echo "make test-pythons: Python $* not found (python$* on PATH," \
			"or $(HOME)/.pyenv/versions/$*.*): install it, e.g. pyenv install $*" >&2; \
		exit 1; \
	fi; \
	echo "Python $*: $$py"; \
	"$$py" -m venv --clear .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip
	.venv-$*/bin/python -m pip install -q -e '.[dev]'
	touch $@

# sdist and wheel of the callflow-graph distribution, in dist/.
dist: install
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

demo: install
	$(BIN)/callflow demo

# A three-worker fleet behind HAProxy on loopback, one worker stopped mid-traffic, no call lost
# (deploy/fleet_demo.py; the test suite runs it too).
fleet-demo: install system-tools
	$(BIN)/python deploy/fleet_demo.py

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
	rm -rf $(VENV) .venv-* dist site .coverage .mypy_cache .pytest_cache .ruff_cache
