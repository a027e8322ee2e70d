# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CUDA build of torch also runs on CPUs; these versions come from this machine's local wheel cache.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
DEMO_HOME ?= .demo
PYTEST_ARGS ?=

.PHONY: venv demo test lint mutate clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: venv
	$(BIN)/carlos-reg demo --dir $(DEMO_HOME)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff's formatter and linter, configured in pyproject.toml ([tool.ruff]); checks, never rewrites.
lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# Mutation testing of the modules where meaning lives (slow; not in CI): see docs/testing.md.
# MUTATE_GROUPS picks groups (default all), MUTATE_TIMEOUT bounds each group in seconds.
MUTATE_GROUPS ?=
mutate: venv
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[mutate]'
	$(BIN)/python tools/mutate.py $(MUTATE_GROUPS)

clean:
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache .mutate
