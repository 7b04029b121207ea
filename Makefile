# Two commands on a fresh machine with Python 3.9-3.12 (3.11 tested):
#   make demo   creates .venv, installs, prepares data, runs the 2-rank local job, evaluates, predicts
#   make test   creates .venv, installs (with the mindspore and test extras) and runs the test suite
# (the launcher alone installs on any Python 3.9+ without MindSpore: pip install .; the demo and the
# tests train, so they need MindSpore 2.10's Pythons)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mscluster-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast install data clean-venv

CHECK_PY := import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 9) <= v <= (3, 12) else "mscluster needs Python 3.9-3.12 (MindSpore 2.10 wheels); this is %d.%d: set PYTHON=python3.11 (and make clean-venv)" % v)

$(STAMP): setup.cfg pyproject.toml
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV); $(PYTHON) -c '$(CHECK_PY)' && $(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): on Debian/Ubuntu install python3-venv"; exit 1; }; }
	@$(BIN)/python -c '$(CHECK_PY)'
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[mindspore,test]'
	touch $@

install: $(STAMP)

data: $(STAMP)
	$(BIN)/python -m trainer.prepare data

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# The unit tests alone: no MindSpore in the test process, no root, no sshd; under a minute.
test-fast: $(STAMP)
	MSCLUSTER_TEST_FAST=1 $(BIN)/python -m pytest -q -m "not integration and not ssh and not netns and not mindspore" $(PYTEST_ARGS)
