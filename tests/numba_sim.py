"""Shared pieces of the Numba-CUDA backend tests (simulator and real device)."""

import re

import numpy as np
import pytest

import backends

SIM = backends.simulator()
ON_GPU = (not SIM) and backends.reason("numba_cuda") is None
sim_only = pytest.mark.skipif(
    not SIM, reason="Numba CUDA simulator tests: run with NUMBA_ENABLE_CUDASIM=1")
GPU_REASON = ("needs a real CUDA device for numba-cuda: "
              + ("NUMBA_ENABLE_CUDASIM=1 is set" if SIM else str(backends.reason("numba_cuda"))))


def rng_for(seed):
    return np.random.default_rng(20261122 + seed)


@pytest.fixture(scope="module")
def nb():
    """The backend in the simulator (the backend shortens the thread switch interval itself)."""
    if not SIM:
        pytest.skip("Numba CUDA simulator tests: run with NUMBA_ENABLE_CUDASIM=1")
    return backends.get("numba_cuda")


def to_dev(bk, a, dtype=None):
    """A NumPy array on the backend, float arrays cast to ``dtype`` when given."""
    a = np.asarray(a)
    return bk.asarray(a.astype(dtype) if dtype and a.dtype.kind == "f" else a)


def to_host(bk, x):
    """A backend array as float64 NumPy (None stays None)."""
    return None if x is None else np.asarray(bk.to_numpy(x), dtype=np.float64)


def conforms(got, declared) -> bool:
    """Whether a launch argument's Numba type fits the kernel's declared signature type."""
    from numba.core import types

    if isinstance(declared, types.Array):
        return (isinstance(got, types.Array) and got.dtype == declared.dtype
                and got.ndim == declared.ndim and declared.layout in ("A", got.layout))
    return got == declared


def assert_launches_conform(records) -> None:
    """Every recorded launch ``(kernel name, dtype, argument types)`` (``_kernels.RECORD``)
    passes arguments of the types of the kernel's compiled signature: the simulator checks no
    types, a real device would reject (or reinterpret) a mismatch."""
    from numba.core.sigutils import normalize_signature

    from backends.numba_cuda import _kernels as K

    for name, dt, argtypes in records:
        declared, _ = normalize_signature(K.signature(name, dt))
        assert len(declared) == len(argtypes), name
        bad = [(i, str(g), str(w)) for i, (g, w) in enumerate(zip(argtypes, declared))
               if not conforms(g, w)]
        assert not bad, f"{name}[{dt}] launched with argument types not in its signature: {bad}"


def raises_like_reference(ref_call, nb_call):
    """``nb_call`` raises the reference's exception type with the reference's exact message."""
    with pytest.raises(Exception) as ref_exc:
        ref_call()
    with pytest.raises(ref_exc.type, match=re.escape(str(ref_exc.value))):
        nb_call()


def count_host_reads(monkeypatch) -> list:
    """Count the simulator's device-to-host copies from now on: returns the list that receives
    the shape of each copied array."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    reads = []
    orig = FakeCUDAArray.copy_to_host

    def counting(self, *args, **kw):
        reads.append(tuple(self.shape))
        return orig(self, *args, **kw)

    monkeypatch.setattr(FakeCUDAArray, "copy_to_host", counting)
    return reads
