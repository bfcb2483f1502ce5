# The README's two commands:
#   make run    set up .venv if absent, then run the pipeline on params.yaml (dvc repro)
#   make test   set up .venv if absent, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.l2l-installed

.PHONY: run test lint setup
setup: $(STAMP)

# torch first, from constraints.txt, so neither the local CPU-only wheel nor another
# package's unpinned requirement can pull a torch that the registry's torchvision rejects.
# sam2 is an sdist whose build imports torch: build it against the installed one.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch torchvision "setuptools>=69" wheel
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation -c constraints.txt -e ".[dev,teacher]"
	touch $@

run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
