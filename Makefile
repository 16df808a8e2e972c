# Every target sets itself up: a fresh clone needs only Python 3.11+, Node 20 and npm.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .venv-tools
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed
STAMP_TOOLS := $(TOOLS)/.installed

.PHONY: setup demo test lint typecheck contracts contracts-check slither gas bench clean

setup: $(STAMP_PY) $(STAMP_NODE)

$(STAMP_PY): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(STAMP_TOOLS): tools/slither-constraints.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet -c tools/slither-constraints.txt slither-analyzer
	touch $@

# The demo deploys a fresh escrow, so it starts from a fresh database every time.
demo: setup
	rm -f var/demo.db var/demo.db-wal var/demo.db-shm var/demo.db.evm.sqlite
	$(BIN)/settle demo --db sqlite:///var/demo.db

contracts: setup
	$(BIN)/settle contracts build

contracts-check: setup
	$(BIN)/settle contracts check

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

slither: setup $(STAMP_TOOLS)
	$(TOOLS)/bin/python scripts/slither_check.py

gas: setup
	$(BIN)/settle gas-report

test: setup contracts-check lint slither
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) node_modules .pytest_cache .mypy_cache .ruff_cache
