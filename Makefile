# aion: the same targets locally and in CI.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# deploy/local/setup.sh installs uv with `pip install --user` when it is missing.
export PATH := $(HOME)/.local/bin:$(PATH)
UV ?= uv
export UV_FROZEN := 1
PYTEST_ARGS ?=

.PHONY: help setup dev test lint typecheck layers protos protos-check pytest unit e2e clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: ## install Python deps (uv, the locked workspace; builds llama-cpp-python once, cached by uv)
	@./deploy/local/setup.sh

dev: setup ## set up, then run the five services with the demo agent until Ctrl-C
	@$(UV) run --no-sync python -m aion.sdk.testing --agents deploy/examples/demo-agent.yaml

test: setup lint typecheck layers protos-check pytest ## everything CI checks

lint: ## ruff
	$(UV) run --no-sync ruff check .

typecheck: ## mypy --strict
	$(UV) run --no-sync mypy libs services tests

layers: ## import-linter: services never import each other
	$(UV) run --no-sync lint-imports

protos: ## regenerate libs/api from protos/
	./deploy/local/protos.sh

protos-check: ## fail when libs/api differs from protos/
	./deploy/local/protos.sh --check

pytest: ## unit tests of every package, then the end-to-end suite
	$(UV) run --no-sync pytest $(PYTEST_ARGS)

unit: ## unit tests only
	$(UV) run --no-sync pytest -m "not e2e" $(PYTEST_ARGS)

e2e: ## end-to-end tests only (the five services as processes, real model)
	$(UV) run --no-sync pytest -m e2e $(PYTEST_ARGS)

clean: ## remove local state (logs), keep caches
	rm -rf .aion .pytest_cache .mypy_cache .ruff_cache
