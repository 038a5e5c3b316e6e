# Two commands from a fresh clone: `make demo` and `make test`.
# Both create (or reuse) .venv and install the pinned set (constraints.txt), CPU torch first.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A CPU build here; on a GPU machine set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: help install demo test lint typecheck unit integration e2e clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), \
		"Python 3.11 or 3.12 is needed, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project (pinned)

demo: install ## Run the whole loop on embedded defaults (./.mlops)
	$(BIN)/mlops demo

lint: install ## ruff (lint + format check)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## mypy
	$(BIN)/mypy

test: lint typecheck ## Lint, type-check and run every test (needs Postgres and Redis)
	$(BIN)/pytest --cov --cov-report=term $(PYTEST_ARGS)

unit: install ## Unit tests only
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

clean: ## Remove the demo state (./.mlops) and caches; keeps .venv
	rm -rf .mlops .pytest_cache .mypy_cache .ruff_cache .coverage

.PHONY: up down
up: ## Start the production stack (docker compose; .env with new secrets the first time)
	@test -f .env || sh infra/init-env.sh
	docker compose up -d --build --wait --wait-timeout 600

down: ## Stop the production stack (volumes kept: `docker compose down -v` deletes the data)
	docker compose down
