"""The project's single numba policy (not jitted itself).

Every kernel in hvsim is compiled through :func:`njit` so that the policy lives in
one place:

* ``cache=True``  -- compiled machine code is written next to the sources
  (``__pycache__``) and reused by the next process; ``hvsim warmup`` fills it.
* ``boundscheck=False`` -- the kernels index numpy arrays with values that the
  *kernels themselves* have range-checked (every guest-physical address is checked
  against the memory size before use); numba's own checks would only slow the hot
  path and turn a bug into an ``IndexError`` instead of a guest event.
* ``error_model="numpy"`` -- integer division by zero does not raise inside a
  kernel; the CPU checks divisors itself and raises #DE in the guest.
* ``nogil=True`` -- a long ``run()`` does not hold the GIL, so a Jupyter kernel
  stays responsive (a Stop button can be served from another thread or task).

Set ``NUMBA_DISABLE_JIT=1`` to run every kernel as plain Python (slow, but with
readable tracebacks and line coverage); the test-suite runs the reference
tests that way too.
"""
import numba

_OPTIONS = dict(cache=True, nogil=True, boundscheck=False, error_model="numpy")


def njit(fn=None, **overrides):
    """Compile ``fn`` with the project's numba options (usable bare or called)."""
    opts = dict(_OPTIONS, **overrides)
    if fn is None:
        return lambda f: numba.njit(**opts)(f)
    return numba.njit(**opts)(fn)
