# Two commands do all the set-up: `make run` (the local flywheel) and `make test` (the tests).
# Both create the virtual environment .venv from scratch when it is missing or stale.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# CPU torch wheels may lie on disk (offline machines); pip looks there first when the folder exists.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: run test down status venv bench lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(FIND_LINKS) -e '.[dev]'
	touch $@

run: venv
	$(VENV)/bin/flywheel up
	$(VENV)/bin/flywheel status
	@echo "The stack runs in the background; 'make down' (or .venv/bin/flywheel down) stops it."

down: venv
	$(VENV)/bin/flywheel down

status: venv
	$(VENV)/bin/flywheel status

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) bench/producer.py

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .flywheel
