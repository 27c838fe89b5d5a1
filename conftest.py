"""Suite-wide pytest options (not jitted; test tooling only).

* ``--long`` (or ``HVSIM_LONG=1``) runs the tests marked ``@pytest.mark.slow``;
  without it they are skipped with a note, so ``make test`` stays quick.
"""
import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="also run tests marked @pytest.mark.slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (runs only with --long)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--long") or os.environ.get("HVSIM_LONG") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: run with --long (or HVSIM_LONG=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
