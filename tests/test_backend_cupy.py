"""Tests of the CuPy backend (``backends/cupy``).

On every machine (CI has no GPU):

* every CUDA source of ``backends/cupy/_kernels.py`` compiles to PTX for ``compute_90`` with
  NVRTC (``cuda.bindings.nvrtc``), both dtype instantiations of every kernel present;
* ``import backends.cupy`` allocates nothing and touches no device (a subprocess);
* launches are checked against the kernels' C signatures; mixed backends are refused;
* the real CUDA sources run on the CPU under a small emulator (``tests/cuda_emulator.py``,
  shared with ``test_backend_cupy_preference.py``; g++ -std=c++20, one OS thread per CUDA
  thread, ``__syncthreads`` a barrier, warp shuffles through per-warp barriers), with the
  backend's glue running on NumPy in place of CuPy: Soft-DTW and OT against the reference,
  including ragged NaN padding, bands, +inf/NaN costs, zero lengths, the global-memory
  fallback, the float32 accuracy guard at moderate size and the standard-domain guard;
* a NumPy mirror of the diagonal-major index math (exhaustive) and a NumPy wavefront using it.

On a GPU (``pytest -m gpu``; skipped with the reason when the cupy backend is unavailable):
reference/tslearn agreement, length 8192 (no cap) and the global-memory fallback beyond the
shared-memory limit, the float32 accuracy guard at n = m = 1024, NaN padding, the batched
ragged divergence, ``sinkhorn_log`` at n = m = 2048 and its peak memory.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import backends
import cuda_emulator
from cuda_emulator import K
from cuda_emulator import bk, cp  # noqa: F401 (GPU fixtures)
from cuda_emulator import Smem as _Smem
from refimpl import ot as ref_ot
from refimpl import softdtw as ref_sd
from refimpl._cases import ot as ot_cases

ROOT = Path(__file__).resolve().parents[1]




# =========================================================================== NVRTC compile (CPU)


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        pytest.skip(f"cuda-bindings is not installed ({exc}); pip install cuda-bindings "
                    f"nvidia-cuda-nvrtc-cu12")
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the NVRTC shared library could not be loaded
        pytest.skip(f"the NVRTC library cannot be loaded: {exc}")
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    return nvrtc


def _compile_ptx(nvrtc, source: str, name: str, options) -> tuple[bool, str, str]:
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    try:
        opts = [o.encode() for o in options]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        ptx = ""
        if err == nvrtc.nvrtcResult.NVRTC_SUCCESS:
            _, size = nvrtc.nvrtcGetPTXSize(prog)
            buf = b" " * size
            nvrtc.nvrtcGetPTX(prog, buf)
            ptx = buf.decode().rstrip("\x00")
        return err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace"), ptx
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def test_every_kernel_source_compiles_to_ptx_for_sm90():
    """Each module as CuPy compiles it (its options plus CuPy's own), for compute_90; every
    exported kernel (every template x {float, double}) must be an entry of the PTX."""
    nvrtc = _nvrtc()
    sources = K.kernel_sources()
    assert {s.module for s in sources} == set(K.MODULES)
    exported = set()
    for ks in sources:
        options = list(ks.options) + list(K.CUPY_IMPLICIT_OPTIONS) + ["--gpu-architecture=compute_90"]
        ok, log, ptx = _compile_ptx(nvrtc, ks.source, ks.module, options)
        assert ok, f"NVRTC failed on module {ks.module!r} with {options}:\n{log}"
        assert ".target sm_90" in ptx
        for name in ks.names:
            assert f".entry {name}(" in ptx, f"{name} missing from the PTX of {ks.module}"
        exported |= set(ks.names)
    want = {f"{t.name}_{suffix}" for t in K.TEMPLATES for _, suffix in K.DTYPES.values()}
    assert exported == want == set(K.KERNELS)


# =========================================================================== import (CPU)


_IMPORT_PROBE = textwrap.dedent("""
    import sys
    import cupy

    def refuse(what):
        def f(*args, **kwargs):
            raise AssertionError(f"import touched the device: {what}")
        return f

    cupy.cuda.set_allocator(refuse("device allocation"))
    cupy.cuda.set_pinned_memory_allocator(refuse("pinned allocation"))
    for name in ("RawModule", "RawKernel", "ElementwiseKernel", "ReductionKernel"):
        setattr(cupy, name, refuse(f"cupy.{name}"))
    for name in ("getDevice", "getDeviceCount", "setDevice", "deviceGetAttribute",
                 "getDeviceProperties", "malloc"):
        setattr(cupy.cuda.runtime, name, refuse(f"cupy.cuda.runtime.{name}"))
    cupy.cuda.Device = refuse("cupy.cuda.Device")

    import backends.cupy
    import backends.cupy._kernels as K
    assert K._MODULE_CACHE == {} and K._FUNCTION_CACHE == {}
    assert callable(backends.cupy.soft_dtw) and callable(backends.cupy.sinkhorn_log)

    # On a machine with a driver: the primary context of device 0 must still be inactive.
    try:
        from cuda.bindings import driver
        (err,) = driver.cuInit(0)
        has_driver = err == driver.CUresult.CUDA_SUCCESS
    except Exception:            # no cuda-bindings, or no driver library on this machine
        has_driver = False
    if has_driver:
        err, dev = driver.cuDeviceGet(0)
        err, flags, active = driver.cuDevicePrimaryCtxGetState(dev)
        assert not active, "a CUDA context was created by the import"
        print("context-checked")
    print("import-ok")
""")


def test_import_touches_no_device():
    pytest.importorskip("cupy", reason="cupy is not installed")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and "import-ok" in res.stdout, res.stdout + res.stderr


# =========================================================================== signatures (CPU)


def test_launch_arguments_are_checked_against_the_signature():
    f32 = np.zeros(4, np.float32)
    jobs = np.zeros((1, K.JOB_FIELDS), np.int64)
    good = (f32, jobs, np.int32(1), np.int32(-1), np.float32(0.1), np.int32(0), f32,
            np.zeros(1), np.zeros(1), np.int32(0), f32, np.int32(4))
    K.check_args("sdtw_fwd_f32", good, np.ndarray)
    with pytest.raises(TypeError, match="njobs"):
        K.check_args("sdtw_fwd_f32", good[:2] + (np.int64(1),) + good[3:], np.ndarray)
    with pytest.raises(TypeError, match="gamma"):
        K.check_args("sdtw_fwd_f32", good[:4] + (0.1,) + good[5:], np.ndarray)
    with pytest.raises(TypeError, match="parameter C"):
        K.check_args("sdtw_fwd_f32", (np.zeros(4),) + good[1:], np.ndarray)
    with pytest.raises(TypeError, match="non-contiguous"):
        K.check_args("sdtw_fwd_f32", (np.zeros(8, np.float32)[::2],) + good[1:], np.ndarray)
    with pytest.raises(TypeError, match="arguments"):
        K.check_args("sdtw_fwd_f32", good[:-1], np.ndarray)


def test_mixed_backends_are_refused():
    """NumPy arrays given to the CuPy backend raise before any device work."""
    cupy_backend = pytest.importorskip("backends.cupy", reason="cupy is not installed")
    C = np.ones((3, 4))
    with pytest.raises(TypeError, match="C is a numpy.ndarray"):
        cupy_backend.soft_dtw(C, 0.1)
    with pytest.raises(TypeError, match="X is a numpy.ndarray"):
        cupy_backend.soft_dtw_divergence(np.ones((3, 2)), np.ones((4, 2)), 0.1)
    with pytest.raises(TypeError, match="C is a numpy.ndarray"):
        cupy_backend.sinkhorn_log(None, None, C, 0.1)
    with pytest.raises(TypeError, match="x is a numpy.ndarray"):
        cupy_backend.pairwise_cost(np.ones((3, 2)), np.ones((4, 2)))


# =========================================================================== index math (CPU)


class _Geom:
    """NumPy/Python mirror of ``RiGeom`` in the Soft-DTW kernels (oriented frame (s, l))."""

    def __init__(self, n, m, r):
        self.S, self.L = min(n, m), max(n, m)
        self.r = -1 if r is None else r

    def valid(self, s, l):
        S, L, r = self.S, self.L, self.r
        ok = (s >= 0) & (l >= 0) & (s < S) & (l < L)
        return ok if r < 0 else ok & (l - s >= -r) & (l - s <= (L - S) + r)

    def grid_lo(self, q):
        return max(0, q - (self.L - 1))

    def lo(self, q):
        a = self.grid_lo(q)
        return a if self.r < 0 else max(a, (q - (self.L - self.S) - self.r + 1) >> 1)

    def hi(self, q):
        b = min(self.S - 1, q)
        return b if self.r < 0 else min(b, (q + self.r) >> 1)

    def diag_start(self, q):
        S, L = self.S, self.L
        if q <= S:
            return q * (q + 1) // 2
        if q <= L - 1:
            return S * (S + 1) // 2 + (q - S) * S
        t = S + L - 1 - q
        return S * L - t * (t + 1) // 2

    def base(self, q):
        return self.diag_start(q) - self.grid_lo(q)


@pytest.mark.parametrize("n,m", [(1, 1), (1, 7), (6, 1), (4, 4), (5, 9), (9, 5), (13, 13), (3, 17)])
@pytest.mark.parametrize("r", [None, 0, 1, 3, 40])
def test_index_math_covers_the_band_and_packs_the_table(n, m, r):
    """Diagonal ranges [lo(q), hi(q)] enumerate exactly the in-band cells (tslearn's mask, the
    reference's ``in_band``); ``base(q) + s`` maps the n*m grid cells one-to-one, in order,
    onto [0, n*m); the offset cell chosen by the forward lies on its diagonal."""
    g = _Geom(n, m, r)
    S, L = g.S, g.L
    from_diagonals, index = set(), []
    for q in range(S + L - 1):
        lo, hi = g.lo(q), g.hi(q)
        for s in range(lo, hi + 1):
            from_diagonals.add((s, q - s))
        if lo <= hi:
            star = (2 * q * S + (S + L)) // (2 * (S + L))
            assert lo <= min(max(star, lo), hi) <= hi
        for s in range(g.grid_lo(q), min(S - 1, q) + 1):
            index.append(g.base(q) + s)
    oriented = {((i, j) if n <= m else (j, i)) for i in range(n) for j in range(m)
                if ref_sd.in_band(i, j, n, m, r)}
    assert from_diagonals == oriented
    assert index == list(range(n * m))
    sv, lv = np.meshgrid(np.arange(-1, S + 1), np.arange(-1, L + 1), indexing="ij")
    assert {(int(s), int(l)) for s, l in zip(sv[g.valid(sv, lv)], lv[g.valid(sv, lv)])} == oriented


def _numpy_wavefront(C, gamma, r, dtype):
    """The kernels' algorithm in NumPy, vectorised over a diagonal: compact Rt table,
    float64 offsets, normalised backward weights. Returns (value, E) for one 2-D C."""
    n, m = C.shape
    g = _Geom(n, m, r)
    S, L = g.S, g.L
    Co = (C if n <= m else C.T).astype(dtype)
    T = np.dtype(dtype).type
    nd = S + L - 1
    rt = np.full(n * m, np.nan, dtype)
    offs = np.zeros(nd + 2)
    inf = T(np.inf)

    def pred(q, s, l, shift):
        ok = g.valid(s, l)
        out = np.full(s.shape, inf)
        out[ok] = rt[g.base(q) + s[ok]] + shift
        return out

    o = 0.0
    for q in range(nd):
        s = np.arange(g.lo(q), g.hi(q) + 1)
        l = q - s
        oq = o
        a = pred(q - 2, s - 1, l - 1, T(offs[q] - oq)) if q >= 2 else np.full(s.shape, inf)
        if q == 0:
            a[:] = T(-oq)
        b = pred(q - 1, s - 1, l, T(offs[q + 1] - oq)) if q >= 1 else np.full(s.shape, inf)
        c = pred(q - 1, s, l - 1, T(offs[q + 1] - oq)) if q >= 1 else np.full(s.shape, inf)
        P = np.stack([a, b, c])
        rmin = P.min(0)
        with np.errstate(invalid="ignore"):
            sm = rmin - T(gamma) * np.log(np.exp((rmin - P) / T(gamma)).sum(0))
        sm = np.where(rmin == inf, inf, sm)
        v = (Co[s, l] + sm).astype(dtype)
        rt[g.base(q) + s] = v
        offs[q + 2] = oq
        if s.size:
            star = min(max((2 * q * S + (S + L)) // (2 * (S + L)), s[0]), s[-1])
            vs = v[star - s[0]]
            o = oq + float(vs) if np.isfinite(vs) else oq
    value = offs[nd + 1] + float(rt[g.base(nd - 1) + S - 1])
    E = np.zeros((S, L), dtype)
    if not np.isfinite(value):
        return value, (E if n <= m else E.T)

    def w(k, U):
        rmin = U.min(0)
        with np.errstate(invalid="ignore"):
            W = np.exp((rmin - U) / T(gamma))
            out = W[k] / W.sum(0)
        return np.where(rmin == inf, T(0), out)

    E[S - 1, L - 1] = 1
    for q in range(nd - 2, -1, -1):
        s = np.arange(g.lo(q), g.hi(q) + 1)
        l = q - s
        e1, e2 = T(offs[q + 1] - offs[q + 2]), T(offs[q + 3] - offs[q + 2])
        x = rt[g.base(q) + s]
        acc = np.zeros(s.shape, dtype)
        for ds, dl, k, U in (
                (1, 0, 1, lambda: (pred(q - 1, s, l - 1, e1), x, pred(q, s + 1, l - 1, T(0)))),
                (0, 1, 1, lambda: (pred(q - 1, s - 1, l, e1), x, pred(q, s - 1, l + 1, T(0)))),
                (1, 1, 0, lambda: (x, pred(q + 1, s, l + 1, e2), pred(q + 1, s + 1, l, e2)))):
            ok = g.valid(s + ds, l + dl)
            et = np.zeros(s.shape, dtype)
            et[ok] = E[(s + ds)[ok], (l + dl)[ok]]
            acc += np.where(et != 0, et * w(k, np.stack(U())), T(0))
        E[s, l] = acc
    return value, (E if n <= m else E.T)


@pytest.mark.parametrize("shape,r", [((5, 7), None), ((9, 4), None), ((12, 12), 0), ((8, 15), 2),
                                     ((15, 8), 1), ((1, 6), None), ((7, 1), None)])
def test_numpy_wavefront_matches_the_reference(shape, r):
    rng = np.random.default_rng(sum(shape))
    C = rng.random(shape)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        v, E = _numpy_wavefront(C, 0.2, r, dtype)
        vr, Er = ref_sd.soft_dtw_grad(C.astype(dtype).astype(np.float64), 0.2, bandwidth=r)
        assert abs(v - float(vr)) <= tol * abs(float(vr))
        assert np.abs(E - Er).max() <= tol


# =========================================================================== CPU emulator of the CUDA sources

# The emulator itself (shim, host build, NumPy standing in for CuPy) is tests/cuda_emulator.py,
# shared with tests/test_backend_cupy_preference.py.


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return cuda_emulator.build(tmp_path_factory)


@pytest.fixture
def emu(emulator, monkeypatch):
    """The backend modules with NumPy for CuPy and the emulator for the GPU."""
    ns = cuda_emulator.patch_backend(monkeypatch, emulator)
    monkeypatch.setattr(ns.sd, "THREADS", 32)   # short blocks: threads stride over longer diagonals
    return ns


def _cost(rng, B, N, M, d=3):
    X, Y = rng.normal(size=(B, N, d)), rng.normal(size=(B, M, d))
    return ((X[:, :, None] - Y[:, None]) ** 2).sum(-1)


def _pad_nan(A, lx, ly=None):
    A = A.copy()
    for b in range(A.shape[0]):
        A[b, lx[b]:] = np.nan
        if ly is not None:
            A[b, :, ly[b]:] = np.nan
    return A


def _r64(a, dtype):
    return None if a is None else a.astype(dtype).astype(np.float64)


@pytest.mark.parametrize("B,N,M,bw", [(1, 3, 4, None), (2, 7, 5, None), (3, 40, 37, None),
                                      (2, 13, 40, 2), (2, 20, 20, 0), (2, 35, 20, 3), (2, 9, 30, 0)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_emulated_soft_dtw_matches_reference(emu, B, N, M, bw, dtype):
    rng = np.random.default_rng(B * 100 + N + M)
    lx, ly = rng.integers(1, N + 1, B), rng.integers(1, M + 1, B)
    C = _pad_nan(_cost(rng, B, N, M), lx, ly).astype(dtype)
    v, E = emu.sd.soft_dtw_grad(C, 0.1, len_x=lx, len_y=ly, bandwidth=bw)
    v_only = emu.sd.soft_dtw(C, 0.1, len_x=lx, len_y=ly, bandwidth=bw)
    vr, Er = ref_sd.soft_dtw_grad(_r64(C, dtype), 0.1, len_x=lx, len_y=ly, bandwidth=bw)
    rtol, atol = (1e-12, 1e-12) if dtype == "float64" else (1e-6, 1e-5)
    assert v.dtype == dtype and E.dtype == dtype and E.shape == C.shape
    np.testing.assert_allclose(v, vr, rtol=rtol)
    np.testing.assert_array_equal(v_only, v)
    assert not np.isnan(E).any()                                   # NaN padding never read
    np.testing.assert_allclose(E, Er, rtol=0, atol=atol)


def test_emulated_global_memory_fallback_equals_shared_memory(emu, monkeypatch):
    rng = np.random.default_rng(7)
    C = rng.random((3, 33, 45))
    v1, E1 = emu.sd.soft_dtw_grad(C, 0.05, bandwidth=4)
    assert emu.calls[-1][3] > 0                                    # shared-memory ring
    monkeypatch.setattr(_Smem, "limit", 0)
    v2, E2 = emu.sd.soft_dtw_grad(C, 0.05, bandwidth=4)
    assert emu.calls[-1][3] == 0                                   # global scratch ring
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(E1, E2)
    vr, Er = ref_sd.soft_dtw_grad(C, 0.05, bandwidth=4)
    np.testing.assert_allclose(v2, vr, rtol=1e-12)
    np.testing.assert_allclose(E2, Er, atol=1e-12)


def test_emulated_inf_and_nan_costs(emu):
    rng = np.random.default_rng(3)
    C = rng.random((3, 6, 7))
    C[0, 2, :] = np.inf              # a blocked row: no finite path, value +inf and E = 0
    C[1, 1:3, 2:5] = np.inf          # forbidden cells, the value stays finite
    C[2, 3, 3] = np.nan              # NaN inside the valid block propagates
    v, E = emu.sd.soft_dtw_grad(C, 0.3)
    vr, Er = ref_sd.soft_dtw_grad(C, 0.3)
    assert np.isposinf(v[0]) and np.isfinite(v[1]) and np.isnan(v[2])
    np.testing.assert_allclose(v[1], vr[1], rtol=1e-12)
    assert not E[0].any()
    np.testing.assert_array_equal(np.isnan(E), np.isnan(Er))
    np.testing.assert_allclose(np.nan_to_num(E), np.nan_to_num(Er), atol=1e-12)


@pytest.mark.parametrize("shape,bw", [((1, 5), None), ((6, 1), None), ((1, 1), None), ((9, 9), 0)])
def test_emulated_soft_dtw_closed_forms(emu, shape, bw):
    C = np.random.default_rng(5).random(shape)
    v, E = emu.sd.soft_dtw_grad(C, 1.0, bandwidth=bw)
    assert v.shape == ()
    np.testing.assert_allclose(v, np.trace(C) if bw == 0 else C.sum(), rtol=1e-12)
    np.testing.assert_allclose(E, np.eye(*shape) if bw == 0 else np.ones(shape), atol=1e-14)


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("bw", [None, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_emulated_divergence_ragged_zero_lengths_penalty(emu, kind, bw, dtype):
    rng = np.random.default_rng(11)
    B, N, M, d = 4, 12, 9, 3
    lx, ly = np.array([0, 5, 12, 3]), np.array([4, 0, 9, 7])
    X = _pad_nan(rng.normal(size=(B, N, d)), lx).astype(dtype)
    Y = _pad_nan(rng.normal(size=(B, M, d)), ly).astype(dtype)
    P = _pad_nan(0.1 * rng.random((B, N, M)), lx, ly).astype(dtype)
    kw = dict(kind=kind, len_x=lx, len_y=ly, bandwidth=bw)
    v, dX, dY = emu.sd.soft_dtw_divergence_grad(X, Y, 0.2, penalty=P, **kw)
    v_only = emu.sd.soft_dtw_divergence(X, Y, 0.2, penalty=P, **kw)
    vr, dXr, dYr = ref_sd.soft_dtw_divergence_grad(_r64(X, dtype), _r64(Y, dtype), 0.2,
                                                   penalty=_r64(P, dtype), **kw)
    tol = 1e-12 if dtype == "float64" else 2e-5
    assert v.dtype == dX.dtype == dY.dtype == dtype
    np.testing.assert_array_equal(v_only, v)
    assert v[0] == 0 and v[1] == 0 and not dX[:2].any() and not dY[:2].any()
    for got, want in ((v, vr), (dX, dXr), (dY, dYr)):
        assert not np.isnan(got).any()
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_emulated_divergence_unbatched_and_identity(emu):
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3))
    for kind in ("sqeuclidean", "cosine"):
        got = emu.sd.soft_dtw_divergence_grad(X, Y, 0.5, kind=kind)
        want = ref_sd.soft_dtw_divergence_grad(X, Y, 0.5, kind=kind)
        assert got[0].shape == ()
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        assert float(emu.sd.soft_dtw_divergence(X, X.copy(), 0.5, kind=kind)) == 0.0


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("batched", [False, True])
def test_emulated_costs_and_vjps(emu, kind, batched):
    rng = np.random.default_rng(4)
    shp = ((2,) if batched else ())
    X, Y = rng.normal(size=shp + (5, 3)), rng.normal(size=shp + (7, 3))
    X[..., 0, :] = 0.0                                 # the cosine norm floor
    G = rng.random(shp + (5, 7))
    np.testing.assert_allclose(emu.sd.sdtw_cost(X, Y, kind=kind), ref_sd.sdtw_cost(X, Y, kind=kind),
                               atol=1e-13)
    for a, b in zip(emu.sd.sdtw_cost_vjp(X, Y, G, kind=kind),
                    ref_sd.sdtw_cost_vjp(X, Y, G, kind=kind)):
        np.testing.assert_allclose(a, b, atol=1e-13)


def test_emulated_float32_accuracy_guard_moderate_size(emu):
    """softdtw.md sec. 8.3 set-up (8-d Gaussian points / 8, squared Euclidean) at n = m = 256:
    float64 offsets keep the float32 value and E close to the float64 reference."""
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(256, 8)) / 8, rng.normal(size=(256, 8)) / 8
    C = ((X[:, None] - Y[None]) ** 2).sum(-1).astype(np.float32)
    for gamma in (0.1, 0.01):
        v, E = emu.sd.soft_dtw_grad(C, gamma)
        vr, Er = ref_sd.soft_dtw_grad(C.astype(np.float64), gamma)
        assert abs(float(v) - float(vr)) <= 1e-6 * abs(float(vr))
        assert np.abs(E - Er).max() <= 1e-4


def _ot_inputs(kw, dtype):
    """The case cast to ``dtype`` for the backend and, for the reference, the same rounded
    values in float64 with the weights renormalised (the reference checks sums to 1e-8)."""
    got, ref = {}, {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            got[k] = v.astype(dtype)
            ref[k] = _r64(v, dtype)
            if k in ("a", "b"):
                ref[k] = ref[k] / ref[k].sum(-1, keepdims=True)
        elif isinstance(v, tuple):
            got[k] = tuple(x.astype(dtype) for x in v)
            ref[k] = tuple(_r64(x, dtype) for x in v)
        else:
            got[k] = ref[k] = v
    return got, ref


def _sinkhorn_cases():
    rng = np.random.default_rng(0)
    for fn, build in (("sinkhorn_log", ot_cases.cases_sinkhorn), ("sinkhorn", ot_cases.cases_sinkhorn_std)):
        for scale in ("tiny", "small"):
            for case in build(rng, scale):
                yield pytest.param(fn, case, id=f"{fn}-{case.label}")


@pytest.mark.slow
@pytest.mark.parametrize("fn,case", list(_sinkhorn_cases()))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_emulated_sinkhorn_matches_reference(emu, fn, case, dtype):
    got_kw, ref_kw = _ot_inputs(case.inputs(), dtype)
    got, want = getattr(emu.ot, fn)(**got_kw), getattr(ref_ot, fn)(**ref_kw)
    n, m = want.plan.shape[-2:]
    eps = case.inputs()["eps"]
    rtol, atol = (1e-12, 1e-12) if dtype == "float64" else ot_cases.TOL["float32"]["*"]
    assert isinstance(got, ref_ot.SinkhornResult)
    assert (got.n_iter, got.converged, got.status) == (want.n_iter, want.converged, want.status)
    assert got.plan.dtype == dtype and got.err.shape == ()
    np.testing.assert_allclose(got.plan * (n * m), want.plan * (n * m), rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.f / eps, want.f / eps, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got.g / eps, want.g / eps, rtol=rtol, atol=atol)


@pytest.mark.parametrize("fn", ["sinkhorn_log", "sinkhorn"])
@pytest.mark.parametrize("tol", [1e-6, 1e-12])
def test_emulated_sinkhorn_convergence_cadence(emu, fn, tol):
    C = ot_cases._cloud_cost(np.random.default_rng(1), (), 20, 30)
    got = getattr(emu.ot, fn)(None, None, C, 0.1, tol=tol, check_every=7, max_iter=500)
    want = getattr(ref_ot, fn)(None, None, C, 0.1, tol=tol, check_every=7, max_iter=500)
    assert (got.n_iter, got.converged, got.status) == (want.n_iter, True, "converged")
    np.testing.assert_allclose(float(got.err), float(want.err), rtol=1e-6, atol=1e-15)
    np.testing.assert_allclose(got.plan, want.plan, atol=1e-14)


def test_emulated_standard_domain_guard_matches_reference(emu):
    """Numerical errors at non-check iterations: the device-side guard returns the same
    iterate, count and status as the reference, which stops at the bad iteration itself."""
    rng = np.random.default_rng(0)
    seen = set()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for _ in range(400):
            n, m = rng.integers(2, 7, 2)
            C = rng.random((n, m)) * rng.uniform(1, 5)
            C[rng.integers(n), :] += rng.uniform(60, 75)
            C[:, rng.integers(m)] += rng.uniform(0, 10)
            want = ref_ot.sinkhorn(None, None, C, 0.1, max_iter=300, tol=0)
            if want.status != "numerical_error" or want.n_iter in seen:
                continue
            seen.add(want.n_iter)
            got = emu.ot.sinkhorn(None, None, C, 0.1, max_iter=300, tol=0)
            assert (got.n_iter, got.status, got.converged) == (want.n_iter, want.status, False)
            np.testing.assert_allclose(got.plan, want.plan, atol=1e-14)
            np.testing.assert_allclose(float(got.err), float(want.err), rtol=1e-12)
            if len(seen) >= 4 and any(k % 10 for k in seen):
                break
    assert any(k % 10 for k in seen), f"no mid-run numerical error was produced: {seen}"


@pytest.mark.slow
def test_emulated_ot_costs_grads_divergence_pairwise_emd(emu, monkeypatch):
    monkeypatch.setattr(emu.ot, "ROW_WARPS", 2)    # smaller blocks: fewer emulated threads
    monkeypatch.setattr(emu.ot, "COL_ROWS", 2)
    rng = np.random.default_rng(9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for scale in ("tiny", "small"):
            for c in ot_cases.cases_cost(rng, scale):
                np.testing.assert_allclose(emu.ot.sinkhorn_cost(**c.inputs()),
                                           ref_ot.sinkhorn_cost(**c.inputs()), atol=1e-12)
            for c in ot_cases.cases_cost_grad(rng, scale):
                for a, b in zip(emu.ot.sinkhorn_cost_grad(**c.inputs()),
                                ref_ot.sinkhorn_cost_grad(**c.inputs())):
                    np.testing.assert_allclose(a, b, atol=1e-12)
            for c in ot_cases.cases_divergence(rng, scale):
                np.testing.assert_allclose(emu.ot.sinkhorn_divergence(**c.inputs()),
                                           ref_ot.sinkhorn_divergence(**c.inputs()), atol=1e-12)
            for c in ot_cases.cases_pairwise(rng, scale):
                np.testing.assert_allclose(emu.ot.pairwise_cost(**c.inputs()),
                                           ref_ot.pairwise_cost(**c.inputs()), atol=1e-12)
            for c in ot_cases.cases_emd(rng, scale):
                for a, b in zip(emu.ot.emd(**c.inputs()), ref_ot.emd(**c.inputs())):
                    np.testing.assert_allclose(a, b, atol=1e-12)


def test_emulated_ot_nan_refused_and_inf_allowed(emu):
    C = ot_cases._cloud_cost(np.random.default_rng(2), (), 5, 7)
    Cn = C.copy()
    Cn[1, 2] = np.nan
    with pytest.raises(ValueError, match="C contains NaN"):
        emu.ot.sinkhorn_log(None, None, Cn, 0.1)
    Ci = C.copy()
    Ci[1, 2] = np.inf
    got = emu.ot.sinkhorn_log(None, None, Ci, 0.1, tol=0, max_iter=30)
    want = ref_ot.sinkhorn_log(None, None, Ci, 0.1, tol=0, max_iter=30)
    assert got.plan[1, 2] == 0
    np.testing.assert_allclose(got.plan, want.plan, atol=1e-14)
    np.testing.assert_allclose(emu.ot.sinkhorn_cost(None, None, Ci, 0.1, kind="linear", tol=0,
                                                    max_iter=30),
                               ref_ot.sinkhorn_cost(None, None, Ci, 0.1, kind="linear", tol=0,
                                                    max_iter=30), atol=1e-14)


# =========================================================================== GPU


def _scaled_cost(rng, B, N, M, d=8):
    """Squared-Euclidean costs of d-dimensional Gaussian points scaled by 1/d (sec. 8.3)."""
    X, Y = rng.normal(size=(B, N, d)) / d, rng.normal(size=(B, M, d)) / d
    return ((X[:, :, None] - Y[:, None]) ** 2).sum(-1)


@pytest.mark.gpu
def test_gpu_kernels_build_on_the_device(cp, bk):
    """Every kernel loads on the device; report registers, spills and static shared memory."""
    rows = []
    for name in K.KERNELS:
        fn = K.function(name)
        rows.append(f"{name}: {fn.num_regs} regs, {fn.local_size_bytes} B local, "
                    f"{fn.shared_size_bytes} B static smem")
        assert fn.num_regs > 0
    print("\n".join(rows))
    assert "sm_" in bk.describe()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol,atol", [("float64", 1e-10, 1e-9), ("float32", 1e-5, 1e-4)])
def test_gpu_soft_dtw_matches_reference_and_tslearn(cp, bk, dtype, rtol, atol):
    tslearn = pytest.importorskip("tslearn.metrics", reason="tslearn is not installed")
    rng = np.random.default_rng(0)
    B, N, M = 4, 96, 80
    lx, ly = np.array([96, 50, 7, 81]), np.array([80, 80, 33, 2])
    C = _pad_nan(_scaled_cost(rng, B, N, M), lx, ly)
    for bw in (None, 5):
        v, E = bk.soft_dtw_grad(cp.asarray(C.astype(dtype)), 0.1, len_x=cp.asarray(lx),
                                len_y=cp.asarray(ly), bandwidth=bw)
        vr, Er = ref_sd.soft_dtw_grad(_r64(C, dtype), 0.1, len_x=lx, len_y=ly, bandwidth=bw)
        np.testing.assert_allclose(cp.asnumpy(v), vr, rtol=rtol)
        np.testing.assert_allclose(cp.asnumpy(E), Er, rtol=0, atol=atol)
    x, y = rng.normal(size=(60, 3)), rng.normal(size=(45, 3))
    for bw in (None, 4):
        extra = {} if bw is None else dict(global_constraint="sakoe_chiba", sakoe_chiba_radius=bw)
        E_ts, v_ts = tslearn.soft_dtw_alignment(x, y, gamma=0.1, **extra)
        v, E = bk.soft_dtw_grad(bk.sdtw_cost(cp.asarray(x), cp.asarray(y)), 0.1, bandwidth=bw)
        np.testing.assert_allclose(float(v), v_ts, rtol=1e-8)
        np.testing.assert_allclose(cp.asnumpy(E), E_ts, atol=1e-8)


@pytest.mark.gpu
def test_gpu_length_8192_no_cap(cp, bk):
    """One pair of 8192 x 8000 (no length cap): float32 vs float64 on the device, alignment
    invariants, the global-memory ring equal to the shared-memory one bit for bit, and the
    closed form of bandwidth 0 (value = trace, E = identity) at 8192 x 8192."""
    from backends.cupy import softdtw as bsd

    rng = np.random.default_rng(1)
    n, m = 8192, 8000
    C64 = cp.asarray(rng.random((n, m)))
    C32 = C64.astype(cp.float32)
    v64, E64 = bk.soft_dtw_grad(C64, 0.1)
    v32, E32 = bk.soft_dtw_grad(C32, 0.1)
    v64, v32 = float(v64), float(v32)
    # bounds ~200x / 10x the float32 errors of the kernels' algorithm at this size, measured with
    # the NumPy wavefront of this file (value 4e-9 relative, E 1.9e-5)
    assert math.isfinite(v64) and abs(v32 - v64) <= 1e-6 * abs(v64)
    assert float(cp.abs(E32.astype(cp.float64) - E64).max()) <= 2e-4
    E = E64
    assert float(E[0, 0]) == pytest.approx(1.0, abs=1e-9)
    assert float(E[-1, -1]) == 1.0
    assert float(E.min()) >= 0.0 and float(E.max()) <= 1.0 + 1e-9
    assert float(E.sum(axis=1).min()) >= 1.0 - 1e-8 and float(E.sum(axis=0).min()) >= 1.0 - 1e-8
    jobs, rt_words, off_words = bsd.job_table(0, m, n, m)
    for dt, Cd in (("float32", C32), ("float64", C64)):
        a = bsd.run_dp(Cd.reshape(-1), jobs, rt_words, off_words, 0.1, -1, True)
        b = bsd.run_dp(Cd.reshape(-1), jobs, rt_words, off_words, 0.1, -1, True, force_scratch=True)
        assert float(a[0][0]) == float(b[0][0]), dt
        assert bool(cp.array_equal(a[1], b[1])), dt
    Csq = cp.asarray(rng.random((8192, 8192)))
    v, E = bk.soft_dtw_grad(Csq, 0.1, bandwidth=0)
    assert float(v) == pytest.approx(float(cp.trace(Csq)), rel=1e-12)
    assert bool(cp.array_equal(E, cp.eye(8192)))


@pytest.mark.gpu
def test_gpu_global_memory_fallback_beyond_the_shared_memory_limit(cp, bk):
    """min(n, m) = 20000 in float32 needs 240 KB of live diagonals (> 227 KB per block): the
    kernels switch to the global ring automatically; closed form of bandwidth 0."""
    from backends.cupy import _kernels

    n = 20000
    assert 3 * n * 4 > _kernels.dynamic_smem_limit("sdtw_fwd_f32")
    rng = np.random.default_rng(2)
    C = cp.asarray(rng.random((n, n), dtype=np.float32))
    v, E = bk.soft_dtw_grad(C, 0.1, bandwidth=0)
    assert float(v) == pytest.approx(float(cp.trace(C.astype(cp.float64))), rel=1e-5)
    assert bool(cp.array_equal(E, cp.eye(n, dtype=cp.float32)))
    del C, E
    cp.get_default_memory_pool().free_all_blocks()


@pytest.mark.gpu
@pytest.mark.parametrize("gamma", [0.1, 0.01])
def test_gpu_float32_accuracy_guard_1024(cp, bk, gamma):
    """softdtw.md sec. 12 item 9: n = m = 1024, max |E32 - E64| <= 1e-4, value rtol <= 1e-6
    against the float64 reference."""
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(1024, 8)) / 8, rng.normal(size=(1024, 8)) / 8
    C = ((X[:, None] - Y[None]) ** 2).sum(-1).astype(np.float32)
    v32, E32 = bk.soft_dtw_grad(cp.asarray(C), gamma)
    vr, Er = ref_sd.soft_dtw_grad(C.astype(np.float64), gamma)
    assert abs(float(v32) - float(vr)) <= 1e-6 * abs(float(vr))
    assert np.abs(cp.asnumpy(E32) - Er).max() <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_nan_padding_does_not_leak(cp, bk, dtype):
    """Batched ragged results equal the per-pair results on the sliced inputs, bit for bit;
    E is exactly 0 in the padding."""
    rng = np.random.default_rng(3)
    B, N, M = 5, 130, 70
    lx, ly = np.array([130, 1, 64, 99, 17]), np.array([3, 70, 70, 41, 1])
    C = _pad_nan(rng.random((B, N, M)), lx, ly).astype(dtype)
    v, E = bk.soft_dtw_grad(cp.asarray(C), 0.2, len_x=cp.asarray(lx), len_y=cp.asarray(ly),
                            bandwidth=6)
    v, E = cp.asnumpy(v), cp.asnumpy(E)
    assert not np.isnan(v).any() and not np.isnan(E).any()
    for b in range(B):
        vb, Eb = bk.soft_dtw_grad(cp.asarray(np.ascontiguousarray(C[b, :lx[b], :ly[b]])), 0.2,
                                  bandwidth=6)
        assert float(vb) == v[b]
        np.testing.assert_array_equal(cp.asnumpy(Eb), E[b, :lx[b], :ly[b]])
        assert not E[b, lx[b]:].any() and not E[b, :, ly[b]:].any()
    X = _pad_nan(rng.normal(size=(B, N, 4)), lx).astype(dtype)
    Y = _pad_nan(rng.normal(size=(B, M, 4)), ly).astype(dtype)
    val, dX, dY = bk.soft_dtw_divergence_grad(cp.asarray(X), cp.asarray(Y), 0.2,
                                              len_x=cp.asarray(lx), len_y=cp.asarray(ly))
    for arr in (val, dX, dY):
        assert not bool(cp.isnan(arr).any())


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype,rtol,atol", [("float64", 1e-10, 1e-9), ("float32", 5e-4, 1e-4)])
def test_gpu_divergence_batched_ragged(cp, bk, kind, dtype, rtol, atol):
    rng = np.random.default_rng(4)
    B, N, M, d = 6, 64, 48, 8
    lx, ly = np.array([0, 64, 30, 1, 64, 17]), np.array([12, 0, 48, 1, 40, 48])
    X = _pad_nan(rng.normal(size=(B, N, d)) / np.sqrt(d), lx).astype(dtype)
    Y = _pad_nan(rng.normal(size=(B, M, d)) / np.sqrt(d), ly).astype(dtype)
    P = _pad_nan(0.1 * rng.random((B, N, M)), lx, ly).astype(dtype)
    for bw, pen in ((None, None), (3, P)):
        got = bk.soft_dtw_divergence_grad(cp.asarray(X), cp.asarray(Y), 0.1, kind=kind,
                                          len_x=cp.asarray(lx), len_y=cp.asarray(ly),
                                          penalty=None if pen is None else cp.asarray(pen),
                                          bandwidth=bw)
        want = ref_sd.soft_dtw_divergence_grad(_r64(X, dtype), _r64(Y, dtype), 0.1, kind=kind,
                                               len_x=lx, len_y=ly, penalty=_r64(pen, dtype),
                                               bandwidth=bw)
        for g, w in zip(got, want):
            np.testing.assert_allclose(cp.asnumpy(g), w, rtol=rtol, atol=atol)
        assert not bool(got[1][0].any()) and not bool(got[2][1].any())   # zero-length pairs


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gpu_sinkhorn_log_2048(cp, bk, dtype):
    """n = m = 2048 against the reference: fixed iterations (plan*n*m and f/eps) and a
    converging run (same iteration count, status and error)."""
    rng = np.random.default_rng(5)
    n = m = 2048
    C = ot_cases._cloud_cost(rng, (), n, m)
    a, b = ot_cases._simplex(rng, (n,)), ot_cases._simplex(rng, (m,))
    got_kw, ref_kw = _ot_inputs(dict(a=a, b=b, C=C), dtype)
    dev = {k: cp.asarray(v) for k, v in got_kw.items()}
    atol = 1e-10 if dtype == "float64" else 1e-5
    rtol = 1e-10 if dtype == "float64" else 5e-4
    got = bk.sinkhorn_log(dev["a"], dev["b"], dev["C"], 0.05, max_iter=30, tol=0.0)
    want = ref_ot.sinkhorn_log(ref_kw["a"], ref_kw["b"], ref_kw["C"], 0.05, max_iter=30, tol=0.0)
    assert got.n_iter == want.n_iter == 30 and got.plan.dtype == dtype
    np.testing.assert_allclose(cp.asnumpy(got.plan) * n * m, want.plan * n * m, rtol=rtol, atol=atol)
    np.testing.assert_allclose(cp.asnumpy(got.f) / 0.05, want.f / 0.05, rtol=rtol, atol=atol)
    np.testing.assert_allclose(cp.asnumpy(got.g) / 0.05, want.g / 0.05, rtol=rtol, atol=atol)
    if dtype == "float64":
        # converges at the check of iteration 30 (err 4.7e-10 < 1e-9 = tol; 8 s on the CPU)
        got = bk.sinkhorn_log(dev["a"], dev["b"], dev["C"], 0.02, max_iter=2000, tol=1e-9)
        want = ref_ot.sinkhorn_log(ref_kw["a"], ref_kw["b"], ref_kw["C"], 0.02, max_iter=2000,
                                   tol=1e-9)
        assert (got.n_iter, got.status) == (want.n_iter, want.status) == (want.n_iter, "converged")
        np.testing.assert_allclose(float(got.err), float(want.err), rtol=1e-3)


@pytest.mark.gpu
def test_gpu_sinkhorn_log_peak_memory(cp, bk):
    """ot.md sec. 8 target: the fused solver needs at most 1.1 x size(C) of device memory on
    top of its input (the plan it returns, which has C's size, included; (f - C)/eps is never
    formed). Measured as the growth of the default pool's held bytes (bk.peak_memory)."""
    n = m = 4096
    C = cp.asarray(ot_cases._cloud_cost(np.random.default_rng(6), (), n, m).astype(np.float32))
    bk.synchronize()
    bk.reset_peak_memory()
    base = bk.peak_memory()
    res = bk.sinkhorn_log(None, None, C, 0.05, max_iter=20, tol=0.0)
    bk.synchronize()
    extra = bk.peak_memory() - base
    assert res.plan.shape == C.shape
    assert extra <= 1.1 * C.nbytes, f"{extra / C.nbytes:.3f} x size(C)"
