# The two commands of the README's quick start:
#   make demo   set up (virtual environment, CPU-only torch pin) and run the main job
#   make test   set up with the test extras and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
OUT ?= outputs/demo

.PHONY: demo test setup setup-dev bench lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.setup-done: $(BIN)/python setup.cfg constraints.txt
	$(PIP) -e ".[data]"
	touch $@

$(VENV)/.setup-dev-done: $(BIN)/python setup.cfg constraints.txt
	$(PIP) -e ".[dev]"
	touch $@

setup: $(VENV)/.setup-done
setup-dev: $(VENV)/.setup-dev-done

demo: setup
	$(BIN)/odedepth demo --out $(OUT)

test: setup-dev
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: setup-dev
	$(BIN)/ruff check solvers odedepth tests benchmarks examples

bench: setup-dev
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done
