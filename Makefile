# The README's commands. Both create .venv when it is missing and skip work already done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RABBITMQ_SERVER := /usr/lib/rabbitmq/bin/rabbitmq-server

.PHONY: test lint infra demo clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Resolve Kafka from Maven Central and build Jaeger once (cached under FLOWSCOPE_HOME); install
## Debian's rabbitmq-server when it is missing (as root; otherwise say the command to run), unless
## FLOWSCOPE_RABBITMQ_URL names a broker to use.
infra: $(STAMP)
	$(BIN)/flowscope kafka install
	$(BIN)/flowscope jaeger install
	@if [ -z "$$FLOWSCOPE_RABBITMQ_URL" ] && [ ! -x $(RABBITMQ_SERVER) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "infra: installing Debian's rabbitmq-server (apt-get)"; \
	    apt-get update -qq \
	      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null; \
	  else \
	    echo "infra: rabbitmq: Debian's rabbitmq-server is not installed" \
	         "($(RABBITMQ_SERVER) is missing); run: sudo apt-get install -y rabbitmq-server" >&2; \
	    exit 1; \
	  fi; \
	fi
	$(BIN)/flowscope rabbitmq install

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
