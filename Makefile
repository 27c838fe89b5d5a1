# hvsim — the commands a user needs:
#   make lab     JupyterLab on the lesson index (creates .venv, installs, warms the numba cache)
#   make test    the whole test suite (same setup, then pytest)
#   make bench   speed measurements; prints a table and writes BENCHMARKS.md
#   make clean   removes the venv, caches and build files
#
# Needs only Python 3.11 (python3.11, or python3 if that is 3.11+) and network access
# to PyPI. The venv is rebuilt when pyproject.toml changes (stamp file below).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
BOOTSTRAP := .venv-bootstrap

.PHONY: venv test lab bench warmup clean

venv: $(STAMP)

# Create the venv (python -m venv; if ensurepip is missing, as on Debian without the
# python3-venv package, fall back to virtualenv installed into a private folder),
# then install hvsim in editable mode with the test extra. A venv whose interpreter
# no longer runs (copied from another machine) is rebuilt.
$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: python3.11 (or python3) not found" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "error: $(PYTHON) is older than 3.11" >&2; exit 1; }
	@if [ -e $(VPY) ] && ! $(VPY) -c 'import pip' >/dev/null 2>&1; then \
	  echo "venv at $(VENV) is broken: rebuilding"; rm -rf $(VENV); fi
	@if [ ! -e $(VPY) ]; then \
	  $(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	    echo "python -m venv failed (no ensurepip?): using virtualenv instead"; \
	    rm -rf $(VENV) $(BOOTSTRAP); \
	    $(PYTHON) -m pip install --quiet --target $(BOOTSTRAP) virtualenv && \
	    PYTHONPATH=$(BOOTSTRAP) $(PYTHON) -m virtualenv $(VENV) && rm -rf $(BOOTSTRAP); }; \
	fi
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Compile every kernel once and keep the machine code in numba's on-disk cache.
warmup: $(STAMP)
	@$(VPY) -m hvsim warmup || echo "warning: 'hvsim warmup' failed; tests will compile kernels on first use" >&2

test: warmup
	$(VPY) -m pytest -q

# (root, as in a container, must say --allow-root to Jupyter)
lab: warmup
	$(VENV)/bin/jupyter lab notebooks/00_index.ipynb $(if $(filter 0,$(shell id -u)),--allow-root)

bench: warmup
	$(VPY) bench/run.py

clean:
	rm -rf $(VENV) $(BOOTSTRAP) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . \( -name '*.nbi' -o -name '*.nbc' \) -delete
