"""Packaging and tooling checks: Binder files, console script, Makefile, the README example.

Oracles: the files themselves (byte comparison, executable bits), a dry run of make,
and the README's own claim about the example (eax == 55 after 'halt').
"""
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_binder_environment_is_byte_identical_to_environment_yml():
    assert (ROOT / "binder" / "environment.yml").read_bytes() == (ROOT / "environment.yml").read_bytes()


def test_environment_pins_python_311_and_lists_the_dependencies():
    text = (ROOT / "environment.yml").read_text()
    deps = re.findall(r"^\s*-\s*([A-Za-z0-9_.=-]+)\s*$", text, re.M)
    assert "python=3.11" in deps
    names = {d.split("=")[0] for d in deps}
    for pkg in _pyproject()["project"]["dependencies"]:
        assert re.split(r"[<>=!~ ;\[]", pkg)[0] in names, pkg


@pytest.mark.parametrize("name", ["numba", "llvmlite"])
def test_numba_and_llvmlite_are_pinned_to_one_minor_version_in_both_environment_files(name):
    """hvsim corrects numba internals and calls kernels by address: both environment files
    pin the same tested minor version, and the installed one is it."""
    import importlib.metadata
    spec = next(d for d in _pyproject()["project"]["dependencies"] if re.split(r"[<>=!~ ]", d)[0] == name)
    low = re.search(r">=\s*(\d+)\.(\d+)", spec)
    high = re.search(r"<\s*(\d+)\.(\d+)", spec)
    assert low and high, spec
    minor = (int(low[1]), int(low[2]))
    assert (int(high[1]), int(high[2])) == (minor[0], minor[1] + 1), spec
    conda = re.search(rf"^\s*-\s*{name}=(\d+)\.(\d+)\s*$", (ROOT / "environment.yml").read_text(), re.M)
    assert conda and (int(conda[1]), int(conda[2])) == minor
    installed = tuple(int(x) for x in importlib.metadata.version(name).split(".")[:2])
    assert installed == minor


@pytest.mark.parametrize("name", ["postBuild", "start"])
def test_binder_scripts_are_executable(name):
    mode = (ROOT / "binder" / name).stat().st_mode
    assert mode & stat.S_IXUSR and mode & stat.S_IXOTH, oct(mode)


def test_postbuild_installs_hvsim_and_warms_the_cache_for_a_generic_cpu():
    lines = [l.strip() for l in (ROOT / "binder" / "postBuild").read_text().splitlines()
             if l.strip() and not l.lstrip().startswith("#")]
    install = [i for i, l in enumerate(lines) if re.search(r"pip install .*(-e )?\.$", l)]
    warm = [i for i, l in enumerate(lines)
            if l.startswith("NUMBA_CPU_NAME=generic ") and l.endswith("-m hvsim warmup")]
    assert install and warm and install[0] < warm[0], lines


def test_binder_start_exports_generic_cpu_and_execs_the_command():
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    env = dict(os.environ, NUMBA_CPU_NAME="host")
    out = subprocess.run([str(ROOT / "binder" / "start"), "sh", "-c", 'echo "$NUMBA_CPU_NAME:$0"', "arg0"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "generic:arg0"


def test_pyproject_declares_the_console_script_and_it_resolves_to_a_function():
    project = _pyproject()["project"]
    assert project["scripts"]["hvsim"] == "hvsim.cli:main"
    import importlib
    mod_name, func_name = project["scripts"]["hvsim"].split(":")
    assert callable(getattr(importlib.import_module(mod_name), func_name))


def test_pyproject_dependencies_and_test_extra():
    project = _pyproject()["project"]
    assert project["requires-python"] == ">=3.11"
    assert sorted(re.split(r"[<>=!~ ]", d)[0] for d in project["dependencies"]) == sorted(
        ["numpy", "numba", "llvmlite", "ipywidgets", "matplotlib", "networkx", "jupyterlab"])
    test_extra = set(project["optional-dependencies"]["test"])
    assert {"pytest", "pytest-timeout", "unicorn", "capstone", "nbclient", "nbformat", "ipykernel",
            "hypothesis", "playwright", "jupyter-repo2docker"} <= test_extra


def test_ci_script_is_strict_bash_and_ends_in_make_test():
    path = ROOT / ".ci" / "run"
    assert path.stat().st_mode & stat.S_IXUSR
    text = path.read_text()
    assert text.startswith("#!/bin/bash") and "set -euo pipefail" in text
    assert "apt-get install -y" in text and "chromium" in text
    code = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert code[-2:] == ["make test", "make test-slow"]
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_make_test_rebuilds_a_stale_venv_then_warms_up_then_runs_the_whole_suite():
    if shutil.which("make") is None:
        pytest.skip("make not available")
    # -n: print the commands only; -W pyproject.toml: pretend it just changed (stale stamp).
    out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "test"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    i_install = text.index("pip install --quiet -e '.[test]'")
    i_warm = text.index("-m hvsim warmup")
    i_test = text.index("-m pytest -q")
    assert i_install < i_warm < i_test
    # the suite is run whole: no path or -k/-m selection after "pytest -q"
    assert re.search(r"-m pytest -q\s*$", text, re.M)


def _readme_python_blocks():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 3, ("the README has the five-minute example, the lesson pieces "
                              "and hvsim compare's Python example")
    return blocks


def test_readme_example_runs_as_written(capsys):
    ns = {"__name__": "readme_example"}
    first, second, _ = _readme_python_blocks()
    exec(compile(first, "README.md", "exec"), ns)
    m, event = ns["m"], ns["event"]
    assert event.kind == "halt"
    assert m.cpu.eax == 55          # 10 + 9 + ... + 1
    assert m.cpu.ecx == 0           # LOOP counted ECX down to zero
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "halt 55"  # what the README's comment promises
    # mov + 10 x (add, loop) = 21 instructions before HLT (22 if HLT itself is counted)
    assert int(printed[1]) in (21, 22)
    # the lesson pieces, run after it in the same namespace: the stepper wraps that
    # machine, and the monitor's log names the first traps of the teaching kernel
    exec(compile(second, "README.md", "exec"), ns)
    assert ns["Stepper"].__module__ == "hvsim.widgets.stepper"
    assert ns["mon"].log[0].instruction.startswith("lidt")
    assert ns["viz"].page_walk and ns["viz"].ring_diagram


def test_readme_compare_example_gives_what_its_comments_say(capsys):
    ns = {"__name__": "readme_example"}
    exec(compile(_readme_python_blocks()[2], "README.md", "exec"), ns)
    rows = ns["c"].rows
    assert [r["host"] for r in rows if not r["same_as_native"]] == ["shadow"]
    assert rows[1]["host"] == "shadow"
    assert rows[1]["differences"][0].startswith("clock froze: 4 ticks on shadow at half time")
    assert capsys.readouterr().out.startswith("kernel (the teaching kernel, 20,000 steps)")


def test_make_lab_warms_the_cache_then_opens_the_notebooks_folder():
    if shutil.which("make") is None:
        pytest.skip("make not available")
    out = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.index("-m hvsim warmup") < text.index("jupyter lab notebooks/")
    assert (ROOT / "notebooks" / "00_index.ipynb").is_file()


@pytest.mark.slow
def test_repo2docker_builds_from_binder_with_python_311_postbuild_and_start():
    """What Binder would do, as repo2docker plans it (--no-build: the Dockerfile only)."""
    pytest.importorskip("repo2docker")
    out = subprocess.run([sys.executable, "-m", "repo2docker", "--no-build", "--no-run", "--debug",
                          "--user-id", "1000", "--user-name", "jovyan", str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = out.stdout + out.stderr
    assert "Building conda environment for python=3.11" in plan
    assert '--file "binder/environment.yml"' in plan           # binder/ wins over the root file
    assert "RUN ./binder/postBuild" in plan
    assert 'R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in plan


def test_make_test_slow_and_test_numba_next_are_separate_from_make_test():
    """The slow tier runs the slow-marked tests and the long fuzz/differential runs; the
    numba-next target tries the newest numba in a throw-away venv; neither is in make test."""
    if shutil.which("make") is None:
        pytest.skip("make not available")
    slow = subprocess.run(["make", "-n", "test-slow"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60).stdout
    assert "-m pytest -q --long -m slow" in slow
    assert "HVSIM_LONG=1" in slow and "tests/test_fuzz.py tests/test_differential.py" in slow
    nxt = subprocess.run(["make", "-n", "test-numba-next"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    assert ".venv-numba-next/bin/python -m pip install --quiet --upgrade numba llvmlite" in nxt
    assert "NUMBA_CACHE_DIR=" in nxt and "tests/test_jit_policy.py" in nxt
    plain = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60).stdout
    assert "numba-next" not in plain and "--long" not in plain


def test_every_file_the_readme_names_is_in_the_repository():
    # a reader follows `LICENSE`, `BENCHMARKS.md`, `hvsim/cpu/table.py`...: each must exist
    import re
    text = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`([\w./-]+\.(?:md|py|s|yml|toml|ipynb))`", text))
    named |= set(re.findall(r"`((?:[\w-]+/)*LICENSE)`", text))
    assert {"LICENSE", "notebooks/LICENSE", "BENCHMARKS.md"} <= named
    missing = sorted(n for n in named if not (ROOT / n).exists()
                     and not (ROOT / "hvsim" / n).exists() and not (ROOT / "notebooks" / n).exists())
    assert not missing, f"the README names files that are not here: {missing}"
