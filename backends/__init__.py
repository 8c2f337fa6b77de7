"""Accelerated backends offering the reference functions of :mod:`refimpl` unchanged.

``backends.get(name)`` imports and returns one backend module; ``backends.available()``
says, for every backend, ``None`` (usable) or the reason it is not. Probing imports the
array library but never allocates device memory (``torch.cuda.is_available()``,
``cupy.is_available()``, ``numba.cuda.is_available()``). Any backend can be switched
off with ``REFIMPL_DISABLE_<NAME>=1`` (e.g. ``REFIMPL_DISABLE_CUPY=1``).

Every backend module provides the op functions of the registry (same names, positional
order, keyword names and defaults as the reference) and this small protocol, which the
cross-check, ``refimpl check``/``bench`` and asv use:

``NAME``                   the backend's name
``DTYPES``                 dtype names the backend can hold ("float32", "float64"; torch, and
                           CuPy/Numba with ``ml_dtypes``, also "bfloat16", run for the ops
                           whose registry entry lists it)
``asarray(a)``             NumPy array -> native array on the backend's device, dtype kept
                           (backends offering "bfloat16" take ``asarray(a, dtype="bfloat16")``)
``to_numpy(x)``            native array -> NumPy array (an explicit device-to-host copy)
``is_native(x)``           whether ``x`` is this backend's array kind
``synchronize()``          wait for queued device work (inside every timed call)
``reset_peak_memory()`` / ``peak_memory()``  device high-water mark in bytes (None on CPU)
``describe()``             device in words, for reports
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

NAMES = ("numpy", "torch", "cupy", "numba_cuda")


class BackendUnavailable(RuntimeError):
    """Raised by :func:`get` for a backend that cannot run here; the message says why."""


def _probe_numpy() -> str | None:
    return None


def _probe_torch() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"torch is not installed ({exc}); pip install 'refimpl[torch]'"
    return None  # the CPU path always works; CUDA is used when torch.cuda.is_available()


def _probe_cupy() -> str | None:
    try:
        import cupy
    except ImportError as exc:
        return f"cupy is not installed ({exc}); pip install 'refimpl[cupy12]' or 'refimpl[cupy13]'"
    try:
        ok = cupy.is_available()
    except Exception as exc:  # a broken CUDA install raises instead of answering
        return f"cupy cannot query CUDA: {exc}"
    if not ok:
        return "cupy is installed but sees no CUDA device (cupy.is_available() is False)"
    return None


def simulator() -> bool:
    """True when Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def _probe_numba_cuda() -> str | None:
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba is not installed ({exc}); pip install 'refimpl[numba]'"
    if simulator():
        return None
    try:
        ok = cuda.is_available()
    except Exception as exc:
        return f"numba cannot query CUDA: {exc}"
    if not ok:
        return ("numba sees no CUDA device or driver (set NUMBA_ENABLE_CUDASIM=1 to run the "
                "kernels in Numba's CUDA simulator)")
    return None


_PROBES = {
    "numpy": _probe_numpy,
    "torch": _probe_torch,
    "cupy": _probe_cupy,
    "numba_cuda": _probe_numba_cuda,
}
_CACHE: dict[str, str | None] = {}


def _check_name(name: str) -> None:
    if name not in _PROBES:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(NAMES)}")


def reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None when it can. Cached per process."""
    _check_name(name)
    if os.environ.get(f"REFIMPL_DISABLE_{name.upper()}", "0") not in ("", "0"):
        return f"disabled by REFIMPL_DISABLE_{name.upper()}"
    if name not in _CACHE:
        _CACHE[name] = _PROBES[name]()
    return _CACHE[name]


def available() -> dict[str, str | None]:
    """``{name: None or reason}`` for every backend, in a fixed order."""
    return {name: reason(name) for name in NAMES}


def get(name: str) -> ModuleType:
    """Import and return backend ``name``; :class:`BackendUnavailable` says why it cannot."""
    why = reason(name)
    if why is not None:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {why}")
    return importlib.import_module(f"backends.{name}")
