# `make test` works from a fresh clone: it creates .venv, installs what is
# needed (a no-op the second time, keyed on pyproject.toml + constraints.txt),
# then runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint bench-primitives clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

bench-primitives: $(STAMP)
	$(PY) benchmarks/primitives.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache
