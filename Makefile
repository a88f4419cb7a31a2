# aion: the same targets locally and in CI.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# deploy/local/setup.sh installs uv with `pip install --user` when it is missing.
export PATH := $(HOME)/.local/bin:$(PATH)
UV ?= uv
export UV_FROZEN := 1
PYTEST_ARGS ?=
# Caches outside the repo, so a fresh clone (CI) reuses them: mypy checks each cached
# module's hash when its mtime differs, ruff keys its cache by content.
export MYPY_CACHE_DIR ?= $(HOME)/.cache/aion/mypy
export RUFF_CACHE_DIR ?= $(HOME)/.cache/aion/ruff

.PHONY: help setup dev test lint typecheck layers protos protos-check pytest unit e2e clean \
	infra-build infra-up infra-down infra-status cluster-up cluster-down cluster-env \
	bench-operator bench-agent bench-router bench-executor bench-install

help: ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: ## install Python deps (uv, the locked workspace; builds llama-cpp-python once, cached by uv)
	@./deploy/local/setup.sh

dev: setup infra-up ## set up, start Kafka/Postgres/MinIO/Jaeger/Prometheus, run the five services with the demo agent (and the operator, after make cluster-up) until Ctrl-C
	@kubeconfig=$$($(INFRA) env cluster | sed -n 's/^export KUBECONFIG=//p'); \
	if [ -n "$$kubeconfig" ]; then \
	  echo "local cluster is up: installing the CRDs and GpuPools, and starting the operator"; \
	  eval "$$($(INFRA) env cluster)" && kubectl apply -f charts/aion/crds/ -f deploy/examples/gpupools.yaml >/dev/null || exit 1; \
	fi; \
	$(UV) run --no-sync python -m aion.infra.devstack --agents deploy/examples/demo-agent.yaml $${kubeconfig:+--kubeconfig "$$kubeconfig"}

test: setup lint typecheck layers protos-check infra-build images pytest ## everything CI checks

lint: ## ruff: the formatter (check only; `uv run ruff format .` applies it) and the linter
	$(UV) run --no-sync ruff format --check .
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

INFRA := $(UV) run --no-sync python -m aion.infra

infra-build: ## build the infrastructure binaries once (cached by version in ~/.cache/aion)
	./deploy/local/build.sh all

infra-up: setup ## start Kafka, Postgres, MinIO, Jaeger and Prometheus on 127.0.0.1 (reuses what runs)
	@$(INFRA) up infra

infra-down: ## stop Kafka, Postgres, MinIO, Jaeger and Prometheus
	@$(INFRA) down infra

infra-status: ## what runs, and where each component logs
	@$(INFRA) status all

cluster-up: setup ## start etcd, the Kubernetes control plane, kwok GPU node pools, two real nodes (pool workers) and the image registry
	@$(INFRA) up cluster
	@echo 'use it: eval "$$(make -s cluster-env)"; kubectl get nodes -L cloud.google.com/gke-nodepool'

cluster-down: ## stop the local cluster
	@$(INFRA) down cluster

cluster-env: ## export lines (KUBECONFIG, PATH with kubectl and helm) for the local cluster
	@$(INFRA) env cluster

.PHONY: images
images: setup ## build every service's image with buildah (its Dockerfile, Debian base), push to the local registry, write deploy/local/values-images.yaml
	@$(UV) run --no-sync python -m aion.infra.images build

bench-operator: setup infra-build ## AGENTS=N (default 200) Agents until Ready vs the raw-client floor: ratio_to_floor, peak_rss_mb, cpu_s, api_requests (one JSON object)
	@AGENTS=$${AGENTS:-200} $(UV) run --no-sync python services/operator/bench/operator_bench.py

bench-agent: setup infra-up ## tasks/s and added latency through gateway->agent->executor, outbox vs raw produce; BENCH_AGENT_* knobs (one JSON object)
	@$(UV) run --no-sync python tests/bench/bench_agent.py

bench-router: setup infra-up ## routing decisions/s and p99 (router Decide + load-aware choice), seconds from a saturated pool to the first spilled task; BENCH_ROUTER_* knobs (one JSON object)
	@$(UV) run --no-sync python tests/bench/bench_router.py

bench-install: setup infra-build infra-up ## make images (cold, then warm), helm install to Ready, an applied CPU Agent to its first token; image sizes (one JSON object)
	@$(UV) run --no-sync python tests/bench/bench_install.py

bench-executor: setup ## embeddings and generation vs the raw models and llama_cpp.server; BENCH_* knobs (one JSON object)
	@$(UV) run --no-sync python services/executor/bench/bench_executor.py

.PHONY: bench-knowledge
bench-knowledge: setup infra-build ## ingest chunks/s vs raw embeddings/s, search p50/p95 (BENCH_KNOWLEDGE_CHUNKS, 10k), recall@5/nDCG@10 of sparse, dense, hybrid on fitz-gov; BENCH_KNOWLEDGE_* knobs (one JSON object)
	@$(UV) run --no-sync python services/knowledge/bench/bench_knowledge.py

clean: ## remove local state (logs), keep caches
	rm -rf .aion .pytest_cache .mypy_cache .ruff_cache
