"""The numba cache policy: which source edits drop the cached kernels (hvsim/_jit.py)."""
import shutil

import hvsim._jit as J


def test_sources_hash_covers_folded_constants_but_not_python_faces(tmp_path, monkeypatch):
    pkg = tmp_path / "hvsim"
    shutil.copytree(J._PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(J, "_PACKAGE", pkg)
    h0 = J.sources_hash()
    for face in ("machine.py", "cli.py", "asm/assembler.py"):
        (pkg / face).write_text((pkg / face).read_text() + "\n# a face edit\n")
    assert J.sources_hash() == h0            # no kernel folds these in: keep the cache
    # layout.py has no @njit, but its slot numbers are compiled into every kernel
    (pkg / "cpu" / "layout.py").write_text((pkg / "cpu" / "layout.py").read_text() + "\nX = 1\n")
    assert J.sources_hash() != h0
