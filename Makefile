# The two commands of the README: `make demo` and `make test`. Both create the virtual environment
# on first use (about 2 minutes, 6 GB: torch is large) and reuse it afterwards.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test check gpu lint browser screenshots

# Reinstalled whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev,scale]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/groundex demo

# The browser test drives Debian's chromium (installed here with apt-get when missing).
test: $(VENV)/.installed browser
	$(BIN)/python -m pytest

# The edit-test loop: lint and the tests not marked slow (the full suite stays `make test`, which CI runs).
check: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q

browser:
	bash .ci/install-browser

# The README's screenshots of the app, from the demo workdir (never from the real sample).
screenshots: $(VENV)/.installed browser
	$(BIN)/python docs/screenshots.py --workdir $${GROUNDEX_WORKDIR:-groundex-work}

# faiss-gpu-cu12 provides the same `faiss` module as faiss-cpu, so it replaces it rather than sitting beside it.
gpu: $(VENV)/.installed
	$(BIN)/pip uninstall -y faiss-cpu
	$(BIN)/pip install -e '.[dev,scale,gpu]'

lint: $(VENV)/.installed
	$(BIN)/ruff check .
