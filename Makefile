# GridHub's front door. `make run` and `make test` install what they need themselves (Python packages with uv,
# Kafka jars with Maven, PostgreSQL and Mosquitto with apt-get) and are safe to run again.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON ?= python3

# Recursive (=) so that a uv installed by the `deps` recipe is found by the recipes after it.
UV = $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PY = $(UV) run --frozen --no-sync

.PHONY: help deps deploy-tools stack-up stack-down stack-status run test test-unit lint typecheck imports contracts bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

deps: .venv/.synced ## install the Python packages (uv, from the lock file)
.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/uv" ] || { \
	  echo "installing uv from PyPI"; \
	  python3 -m pip install --user --quiet uv || python3 -m pip install --user --quiet --break-system-packages uv; }
	$(UV) sync --frozen
	@touch $@

# The offline validators of docker-compose.yml and k8s/ (tests/contract/test_deploy_manifests.py): kustomize built
# from the Go module proxy into .bin/, and Debian's docker-compose for `config -q` (it needs no Docker engine).
KUSTOMIZE_VERSION := v5.8.1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

deploy-tools: .bin/.kustomize-$(KUSTOMIZE_VERSION) ## kustomize and docker-compose: offline checks of compose and k8s/
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing docker-compose (Debian)"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; }
.bin/.kustomize-$(KUSTOMIZE_VERSION):
	GOBIN=$(CURDIR)/.bin GOTOOLCHAIN=local go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	@rm -f .bin/.kustomize-* && touch $@

stack-up: deps ## start Kafka (KRaft), PostgreSQL and Mosquitto on 127.0.0.1 (idempotent)
	$(PY) python -m stack up

stack-down: deps ## stop exactly the processes the stack started
	$(PY) python -m stack down

stack-status: deps ## show what runs, where, and its log
	$(PY) python -m stack status

run: deps ## the stack, the four services and a meter simulator until Ctrl-C (python -m stack.dev.run)
	$(PY) python -m stack.dev.run

lint: deps ## ruff lint and format check
	$(PY) ruff check .
	$(PY) ruff format --check .

typecheck: deps ## mypy --strict on libs/, services/ and ops/
	$(PY) mypy

imports: deps ## the import contract: no service imports another, libs never import services
	$(PY) lint-imports

contracts: deps ## regenerate the committed contracts from code
	$(PY) python -m libs.events.schemas
	$(PY) python -m services.collection.contracts
	$(PY) python -m services.readside.contracts
	$(PY) python -m services.workorders.contracts

test-unit: deps deploy-tools ## unit and contract tests only (no stack needed)
	$(PY) pytest tests/unit tests/contract

test: lint typecheck imports deploy-tools stack-up ## everything: lint, types, import contract, unit, contract, integration tests
	$(PY) pytest

bench: stack-up ## every benchmark, ~15 min on 2 cores; GRIDHUB_BENCH_SCALE=3 for a larger run; report in bench/results/
	$(PY) python -m bench

clean: stack-down ## stop the stack and delete its data
	rm -rf .stack
