# Regatta — the README's first two commands are `make up` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PORT ?= 8000
export UV_LINK_MODE ?= copy

.PHONY: help up check test lint typecheck audit pytest sync deps clean stack stack-down bench kind

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

deps: ## Install uv (and, for tests, Postgres and Redis) when missing
	@infra/ensure-test-deps.sh

sync:
	@command -v uv >/dev/null || PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet uv
	@uv sync --frozen --quiet

up: sync ## Run every service in one process on http://127.0.0.1:$(PORT) (SQLite unless DATABASE_URL)
	@PORT=$(PORT) uv run --frozen python infra/embedded.py

check: sync ## The fast loop: lint, types and every test that needs no server or image build (< 3 min)
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .
	uv run --frozen mypy services tests infra
	REGATTA_NO_SERVERS=1 uv run --frozen pytest -q -n auto -m "not postgres and not images"

lint: sync ## ruff check and ruff format --check
	uv run --frozen ruff check .
	uv run --frozen ruff format --check .

typecheck: sync ## mypy --strict over services/, tests/ and infra/
	uv run --frozen mypy services tests infra

audit: sync ## Known vulnerabilities in uv.lock (pip-audit): fails when a fixed release exists
	uv run --frozen python infra/audit.py

pytest: deps sync ## The test suites (they start Postgres and Redis on free ports)
	uv run --frozen pytest

test: lint typecheck audit pytest ## Everything CI runs

stack: deps sync ## Run the local stack in the background: Postgres, Redis, 2 replicas per API, worker, nginx
	uv run --frozen python infra/local/stack.py up

stack-down: ## Stop the local stack
	uv run --frozen python infra/local/stack.py down

bench: deps sync ## The benchmark suite (wrk; prints ratios against baselines measured in the same run)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)
	PYTHONPATH=infra/local:tests/load uv run --frozen python tests/load/bench.py

kind: ## A local kind cluster: add-ons, the four images built and loaded, the chart, helm test (DRY_RUN=1 prints)
	k8s/kind-up.sh

clean: ## Remove the local data directory and caches
	rm -rf data .stack .mypy_cache .pytest_cache .ruff_cache
