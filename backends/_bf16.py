"""bfloat16 inputs for the CuPy and Numba-CUDA backends, through their float32 paths.

NumPy has no bfloat16; CuPy (14, experimental) and numba-cuda (0.30) hold bf16 arrays of
``ml_dtypes.bfloat16``. The ops whose registry entry lists "bfloat16" (the linear-head DPO and
logits-SAM ops, the KD divergences, TIS-DPO, the weighted token CE) then take bf16 arrays on
these backends as follows, one rule for all of them:

- every bf16 array argument is upcast on the device to a float32 copy (exact: every bf16 value
  is a float32 value), and the backend's float32 path computes the result;
- the gradients come back in bfloat16, the input dtype: the entries after the value of an op
  named ``*_grad`` (a tuple ``(value, grad, ...)``) and the ``d*`` entries of a dict result
  (``logits_sam_dpo_grad``), rounded to nearest even; every other result (losses, log-probs,
  rewards, norms, ``eps_W``) stays float32, as the torch backend returns them.

The cost of this rule, said plainly: float32 copies of the bf16 inputs (twice their bf16 bytes
of extra device memory, e.g. 2.1 GB for a 128,256 x 4096 head) and float32 GEMMs instead of
bf16 tensor-core GEMMs. The torch backend is the memory-lean bf16 path (bf16 GEMM operands with
fp32 accumulation, no upcast copies).
"""

from __future__ import annotations

import functools

import numpy as np

try:
    import ml_dtypes
except ImportError:  # bf16 is then not offered (DTYPES omits it)
    ml_dtypes = None

AVAILABLE = ml_dtypes is not None


def is_bf16_dtype(dtype) -> bool:
    return AVAILABLE and str(dtype) == "bfloat16"


def host_cast(a, dtype=None):
    """A NumPy array cast on the host to ``dtype`` (``"bfloat16"`` an ``ml_dtypes`` dtype), for
    a backend's ``asarray(a, dtype)``; None keeps it."""
    a = np.asarray(a)
    if dtype is None:
        return a
    return a.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def host_float(a):
    """A host copy for ``to_numpy``: bfloat16 as float32 (exact), anything else as it is."""
    return a.astype(np.float32) if is_bf16_dtype(getattr(a, "dtype", None)) else a


def ops() -> list[str]:
    """The registry ops checked in bfloat16 (their entry lists it)."""
    from refimpl import _ops

    return [op.name for op in _ops.OPS if "bfloat16" in op.dtypes]


def through_float32(func, is_bf16, up, down):
    """``func`` taking bf16 array arguments: they are upcast by ``up`` (bf16 -> float32 on the
    device), and the gradients of the result are rounded back by ``down`` (see the module
    docstring). Calls without a bf16 argument go straight to ``func``."""
    grad_op = func.__name__.endswith("_grad")

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if not any(is_bf16(a) for a in (*args, *kwargs.values())):
            return func(*args, **kwargs)
        args = [up(a) if is_bf16(a) else a for a in args]
        kwargs = {k: up(v) if is_bf16(v) else v for k, v in kwargs.items()}
        out = func(*args, **kwargs)
        if not grad_op:
            return out
        if isinstance(out, dict):
            return {k: down(v) if k.startswith("d") and v is not None else v
                    for k, v in out.items()}
        return (out[0], *(None if v is None else down(v) for v in out[1:]))

    return wrapper


def install(namespace: dict, is_bf16, up, down) -> None:
    """Replace the bf16-listed ops in a backend package's namespace by their
    :func:`through_float32` wrappers (when ``ml_dtypes`` is installed)."""
    if not AVAILABLE:
        return
    for name in ops():
        if name in namespace:
            namespace[name] = through_float32(namespace[name], is_bf16, up, down)
