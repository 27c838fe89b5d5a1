# hvsim — the commands a user needs:
#   make lab     JupyterLab on the lesson index (creates .venv, installs, warms the numba cache)
#   make test    the test suite (same setup, then pytest; under 10 minutes on 2 cores)
#   make test-slow  the slow tier: long fuzzing, long differential runs, repo2docker
#   make bench   speed measurements; prints a table and writes BENCHMARKS.md
#   make test-numba-next  the numba-policy tests against the newest numba on PyPI, in a
#                throw-away venv (not part of make test)
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

.PHONY: venv test test-slow test-numba-next lab bench warmup clean

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

# The slow tier: the tests marked @pytest.mark.slow (conftest.py), then the fuzzers and
# the differential tests with ten times as many cases (HVSIM_LONG=1).
test-slow: warmup
	$(VPY) -m pytest -q --long -m slow
	HVSIM_LONG=1 $(VPY) -m pytest -q tests/test_fuzz.py tests/test_differential.py \
	    tests/test_vmx_fuzz.py tests/test_vmx_differential.py tests/test_ept_isolation.py

# hvsim pins numba and llvmlite (pyproject.toml); this tries the newest release of both
# in a venv of its own, with a numba cache of its own, and runs the tests of the numba
# policy (tests/test_jit_policy.py: the corrections, the kernel table, the cache).
NEXT := .venv-numba-next
test-numba-next:
	rm -rf $(NEXT)
	$(PYTHON) -m venv $(NEXT)
	$(NEXT)/bin/python -m pip install --quiet --upgrade pip
	$(NEXT)/bin/python -m pip install --quiet --upgrade numba llvmlite numpy pytest pytest-timeout
	$(NEXT)/bin/python -c 'import numba, llvmlite; print("numba", numba.__version__, "llvmlite", llvmlite.__version__)'
	NUMBA_CACHE_DIR=$(CURDIR)/$(NEXT)/numba-cache PYTHONPATH=$(CURDIR) $(NEXT)/bin/python -m hvsim warmup
	NUMBA_CACHE_DIR=$(CURDIR)/$(NEXT)/numba-cache PYTHONPATH=$(CURDIR) \
	  $(NEXT)/bin/python -m pytest -q --long -p no:cacheprovider tests/test_jit_policy.py tests/test_kernel_table.py

# (root, as in a container, must say --allow-root to Jupyter)
lab: warmup
	$(VENV)/bin/jupyter lab notebooks/00_index.ipynb $(if $(filter 0,$(shell id -u)),--allow-root)

bench: warmup
	$(VPY) bench/run.py

clean:
	rm -rf $(VENV) $(NEXT) $(BOOTSTRAP) build dist *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . \( -name '*.nbi' -o -name '*.nbc' \) -delete
