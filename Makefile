# flashsale: everyday commands. `make` alone lists them.
#
# Services: `make services` makes Redis and Postgres answer at FLASHSALE_REDIS_URL and
# FLASHSALE_DATABASE_URL (and the FLASHSALE_TEST_* URLs): existing ones are used,
# otherwise private instances are started under .var/ (see scripts/services.sh).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
SERVE_ARGS ?=
RECONCILE_ARGS ?=
CHAOS_ARGS ?=

# Everything make starts runs locally: the public development secret is allowed
# (serve and reconcile refuse it otherwise; see README "Settings").
export FLASHSALE_ENV ?= development

# Re-install only when the packaging metadata changes.
PACKAGING := $(wildcard setup.cfg pyproject.toml setup.py)

.DEFAULT_GOAL := help
.PHONY: help install install-bench services services-stop browser cluster cluster-stop \
	migrate serve reconcile demo test chaos bench bench-full swarm lint clean

help: ## list the targets
	@echo "flashsale make targets:"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "variables: PYTHON=$(PYTHON)  PYTEST_ARGS='...'  SERVE_ARGS='...'  RECONCILE_ARGS='...'"

# --- environment -------------------------------------------------------------------
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-dev: $(PACKAGING) | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# bench extras are a superset of dev, so they satisfy the dev stamp too.
$(VENV)/.installed-bench: $(PACKAGING) | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,bench]'
	@touch $@ $(VENV)/.installed-dev

install: $(VENV)/.installed-dev ## create .venv and install the project with dev extras

install-bench: $(VENV)/.installed-bench ## as install, plus the bench extras (locust, matplotlib)

services: ## make Redis and Postgres answer (start private ones under .var if needed)
	@bash scripts/services.sh

browser: ## make a Chromium available for the browser tests (Debian's, installed as root)
	@bash scripts/browser.sh

services-stop: ## stop the private Redis/Postgres under .var (never the system ones)
	@bash scripts/services.sh stop

cluster: ## start a local Redis Cluster (3 masters + 3 replicas, .var/cluster); prints its URL
	@bash scripts/cluster.sh

cluster-stop: ## stop the local Redis Cluster
	@bash scripts/cluster.sh stop

# --- running -----------------------------------------------------------------------
migrate: install services ## create the database if missing and apply migrations/
	$(BIN)/flashsale migrate

serve: install services ## run the gateway (SERVE_ARGS='--workers 2')
	$(BIN)/flashsale serve $(SERVE_ARGS)

reconcile: install services ## run the reconciler and hold-expiry sweeper
	$(BIN)/flashsale reconcile $(RECONCILE_ARGS)

demo: install services ## migrate, seed, run a simulated flash sale and report
	$(BIN)/flashsale demo

# --- checking ----------------------------------------------------------------------
test: install services browser ## run pytest against real Redis/Postgres (PYTEST_ARGS='-x -k ...')
	$(BIN)/pytest $(PYTEST_ARGS)

chaos: install services ## fault scenarios against real processes; prints the outcome table (~4 min)
	$(BIN)/python -m chaos $(CHAOS_ARGS)

lint: install ## ruff check
	$(BIN)/ruff check .

bench: install-bench services ## quick comparison benchmarks (a few minutes)
	$(BIN)/python -m benchmarks --quick

bench-full: install-bench services ## full benchmarks (long)
	$(BIN)/python -m benchmarks --full

swarm: install-bench services ## Locust swarm against a local gateway
	$(BIN)/python -m benchmarks.swarm

clean: ## stop private services, remove .venv, .var and caches
	-@bash scripts/cluster.sh stop
	-@bash scripts/services.sh stop
	rm -rf $(VENV) .var build dist .pytest_cache .ruff_cache .hypothesis .coverage htmlcov
	find . -name '*.egg-info' -prune -exec rm -rf {} +
	find . -name __pycache__ -prune -exec rm -rf {} +
