# The two commands in the README. Each does all the set-up it needs (idempotent, seconds when done).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
NP ?= 2
# OpenMPI refuses to start as root without these; harmless for other users.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1

.PHONY: setup demo test test-unit test-mpi test-slurm lint typecheck docs clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: scripts/setup.sh pyproject.toml
	bash scripts/setup.sh
	touch $@

demo: setup
	bash scripts/demo.sh $(NP)

# The tests also need Slurm and munge (tests/slurm start a real single-node cluster, tests/multinode a two-node
# cluster of namespaces: slurm/local/cluster.sh); ruff and mypy run first.
$(VENV)/.slurm-done: $(VENV)/.setup-done
	HPCTRAIN_WITH_SLURM=1 bash scripts/setup.sh
	touch $@

test: setup $(VENV)/.slurm-done lint typecheck
	$(BIN)/python -m pytest -ra tests

test-unit: setup
	$(BIN)/python -m pytest -ra tests/unit

test-mpi: setup
	$(BIN)/python -m pytest -ra tests/mpi

test-slurm: setup $(VENV)/.slurm-done
	$(BIN)/python -m pytest -ra tests/slurm

test-multinode: setup $(VENV)/.slurm-done
	$(BIN)/python -m pytest -ra tests/multinode

lint: setup
	$(BIN)/ruff check hpctrain tests data scripts docs/examples

typecheck: setup
	$(BIN)/mypy

docs: setup
	$(BIN)/python scripts/gen_docs.py

clean:
	rm -rf runs build *.egg-info .pytest_cache
