# One entry point for developers and CI; .ci/run calls `make test` and nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup system-packages python binaries crds modules lint fmt images \
        test test-unit test-component test-e2e reliability component bench up down status kind \
        clean

## setup: everything a fresh machine needs (Debian packages, venv, Go-built binaries, modules)
setup: system-packages python binaries modules

system-packages:
	@bash e2e/toolchain/install-system-packages.sh

python: $(INSTALLED)
$(INSTALLED): pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c .ci/constraints.txt -e '.[dev]'
	@touch $@

binaries:
	@bash e2e/toolchain/build.sh all

## crds: regenerate crds/ and docs/api.md from the API types (unit tests fail on drift)
crds: $(INSTALLED)
	$(BIN)/python -m wasmfleet_api.crdgen
	$(BIN)/python -m wasmfleet_api.docgen

modules: $(INSTALLED)
	$(BIN)/python -m wasmfleet_harness.modules

## images: the operator and agent images for linux/amd64 and linux/arm64, from their
## Dockerfiles, without Docker (buildah, a Debian base made by debootstrap; cold: ~6 min,
## warm: ~1 s); REGISTRY=host:port also pushes them there (plain HTTP) as image indexes
images: system-packages python
	$(BIN)/python -m wasmfleet_harness.images $(if $(REGISTRY),--registry $(REGISTRY))

## lint: formatting, lint rules, strict typing and the import contracts (the layers)
lint: $(INSTALLED)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## test: set up, lint, then every tier (unit, component, e2e)
test: setup lint
	$(BIN)/pytest tests e2e/tests

test-unit: python
	$(BIN)/pytest tests/unit

test-component: setup
	$(BIN)/pytest tests/component

test-e2e: setup
	$(BIN)/pytest e2e/tests

## reliability: the fault, hostile-input and property suites (also part of `make test`), then
## their figures as the tables of docs/reliability.md
RELIABILITY_TESTS := e2e/tests/test_faults.py e2e/tests/test_hostile_modules.py \
        e2e/tests/test_spec_properties.py tests/unit/test_properties.py \
        tests/component/test_agent_http_fuzz.py tests/component/test_oci_hostile_registry.py
reliability: setup
	$(BIN)/pytest $(RELIABILITY_TESTS)
	$(BIN)/python -m wasmfleet_harness.findings

## component: the wasi:http component of the `wasmtime serve` baseline (part of `make modules`)
component: $(INSTALLED)
	$(BIN)/python -m wasmfleet_harness.modules hello-http-component

## bench: every benchmark beside its baselines, then plots and tables into docs/performance.md
bench: setup component
	$(BIN)/pip install --quiet -c .ci/constraints.txt -e '.[dev,bench]'
	$(BIN)/python bench/http_bench.py
	$(BIN)/python bench/neighbour_bench.py
	$(BIN)/python bench/wasi_http_bench.py
	$(BIN)/python bench/coldpath_bench.py
	$(BIN)/python bench/module_bench.py
	$(BIN)/python bench/control_bench.py
	$(BIN)/python bench/density_bench.py
	$(BIN)/python bench/report.py

## bench-arch: the runtime in the arm64 image (qemu-user) beside the amd64 image
bench-arch: setup
	$(BIN)/python bench/arch_bench.py

## up / down / status: the whole system locally (README's first command)
up: setup
	$(BIN)/wasmfleet-dev up

down:
	@if [ -x $(BIN)/wasmfleet-dev ]; then $(BIN)/wasmfleet-dev down; fi

status: python
	$(BIN)/wasmfleet-dev status

## kind: the chart on a kind cluster with a local registry, examples and tests (needs Docker)
kind:
	bash e2e/kind/run.sh

clean: down
	rm -rf build .mypy_cache .ruff_cache .pytest_cache
