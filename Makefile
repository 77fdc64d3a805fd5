# dataplane: the two commands a newcomer needs are `make demo` and `make test` (both run setup).
VENV      ?= .venv
PY        := $(VENV)/bin/python
DATAPLANE := $(VENV)/bin/dataplane
SCENARIO  ?= scenarios/clusterip.yaml
BACKEND   ?= ebpf
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit test-lab clean help

help:
	@echo "make setup   install everything (Debian packages, headers fallback, mounts, .venv); idempotent"
	@echo "make demo    run $(SCENARIO) on backend $(BACKEND) (setup first if needed)"
	@echo "make test    the whole test suite, lab tests included (root; setup first if needed)"
	@echo "make clean   remove every lab on this machine and the .venv"

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup:
	bash scripts/setup.sh

demo: $(VENV)/.installed
	$(DATAPLANE) run $(SCENARIO) --backend $(BACKEND)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-lab: $(VENV)/.installed
	$(PY) -m pytest tests/bpf tests/lab $(PYTEST_ARGS)

clean:
	-[ -x $(DATAPLANE) ] && $(DATAPLANE) down --all
	rm -rf $(VENV)
