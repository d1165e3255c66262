# The two commands a newcomer needs: `make run` and `make test`. Both install
# what is missing first (tools/bootstrap.sh) and are quick when nothing is.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
DATA ?= $(CURDIR)/var
LISTEN ?= 127.0.0.1:50051
PROTOS := $(wildcard proto/oomtrace/v1/*.proto)

.PHONY: setup run test unit integration lint proto proto-check bench oom clean test-kernels image test-deploy

setup:
	@tools/bootstrap.sh

# A collector on its embedded SQLite store, and the agent beside it printing
# each OOM kill as it is recorded. Ctrl-C stops both.
run: setup
	@tools/run-local.sh "$(DATA)" "$(LISTEN)"

# Provoke one real OOM kill in a scratch memory cgroup (64 MiB limit), then show
# its record from the collector that `make run` started.
oom: setup
	@$(BIN)/python tools/provoke_oom.py --collector "$(LISTEN)"

# Everything CI runs: lint, types, generated-code freshness, unit and
# privileged tests (the latter skip with their reason when not root).
test: setup lint proto-check
	$(BIN)/python -m pytest -q tests --ignore=tests/deploy

# The agent and collector images (oomtrace-agent, oomtrace-collector), from
# Debian's packages and PyPI, on Debian's dockerd (tools/engine.sh).
image: setup
	tools/image.sh

# The images run the way deploy/kubernetes says, on real kills in containers
# of Docker and containerd, with restarts in between (tests/deploy/). CI runs
# it after the host suite.
test-deploy: setup
	$(BIN)/python -m pytest -q -s tests/deploy

# The privileged tests again in guests running Debian's 5.10 (cgroup v2 and
# v1), 6.1 and 6.12 kernels; KERNELS="6.12" (or any list) for a choice: see
# tools/test-kernels.sh. CI runs it after the host suite.
test-kernels: setup
	tools/test-kernels.sh

unit: setup
	$(BIN)/python -m pytest -q tests/unit

integration: setup
	$(BIN)/python -m pytest -q tests/integration

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy oomtrace tests

# Generated wire code lives beside the .proto files and is committed.
proto: setup
	@tools/gen-proto.sh proto/oomtrace/v1

proto-check: setup
	@tools/gen-proto.sh --check proto/oomtrace/v1

bench: setup
	$(BIN)/python tests/bench/bench_agent.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
