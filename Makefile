# Two entry points: `make book` builds the website, `make test` runs the test suite.
# Both create and fill .venv on first use (from the package registries alone).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A plain `pip install torch` pulls several GB of CUDA libraries; this pin takes the CPU build where one
# is offered and is overridden on a GPU VM (make TORCH_SPEC=torch ...), or use environment.yml there.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test book clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,book]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

book: $(VENV)/.installed
	@echo "The notebooks and the Jupyter Book site are not written yet: nothing to build."

clean:
	rm -rf _build .pytest_cache
