# `make book` builds the website, `make test` runs the test suite. Both create and fill .venv on first use
# (from the package registries alone: PyPI, npm, Debian).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A plain `pip install torch` pulls several GB of CUDA libraries; this pin takes the CPU build where one
# is offered and is overridden on a GPU VM (make TORCH_SPEC=torch ...), or use environment.yml there.
TORCH_SPEC ?= torch==2.13.0
ASSETS := _build/npm/.installed

.PHONY: install assets browser test book site slides lab reference gpu-wheels gpu-reference gpu-import clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,book]"
	touch $@

install: $(VENV)/.installed

# reveal.js, MathJax, jQuery and RequireJS from npm, so that the site and the slides work offline.
$(ASSETS): $(VENV)/.installed kanlib/book/web_assets.py
	$(PY) -c "from kanlib.book.web_assets import install_assets; install_assets()"
	touch $@

assets: $(ASSETS)

# Headless Chromium for the browser test (Debian's packages; installed when missing and we are root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium chromium-driver >/dev/null; \
	    else echo "chromium/chromedriver missing and not root: the browser test will be skipped"; fi; }

# Most tests run on one core (Triton's interpreter, notebooks, the browser), so the files are spread over
# TEST_WORKERS processes, each file kept whole in one of them (its module fixtures run once).
TEST_WORKERS ?= 2

test: $(VENV)/.installed $(ASSETS) browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Run every notebook (mode auto: full on a GPU, quick on a CPU) into _build/executed/, then build the site.
book: $(VENV)/.installed $(ASSETS)
	$(PY) -m kanlib run --mode auto
	$(PY) -m kanlib book --notebooks _build/executed

# The site from the committed notebooks, without executing them (what gets published).
site: $(VENV)/.installed $(ASSETS)
	$(PY) -m kanlib book --notebooks notebooks

slides: $(VENV)/.installed $(ASSETS)
	$(PY) -m kanlib slides --output-dir _build/html/slides

# JupyterLab on notebooks/: each notebook's cell tagged `parameters` holds its defaults (quick mode on a CPU).
# LAB_ARGS passes options, e.g. make lab LAB_ARGS="--no-browser --allow-root" in a container.
lab: $(VENV)/.installed
	$(PY) -m jupyterlab --ServerApp.root_dir=notebooks $(LAB_ARGS)

# The reference run, on a GPU VM: replaces the committed notebooks with a full-mode run.
reference: $(VENV)/.installed
	$(PY) -m kanlib run --device cuda --mode full --in-place

# The GPU reference run on a lent GPU machine (kanlib/book/gpu.py; book/reproduce.md says how).
# Here, where the package registries are reachable: the wheels the bare GPU image lacks, into .whl/.
gpu-wheels: $(VENV)/.installed
	$(PY) -m kanlib gpu-wheels

# There, as one command (no venv there: its python3 holds torch and Triton; `python3 -m kanlib gpu-reference`
# is the same where make is missing): the carried wheels installed, then the CUDA tests and
# the benchmarks within 9 minutes, packed into $$OUT.
gpu-reference:
	python3 -m kanlib gpu-reference $(if $(OUT),--out $(OUT))

# Back here: the results into data/results/ (make gpu-import FROM=folder); then run chapters 04, 06, 09 and 90 again.
gpu-import: $(VENV)/.installed
	@test -n "$(FROM)" || { echo "make gpu-import: expected FROM=<folder the GPU run packed>, got none"; exit 2; }
	$(PY) -m kanlib gpu-import $(FROM)

# numba's cache files too: numba sees a change only in the file that defines a kernel, not in a helper it inlines
# from another file (kanlib/ops/fast_exp.py, say), so after such an edit the cached kernels would be stale.
clean:
	rm -rf _build .pytest_cache
	find kanlib \( -name '*.nbi' -o -name '*.nbc' \) -delete
