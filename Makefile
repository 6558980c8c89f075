# factory: `make demo` runs the main job on the local cloud; `make test` runs the tests.
# Every target installs what it needs: Python packages into .venv/, Debian tools with
# apt-get when missing (scripts/system-deps.sh).

SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
FACTORY := $(VENV)/bin/factory
STAMP := $(VENV)/.installed
JOBS ?= 2
# Packer's ansible provisioner runs ansible-playbook from PATH: the venv's comes first.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv system-deps demo test images lint bench bake render size clean

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP) ## Create .venv/ with factory and its test tools

system-deps: ## apt-get install packer, openssh-server, docker.io, python3-pip, busybox-static, musl, btrfs-progs, xfsprogs, lvm2, mdadm when missing
	@bash scripts/system-deps.sh local

demo: $(STAMP) system-deps ## Bake salmon-quant on the local cloud and register it (no AWS account)
	@$(PY) scripts/demo.py

# A local bake keeps one core busy, but the register, prune and job modules wait on the
# local cloud's state delays (a third of a core to half of one: docs/test-speed.md), so the
# test files run TEST_JOBS at a time on 2 cores (pytest-xdist, a file's tests together so
# its local cloud is shared), the longest first (tests/conftest.py); the IAM proof reads
# the calls of all of them, so it runs after.
TEST_JOBS ?= 4
test: $(STAMP) system-deps ## Run the whole test suite (real Packer, Ansible, sshd, dockerd, moto); TEST_JOBS=1 runs one file at a time
	@calls=$$(mktemp /tmp/factory-calls-XXXXXX.log); export FACTORY_LOCAL_CALL_LOG=$$calls; \
	$(VENV)/bin/pytest -q $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder) --ignore tests/test_zz_iam_policy.py $(PYTEST_ARGS) \
	  && $(VENV)/bin/pytest -q tests/test_zz_iam_policy.py; rc=$$?; rm -f $$calls $$calls.whole-suite; exit $$rc

images: $(STAMP) ## Bake every spec in specs/ (CLOUD=aws|local, JOBS=N), skipping unchanged ones
	@bash scripts/system-deps.sh $(or $(CLOUD),aws)
	@$(FACTORY) bake --all --cloud $(or $(CLOUD),aws) --jobs $(JOBS) $(FACTORY_BAKE_ARGS)

lint: $(STAMP) system-deps ## ansible-lint (production), packer fmt, ruff
	@$(VENV)/bin/ansible-lint --profile production ansible/
	@packer fmt -check packer/
	@$(VENV)/bin/ruff check factory tests bench scripts

bench: $(STAMP) system-deps ## Run the benchmarks in bench/ and print their figures (measure starts its own dockerd; reads: status and bake --all at 100 specs)
	@$(PY) bench/startup/run.py
	@$(PY) bench/sizing/run.py
	@$(PY) bench/measure/run.py
	@$(PY) bench/bake/run.py
	@$(PY) bench/grow/run.py
	@$(PY) bench/reads/run.py

guard-%:
	@if [ -z "$($*)" ]; then echo "usage: make $(MAKECMDGOALS) $*=<value>   e.g. make $(MAKECMDGOALS) $*=salmon-quant"; exit 2; fi

size: $(STAMP) guard-TASK ## Print the storage sizing of one task: make size TASK=salmon-quant
	@$(FACTORY) size $(TASK)

render: $(STAMP) guard-TASK ## Write build/TASK/ for Packer: make render TASK=salmon-quant
	@$(FACTORY) render $(TASK)

bake: $(STAMP) guard-TASK ## Bake one task: make bake TASK=salmon-quant [CLOUD=local]
	@bash scripts/system-deps.sh $(or $(CLOUD),aws)
	@$(FACTORY) bake $(TASK) --cloud $(or $(CLOUD),aws)

clean: ## Remove build/ and stop a local cloud left running
	@-test -x $(FACTORY) && $(FACTORY) local down >/dev/null 2>&1
	@rm -rf build .factory
