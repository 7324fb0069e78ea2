# Kybernetes developer entry points. `make up` and `make test` work on a fresh
# Debian-like machine (as root): they install what is missing first.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
STATE_DIR ?= $(CURDIR)/.kybernetes
NODES ?= 1
MODE ?= processes
# This machine's address on a real LAN, for other machines to join (README: A second machine).
API_ADDRESS ?=
# HA=1: three etcd members, two API servers, two controller managers, two replicators (README: A highly available control plane).
HA ?=
BUSYBOX_IMAGE ?= kybernetes/busybox:latest
PAUSE_IMAGE ?= kybernetes/pause:latest
COMPONENT_IMAGE ?= kybernetes/kybernetes:latest
ETCD_IMAGE ?= kybernetes/etcd:latest
# With a registry: BASE_IMAGE=python:3.11-slim-bookworm. Without, it is built locally with debootstrap.
BASE_IMAGE ?= kybernetes/python-base:bookworm
PYTEST_ARGS ?=

.PHONY: deps dockerd venv generate images check test unit up down status join-token bench clean

deps:
	@bash scripts/ensure-deps.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

generate: venv
	PYTHON=$(PY) bash scripts/generate.sh

dockerd: deps
	@bash scripts/start-dockerd.sh $(STATE_DIR)/logs

# Pod images (busybox, pause) and component images (kybernetes, etcd), all local.
images: dockerd venv
	@PYTHON=$(PY) BUSYBOX_IMAGE=$(BUSYBOX_IMAGE) PAUSE_IMAGE=$(PAUSE_IMAGE) \
	  COMPONENT_IMAGE=$(COMPONENT_IMAGE) ETCD_IMAGE=$(ETCD_IMAGE) BASE_IMAGE=$(BASE_IMAGE) \
	  bash scripts/build-images.sh

# Unit tests only: no daemons needed.
unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

# The gates CI runs before any test: lint, types, and the import contract
# (components never import each other, common imports no component, services
# never import tools/; see [tool.importlinter] in pyproject.toml). All three
# run, so one failure does not hide another.
check: venv
	@status=0; \
	  echo "ruff check ."; $(VENV)/bin/ruff check . || status=1; \
	  echo "mypy services tools"; $(PY) -m mypy services tools || status=1; \
	  echo "lint-imports"; $(VENV)/bin/lint-imports || status=1; \
	  exit $$status

# Prerequisites are made in order: deps, venv and images, then the gates, then pytest.
test: deps venv images check
	KYBERNETES_BUSYBOX_IMAGE=$(BUSYBOX_IMAGE) KYBERNETES_PAUSE_IMAGE=$(PAUSE_IMAGE) \
	  $(PY) -m pytest -q $(PYTEST_ARGS)

up: deps venv images
	$(PY) -m tools.localcluster up --state-dir $(STATE_DIR) --nodes $(NODES) --mode $(MODE) \
	  --busybox-image $(BUSYBOX_IMAGE) --pause-image $(PAUSE_IMAGE) \
	  --component-image $(COMPONENT_IMAGE) --etcd-image $(ETCD_IMAGE) $(if $(API_ADDRESS),--api-address $(API_ADDRESS)) \
	  $(if $(filter 1,$(HA)),--ha)

down: venv
	$(PY) -m tools.localcluster down --state-dir $(STATE_DIR)

status: venv
	$(PY) -m tools.localcluster status --state-dir $(STATE_DIR)

# What a new machine needs to join, in $(STATE_DIR)/join/ (kubeadm token create --print-join-command).
join-token: venv
	$(PY) -m tools.localcluster join-token --state-dir $(STATE_DIR)

bench: deps venv images
	$(PY) -m bench.apiserver
	$(PY) -m bench.rest
	$(PY) -m bench.bigobjects
	$(PY) -m bench.crossnode
	$(PY) -m bench.chaos
	$(PY) -m bench.supervised
	$(PY) -m bench.staticpods

clean: down
	rm -rf $(STATE_DIR)
