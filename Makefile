# heartbeat-bridge: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

# Debian packages the test suite starts for real (binary:package).
DEB_TOOLS := prometheus:prometheus promtool:prometheus \
             prometheus-alertmanager:prometheus-alertmanager amtool:prometheus-alertmanager \
             prometheus-pushgateway:prometheus-pushgateway wrk:wrk chromium:chromium \
             openssl:openssl haproxy:haproxy kubectl:kubectl

.PHONY: run test test-fast install install-postgres install-test install-bench deb-deps postgres bench lint clean kubernetes

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

# PostgreSQL's driver, the `postgres` extra (pip install 'heartbeat-bridge[postgres]')
$(VENV)/.installed-postgres: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[postgres]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-postgres

$(VENV)/.installed-bench: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed $(VENV)/.installed-postgres

install: $(VENV)/.installed
install-postgres: $(VENV)/.installed-postgres
install-test: $(VENV)/.installed-test
install-bench: $(VENV)/.installed-bench

## make run: a development bridge on $(HOST):$(PORT), SQLite under ./var/
run: install
	mkdir -p var
	HEARTBEAT_BIND=$${HEARTBEAT_BIND:-$(HOST):$(PORT)} \
	HEARTBEAT_TOKEN=$${HEARTBEAT_TOKEN:-dev-fleet-token} \
	HEARTBEAT_ADMIN_TOKEN=$${HEARTBEAT_ADMIN_TOKEN:-dev-admin-token} \
	HEARTBEAT_STATUS_PUBLIC=$${HEARTBEAT_STATUS_PUBLIC:-true} \
	$(BIN)/heartbeat-bridge serve

## Install the Debian packages the suite needs, only those missing.
deb-deps:
	@missing=""; for pair in $(DEB_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## PostgreSQL at 127.0.0.1:5432 backs the shared-store tests; start it if it is down.
postgres:
	@if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
	  echo "starting PostgreSQL"; \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -n1) main start || true; \
	fi

## make lint: ruff (style, import order) and mypy (types), as configured in pyproject.toml.
lint: install-test
	$(BIN)/ruff check
	$(BIN)/mypy

test: install-test deb-deps postgres
	$(MAKE) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make test-fast: the tests that start no program and need no PostgreSQL server (markers
## `live` and `postgresql`, kept true by tests/conftest.py); `make test` runs all.
test-fast: install-test
	$(BIN)/python -m pytest -m "not live and not postgresql" -q $(PYTEST_ARGS)

bench: install-bench deb-deps postgres
	$(BIN)/python -m bench $(BENCH_ARGS)

## make kubernetes: regenerate deploy/kubernetes's PrometheusRule and dashboard ConfigMap from
## prometheus/rules.yml and grafana/dashboards/heartbeat.json (run after changing either).
kubernetes:
	$(PYTHON) deploy/kubernetes/generate.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache
