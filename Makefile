# albert-spp: `make run` starts everything, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install install-dev run sim test lint bench clean

$(VENV)/.run-installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("albert-spp needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.run-installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.run-installed
install-dev: $(VENV)/.dev-installed

## run: Redis (configured or our own), the simulator (unless LLM_TABLE is set), one worker per model, the API
run: install
	$(BIN)/python -m stack

## sim: the vLLM simulator alone, on 127.0.0.1:$SIM_PORT (8081)
sim: install
	$(BIN)/python -m sim --port $${SIM_PORT:-8081}

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: lint, type-check, then unit and integration tests
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

## bench: the benchmarks of bench/, printing ratios against baselines of the same run
bench: install-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache
