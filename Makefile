# Two entry points, each sets everything up first (idempotent, fast when already done):
#   make run   - the main job: run the train-to-serve flow locally (compile.py run-local)
#   make test  - lint and the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test
setup:
	bash scripts/setup.sh
	bash scripts/setup-container-engine.sh

run: setup
	$(PY) compile.py run-local

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest
