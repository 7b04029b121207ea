# Two commands on a fresh machine with Python 3.9-3.12 (3.11 tested):
#   make demo   creates .venv, installs, prepares data, runs the 2-rank local job, evaluates, predicts
#   make test   creates .venv, installs (with the test extra) and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mscluster-installed
PYTEST_ARGS ?=

.PHONY: demo test test-all install data bench clean-venv

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 9) <= v <= (3, 12) else "mscluster needs Python 3.9-3.12 (MindSpore 2.10 wheels); this is %d.%d: set PYTHON=python3.11" % v)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
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
