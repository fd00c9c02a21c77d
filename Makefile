# The README's commands. Both create .venv when it is missing and skip work already done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint infra demo clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Resolve Kafka from Maven Central and build Jaeger once (cached under FLOWSCOPE_HOME).
infra: $(STAMP)
	$(BIN)/flowscope kafka install
	$(BIN)/flowscope jaeger install

## The whole stack with demo traffic, until Ctrl-C: Kafka, Jaeger, the collector, the demo
## services, the load generator and the dashboard; prints their URLs.
demo: infra
	$(BIN)/flowscope demo --scenario incident

lint: $(STAMP)
	$(BIN)/ruff check .

## Unit tests, then integration tests against the real Kafka broker and the real Jaeger.
test: infra lint
	$(BIN)/pytest

clean-venv:
	rm -rf $(VENV)
