"""What ``import hvsim`` leaves behind in Python's collector (hvsim/_gc.py), and the
bytecode ``hvsim warmup`` writes (hvsim/warmup.py: compile_bytecode)."""
import gc
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from hvsim import _gc

ROOT = pathlib.Path(__file__).resolve().parent.parent

# what a fresh process reports right after ``import hvsim``
PROBE = ("import gc, json, hvsim; "
         "print(json.dumps({'frozen': gc.get_freeze_count(), 'enabled': gc.isenabled()}))")


def _fresh(extra_env=None, preamble=""):
    env = {k: v for k, v in os.environ.items() if k != "HVSIM_GC_FREEZE"}
    env.update(PYTHONPATH=str(ROOT), **(extra_env or {}))
    out = subprocess.run([sys.executable, "-c", preamble + PROBE], env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_freezes_the_startup_objects_and_leaves_the_collector_on():
    got = _fresh()
    # numba + numpy + hvsim: tens of thousands of objects move to the permanent generation
    assert got["frozen"] > 20_000
    assert got["enabled"] is True


def test_freeze_can_be_turned_off():
    got = _fresh({"HVSIM_GC_FREEZE": "0"})
    assert got["frozen"] == 0
    assert got["enabled"] is True


def test_import_keeps_a_collector_the_user_turned_off_off():
    got = _fresh(preamble="import gc; gc.disable(); ")
    assert got["enabled"] is False


def test_paused_restores_the_state_it_found_even_on_an_exception():
    was = gc.isenabled()
    try:
        gc.enable()
        with pytest.raises(KeyError):
            with _gc.paused():
                assert not gc.isenabled()
                raise KeyError("inside")
        assert gc.isenabled()
        gc.disable()
        with _gc.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


@pytest.mark.parametrize("value, expected", [("0", False), (" 0 ", False), ("1", True),
                                             ("", True)])
def test_freeze_switch(monkeypatch, value, expected):
    monkeypatch.setenv("HVSIM_GC_FREEZE", value)
    assert _gc.freeze_enabled() is expected


def test_warmup_writes_the_package_bytecode(tmp_path):
    # a copy of the package, so the test never touches the checkout's __pycache__
    import shutil
    package = tmp_path / "hvsim"
    shutil.copytree(ROOT / "hvsim", package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    sources = sorted(package.rglob("*.py"))
    assert sources
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import hvsim.warmup as w; "
            "print(w.__file__); print(w.compile_bytecode())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
                                  HVSIM_GC_FREEZE="0"))
    file, ok = out.stdout.split()
    assert pathlib.Path(file).resolve().parent == package.resolve()
    assert ok == "True"
    missing = [str(p.relative_to(package)) for p in sources
               if not os.path.exists(importlib.util.cache_from_source(str(p)))]
    assert missing == []
