# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

$(BIN)/tfsky: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .[dev]
	touch $@

install: $(BIN)/tfsky

demo: install
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q

bench: install
	for b in scripts/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) demo_out
