# albert-spp: `make run` starts everything, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install install-dev run sim test lint bench lock audit docs pin-images clean

# Every package comes from a lock file of requirements/ (make lock), each file checked against its hash.
$(VENV)/.run-installed: pyproject.toml requirements/run.lock
	@$(PYTHON) -c 'import sys; sys.exit("albert-spp needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r requirements/run.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.run-installed requirements/dev.lock
	$(BIN)/python -m pip install -q --require-hashes -r requirements/dev.lock
	touch $@

install: $(VENV)/.run-installed
install-dev: $(VENV)/.dev-installed

## run: Redis (configured or our own), the simulator (unless LLM_TABLE is set), one worker per model, the API
run: install
	$(BIN)/python -m stack

## sim: the vLLM simulator alone, on 127.0.0.1:$SIM_PORT (8081)
sim: install
	$(BIN)/python -m sim --port $${SIM_PORT:-8081}

## lock: requirements/*.lock from pyproject.toml, for every platform and Python 3.11+ (needs PyPI)
LOCK := $(BIN)/uv pip compile pyproject.toml --universal --generate-hashes --python-version 3.11 --quiet
lock: install-dev
	$(LOCK) --extra api --output-file requirements/api.lock
	$(LOCK) --extra worker --output-file requirements/worker.lock
	$(LOCK) --extra run --output-file requirements/run.lock
	$(LOCK) --extra dev --output-file requirements/dev.lock

## pin-images: the third-party images of the Dockerfiles and docker-compose.yml re-pinned to their tags' digests
pin-images: install
	$(BIN)/python -m deploy.pin_images

## docs: docs/CONFIGURATION.md from the descriptions of shared/settings.py
docs: install
	$(BIN)/python -m shared.settings > docs/CONFIGURATION.md

## audit: known vulnerabilities of every locked package (pip-audit; skipped, saying why, without PyPI's JSON API)
audit: install-dev
	$(BIN)/python -m pytest -q -p no:cacheprovider -rs tests/unit/test_audit.py

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
