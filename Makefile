# The README's commands. Both create .venv when it is missing and skip work already done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RABBITMQ_SERVER := /usr/lib/rabbitmq/bin/rabbitmq-server

.PHONY: test lint brokers infra demo clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## What the demo needs before it starts: the Kafka jars and the ActiveMQ Artemis distribution from
## Maven Central, nats-server built from the Go module proxy (all cached under FLOWSCOPE_HOME), and
## Debian's rabbitmq-server, installed when it is missing (as root; otherwise the command to run is
## named) unless FLOWSCOPE_RABBITMQ_URL names a broker to use.
brokers: $(STAMP)
	$(BIN)/flowscope kafka install
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
	$(BIN)/flowscope nats install
	$(BIN)/flowscope artemis install

## Everything, Jaeger built from the Go module proxy included (once; cached under FLOWSCOPE_HOME),
## and Debian's PostgreSQL server (the shared store), installed when it is missing (as root;
## otherwise the command to run is named) unless FLOWSCOPE_POSTGRES_URL names a server to use.
infra: brokers
	$(BIN)/flowscope jaeger install
	@if [ -z "$$FLOWSCOPE_POSTGRES_URL" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "infra: installing Debian's postgresql (apt-get)"; \
	    apt-get update -qq \
	      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else \
	    echo "infra: postgres: Debian's PostgreSQL server is not installed" \
	         "(no /usr/lib/postgresql/<version>/bin/initdb); run: sudo apt-get install -y postgresql" >&2; \
	    exit 1; \
	  fi; \
	fi
	$(BIN)/flowscope postgres install

## The whole stack with demo traffic, until Ctrl-C: Kafka, RabbitMQ, NATS, Jaeger, the collector, the
## demo services, the load generator and the dashboard; prints their URLs. On the first run
## Jaeger is built in the background while the rest starts, and trace export joins when it is up.
demo: brokers
	$(BIN)/flowscope demo --scenario incident

lint: $(STAMP)
	$(BIN)/ruff check .

## Unit tests, then integration tests against the real Kafka broker and the real Jaeger.
test: infra lint
	$(BIN)/pytest

clean-venv:
	rm -rf $(VENV)
