# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CUDA build of torch also runs on CPUs; these versions come from this machine's local wheel cache.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
DEMO_HOME ?= .demo
CARLOS_PARQUET ?= ../shared/reference/carlos_metrics_database.parquet
PYTEST_ARGS ?=

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Until the offline end-to-end demo lands: import the published signatures and list them.
demo: venv
	@if [ -f "$(CARLOS_PARQUET)" ]; then \
	  $(BIN)/carlos-reg --home $(DEMO_HOME) import carlos "$(CARLOS_PARQUET)" && \
	  $(BIN)/carlos-reg --home $(DEMO_HOME) loras --signed --limit 15 && \
	  $(BIN)/carlos-reg --home $(DEMO_HOME) show "add-detail-xl"; \
	else echo "Put the CARLoS metrics_database.parquet at $(CARLOS_PARQUET) (or set CARLOS_PARQUET=...)"; fi

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache
