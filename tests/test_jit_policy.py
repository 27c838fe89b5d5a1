"""The numba cache policy: which source edits drop the cached kernels (hvsim/_jit.py)."""
import shutil

import hvsim._jit as J


def test_sources_hash_covers_folded_constants_but_not_python_faces(tmp_path, monkeypatch):
    pkg = tmp_path / "hvsim"
    shutil.copytree(J._PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(J, "_PACKAGE", pkg)
    h0 = J.sources_hash()
    (pkg / "widgets").mkdir(exist_ok=True)
    (pkg / "widgets" / "new_face.py").write_text("X = 1\n")
    for face in ("machine.py", "cli.py", "asm/assembler.py") + J.FACE_MODULES:
        if not (pkg / face).exists():
            (pkg / face).write_text("")
        (pkg / face).write_text((pkg / face).read_text() + "\n# a face edit\n")
    assert J.sources_hash() == h0            # no kernel folds these in: keep the cache
    # layout.py has no @njit, but its slot numbers are compiled into every kernel
    (pkg / "cpu" / "layout.py").write_text((pkg / "cpu" / "layout.py").read_text() + "\nX = 1\n")
    assert J.sources_hash() != h0


def test_face_modules_inside_kernel_packages_hold_no_kernels():
    """A face left out of the hash must not be compiled, nor be imported by a kernel module."""
    kernel_files = [p for pkg in J._KERNEL_PACKAGES for p in (J._PACKAGE / pkg).rglob("*.py")
                    if p.relative_to(J._PACKAGE).as_posix() not in J.FACE_MODULES]
    for face in J.FACE_MODULES:
        path = J._PACKAGE / face
        if not path.exists():
            continue
        assert "njit" not in path.read_text(), face
        module = "hvsim." + face[:-3].replace("/", ".")
        for k in kernel_files:
            assert module not in k.read_text(), f"{k} imports the face {module}"
