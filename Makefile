# The two commands of the README: `make demo` and `make test`. Both create the virtual environment
# on first use (about 2 minutes, 6 GB: torch is large) and reuse it afterwards.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test gpu lint

# Reinstalled whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/groundex demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# faiss-gpu-cu12 provides the same `faiss` module as faiss-cpu, so it replaces it rather than sitting beside it.
gpu: $(VENV)/.installed
	$(BIN)/pip uninstall -y faiss-cpu
	$(BIN)/pip install -e '.[dev,gpu]'

lint: $(VENV)/.installed
	$(BIN)/ruff check .
