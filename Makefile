# Two commands matter: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint types pytest test test-fast test-pythons dist demo bench bench-quick bench-soak clean

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

test: lint types pytest test-pythons

# The inner loop: every test not marked slow, without coverage (about a minute).
test-fast: install
	$(BIN)/pytest -m "not slow" --no-cov -q

# The fast suite on the other Pythons users run (3.11 is .venv's). Each gets .venv-3.X, built
# from python3.X on PATH or pyenv's install; a missing interpreter stops with a message.
OTHER_PYTHONS := 3.12 3.13

test-pythons: $(foreach v,$(OTHER_PYTHONS),test-python-$(v))

test-python-%: .venv-%/.installed
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
	rm -rf $(VENV) .venv-* dist .coverage .mypy_cache .pytest_cache .ruff_cache
