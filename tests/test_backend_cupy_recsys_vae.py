"""CuPy backend of the recsys_vae family (``backends/cupy/recsys_vae.py``: Mult-VAE arXiv
1802.05814, PIA arXiv 2511.06781) on the CPU emulator of ``tests/cuda_emulator.py``: the real
CUDA sources of the ``recsys_vae`` kernel module compiled with g++, the glue on NumPy.

* every tiny case of the model ops (``refimpl/_cases/recsys_vae.py``) vs the float64 reference,
  float32 and float64, at the registry tolerances, with the row kernel launched;
* CSR X (scipy CSR standing in for cupyx CSR in the emulator) equals dense X;
* the metrics equal the reference exactly (float64) on tie-free and on tied scores, CSR == dense;
* one host read per call (``ns.reads``), bad inputs raise the reference's messages;
* ``gpu`` tests run the bench sizes on a real device against the reference.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.sparse as sp

import cuda_emulator
from cuda_emulator import bk, cp  # noqa: F401 (GPU fixtures)
from refimpl import _multvae as refm
from refimpl import _recsys_eval as refe
from refimpl._cases import recsys_vae as C

K = cuda_emulator.K
FUNCS = ("multvae_forward", "multvae_loss", "multvae_value_and_grad", "anneal_beta",
         "item_centroids", "pia_anchor_loss", "pia_anchor_grad", "gaussian_w2",
         "recall_at_k", "ndcg_at_k")


def _ref(name):
    return getattr(refm, name, None) or getattr(refe, name)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return cuda_emulator.build(tmp_path_factory)


@pytest.fixture
def emu(emulator, monkeypatch):
    ns = cuda_emulator.patch_backend(monkeypatch, emulator)
    monkeypatch.setattr(ns.rv, "ROW_THREADS", 64)     # 2 warps per row block (few threads)
    monkeypatch.setattr(ns.rv, "ROW_GRID_CAP", 3)     # blocks grid-stride over rows
    monkeypatch.setattr(ns.rv, "NDCG_THREADS", 32)
    monkeypatch.setattr(ns.rv, "NDCG_GRID_CAP", 2)
    return ns


_cast = cuda_emulator.cast_floats


def _flat(name, res):
    if name == "multvae_value_and_grad":
        return C.outputs_value_and_grad(res, {})
    if isinstance(res, tuple):
        return {str(i): r for i, r in enumerate(res)}
    return {"0": res}


def _tol(dt):
    return C.TOL[dt]["*"]


def _assert_close(got, want, dt, what=""):
    rtol, atol = _tol(dt)
    for key, w in want.items():
        g = np.asarray(got[key], dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        assert g.shape == w.shape, (what, key)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"{what} {key}")


MODEL_CASES = {"multvae_forward": C.cases_multvae_forward,
               "multvae_loss": C.cases_multvae_loss,
               "multvae_value_and_grad": C.cases_multvae_value_and_grad,
               "pia_anchor_loss": C.cases_pia_anchor_loss,
               "pia_anchor_grad": C.cases_pia_anchor_loss}


def _case_kw(case):
    kw = case.inputs() if callable(getattr(case, "inputs", None)) else case.kwargs
    return kw


# =========================================================================== structure


def test_signatures_match_the_reference():
    from backends.cupy import recsys_vae as R

    for name in FUNCS:
        assert inspect.signature(getattr(R, name)) == inspect.signature(_ref(name)), name
    assert set(R.__all__) == set(FUNCS)


def test_module_is_registered_with_its_kernels():
    assert "recsys_vae" in K.MODULES
    names = {k.name for k in K.KERNELS.values() if k.module == "recsys_vae"}
    assert names == {f"{t}_{s}" for t in ("rv_nll_rows", "rv_ndcg_rows") for s in ("f32", "f64")}
    src = K.module_source("recsys_vae")
    from backends.cupy import recsys_vae as R
    assert "#define RV_MAXW 32 " in src and R.ROW_THREADS <= 32 * 32


def test_recsys_module_compiles_with_nvrtc_for_sm90():
    """The module through NVRTC for compute_90 (skips without NVRTC): every instantiation is
    a PTX entry (the recursive pairwise sum included)."""
    import test_backend_cupy as T

    nvrtc = T._nvrtc()
    ks = {s.module: s for s in K.kernel_sources()}["recsys_vae"]
    options = tuple(ks.options) + tuple(K.CUPY_IMPLICIT_OPTIONS) + ("-arch=compute_90",)
    ok, log, ptx = T._compile_ptx(nvrtc, ks.source, ks.module, options)
    assert ok, log
    for name in ks.names:
        assert f".entry {name}(" in ptx


# =========================================================================== model (emulated)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_emulated_tiny_cases_match_the_reference(emu, name, dtype):
    cases = MODEL_CASES[name](np.random.default_rng(0), "tiny")
    assert cases
    for case in cases:
        kw = _case_kw(case)
        if name == "pia_anchor_grad":
            kw = {k: v for k, v in kw.items() if k != "reduction"}
        low = _cast(kw, dtype)
        want = _flat(name, _ref(name)(**_cast(low, "float64")))
        emu.reads.clear()
        got = _flat(name, getattr(emu.rv, name)(**low))
        assert len(emu.reads) == 1, emu.reads                # the one host read (flags)
        for v in got.values():
            assert np.asarray(v).dtype == np.dtype(dtype)
        _assert_close(got, want, dtype, f"{name} {case.label}")
    if name in ("multvae_loss", "multvae_value_and_grad"):
        assert K.kernel_name("rv_nll_rows", dtype) in {c[0] for c in emu.calls}


@pytest.mark.parametrize("mode", ["dropout", "bernoulli", "eval"])
def test_emulated_value_and_grad_csr_equals_dense(emu, mode):
    rng = np.random.default_rng(1)
    U, I, H, d = 5, 40, 6, 3
    X = C.interactions(rng, U, I, 0.2)
    p = C.params(rng, I, H, d)
    E = C.anchors(rng, I, d)
    mask, eps = refm.multvae_draw(rng, U, I, d, 0.5)
    if mode == "eval":
        mask = eps = None
    kw = dict(beta=0.3, mask=mask, eps=eps, keep_prob=0.5,
              mask_mode="dropout" if mode == "eval" else mode, E=E, lam_A=0.7)
    want = C.outputs_value_and_grad(refm.multvae_value_and_grad(X, p, **kw), {})
    dense = C.outputs_value_and_grad(emu.rv.multvae_value_and_grad(X, p, **kw), {})
    csr = C.outputs_value_and_grad(emu.rv.multvae_value_and_grad(sp.csr_matrix(X), p, **kw), {})
    _assert_close(dense, want, "float64", "dense")
    _assert_close(csr, dense, "float64", "csr")
    fw = emu.rv.multvae_forward(sp.csr_matrix(X), p, mask, eps, 0.5, kw["mask_mode"])
    for a, b in zip(fw, refm.multvae_forward(X, p, mask, eps, 0.5, kw["mask_mode"])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    L = emu.rv.multvae_loss(sp.csr_matrix(X), fw[0], fw[1], fw[2], 0.2)
    for a, b in zip(L, refm.multvae_loss(X, *fw, 0.2)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    for fn in ("item_centroids",):
        np.testing.assert_allclose(getattr(emu.rv, fn)(sp.csr_matrix(X), E),
                                   getattr(refm, fn)(X, E), rtol=1e-12, atol=1e-14)
    for got in (emu.rv.pia_anchor_grad(fw[1], fw[2], sp.csr_matrix(X), E),):
        for a, b in zip(got, refm.pia_anchor_grad(fw[1], fw[2], X, E)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_emulated_nll_row_kernel_wide_rows(emu):
    """I = 300 over 2 warps, rows with large logits (the online max rescales), an empty row:
    nll and dlogits = (softmax n_u - X) / U against a direct NumPy evaluation."""
    rng = np.random.default_rng(2)
    U, I = 5, 300
    X = (rng.random((U, I)) < 0.1).astype(np.float64)
    X[3] = 0.0
    Z = rng.standard_normal((U, I)) * 30.0 + np.linspace(0, 50, I)
    rowout, dZ = emu.rv._nll_rows(X, Z, 1)
    lse = np.log(np.exp(Z - Z.max(1, keepdims=True)).sum(1)) + Z.max(1)
    nll = -(X * (Z - lse[:, None])).sum(1)
    np.testing.assert_allclose(rowout[:, 0], nll, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(rowout[:, 1], X.sum(1))
    sm = np.exp(Z - lse[:, None])
    np.testing.assert_allclose(dZ, (sm * X.sum(1, keepdims=True) - X) / U, rtol=1e-11, atol=1e-15)
    r2, d2 = emu.rv._nll_rows(sp.csr_matrix(X), Z, 1)
    np.testing.assert_allclose(r2, rowout, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(d2, dZ, rtol=1e-13, atol=1e-18)


def test_emulated_pia_reductions_and_monte_carlo(emu):
    rng = np.random.default_rng(3)
    U, I, d = 6, 20, 4
    X = C.interactions(rng, U, I, 0.3, empty_row=2)
    mu, lv, E = rng.standard_normal((U, d)), rng.standard_normal((U, d)) - 1, C.anchors(rng, I, d)
    z = rng.standard_normal((7, U, d))
    for red in ("mean", "sum", "none"):
        for zz in (None, z):
            got = emu.rv.pia_anchor_loss(mu, lv, X, E, red, zz)
            want = refm.pia_anchor_loss(mu, lv, X, E, red, zz)
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
    assert np.isnan(emu.rv.pia_anchor_loss(mu, lv, X, E, "none")[2])
    a, b = rng.standard_normal((2, U, d))
    s1, s2 = rng.random((2, U, d))
    np.testing.assert_allclose(emu.rv.gaussian_w2(a, s1, b, s2), refm.gaussian_w2(a, s1, b, s2),
                               rtol=1e-13)
    for t in (0, 100_000, 200_000, 300_000):
        assert emu.rv.anneal_beta(t) == refm.anneal_beta(t)


# =========================================================================== metrics (emulated)


def _metric_inputs(rng, U, I, tied=False, dtype=np.float64):
    perm = rng.permutation(U * I).reshape(U, I).astype(np.float64)
    scores = np.floor(perm / 8.0) if tied else perm / 1024.0  # tied: groups of 8 equal scores
    fold = rng.random((U, I)) < 0.3
    held = (rng.random((U, I)) < 0.2) & ~fold
    held[1] = False                                          # |T| = 0 -> NaN
    fold[2, :-3] = True                                      # fewer than k candidates left
    held[2, :-3] = False
    return scores.astype(dtype), fold.astype(np.float64), held.astype(np.float64)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("k", [1, 5, 20, 200])
def test_emulated_metrics_equal_the_reference_exactly(emu, tied, k):
    rng = np.random.default_rng(k)
    s, f, h = _metric_inputs(rng, 7, 150, tied)
    for name in ("recall_at_k", "ndcg_at_k"):
        want = _ref(name)(s, f, h, k)
        emu.reads.clear()
        got = getattr(emu.rv, name)(s, f, h, k)
        assert len(emu.reads) == 1
        np.testing.assert_array_equal(got, want)             # bit-identical, NaN included
        got_csr = getattr(emu.rv, name)(s, sp.csr_matrix(f), sp.csr_matrix(h), k)
        np.testing.assert_array_equal(got_csr, want)
        assert np.isnan(got[1]) and not np.isnan(got[0])
        g32 = getattr(emu.rv, name)(s.astype(np.float32), f, h, k)
        assert g32.dtype == np.float32
        np.testing.assert_array_equal(g32, want.astype(np.float32))


def test_emulated_ndcg_pairwise_order_beyond_128(emu):
    """k = 300 > 128: the kernel's recursive pairwise split equals NumPy's sum bit for bit."""
    rng = np.random.default_rng(5)
    s, f, h = _metric_inputs(rng, 3, 400)
    h = ((rng.random((3, 400)) < 0.5) & (f == 0)).astype(np.float64)
    np.testing.assert_array_equal(emu.rv.ndcg_at_k(s, f, h, 300), refe.ndcg_at_k(s, f, h, 300))


# =========================================================================== bad input


def _msg(fn, *a):
    with pytest.raises((ValueError, TypeError)) as e:
        fn(*a)
    return type(e.value), str(e.value)


def test_emulated_bad_inputs_raise_the_reference_messages(emu):
    rng = np.random.default_rng(6)
    U, I, H, d = 4, 12, 5, 3
    X = C.interactions(rng, U, I, 0.3)
    p = C.params(rng, I, H, d)
    E = C.anchors(rng, I, d)
    mu, lv = rng.standard_normal((2, U, d))
    Xbad = X.copy()
    Xbad[0, 0] = 2.0
    pbad = dict(p, W4=p["W4"][:, :-1])
    s, f, h = _metric_inputs(rng, U, I)
    calls = [
        ("multvae_forward", (Xbad, p)), ("multvae_forward", (X, pbad)),
        ("multvae_forward", (X, p, None, None, 1.5)),
        ("multvae_forward", (X, p, None, None, 0.5, "nope")),
        ("multvae_loss", (X, np.zeros((U, I)), mu, lv, -1.0)),
        ("multvae_value_and_grad", (X, p, 0.1, None, None, 0.5, "dropout", E, -1.0)),
        ("multvae_value_and_grad", (np.zeros((U, I)), p, 0.1, None, None, 0.5, "dropout", E)),
        ("pia_anchor_loss", (mu, lv, np.zeros((U, I)), E)),
        ("pia_anchor_grad", (mu, lv, X, E[:, :2])),
        ("item_centroids", (X, E.astype(np.float32))),
        ("gaussian_w2", (mu, -np.abs(lv), mu, np.abs(lv))),
        ("recall_at_k", (s, f, h, 0)), ("ndcg_at_k", (s, f, h[:, :-1], 3)),
        ("ndcg_at_k", (s, f, f, 3)), ("recall_at_k", (np.where(f > 0, np.nan, s), f, h, 3)),
        ("recall_at_k", (s, 2 * f, h, 3)),
    ]
    for name, args in calls:
        want = _msg(_ref(name), *args)
        assert _msg(getattr(emu.rv, name), *args) == want, name


# =========================================================================== GPU


@pytest.mark.gpu
def test_gpu_bench_sizes_match_the_reference(cp):
    from backends.cupy import recsys_vae as R

    rng = np.random.default_rng(0)
    for name in ("multvae_forward", "multvae_value_and_grad", "pia_anchor_loss"):
        for case in MODEL_CASES[name](rng, "bench"):
            kw = _case_kw(case)
            dt = "float32"
            low = _cast(kw, dt)
            want = _flat(name, _ref(name)(**_cast(low, "float64")))
            dev = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else
                       {a: cp.asarray(b) for a, b in v.items()} if isinstance(v, dict) else v)
                   for k, v in low.items()}
            got = {k: cp.asnumpy(v) for k, v in _flat(name, getattr(R, name)(**dev)).items()}
            _assert_close(got, want, dt, f"{name} {case.label}")
    # CSR (cupyx) == dense at the GPU size
    import cupyx.scipy.sparse as csp
    kw = _cast(_case_kw(C.cases_multvae_value_and_grad(rng, "bench")[-1]), "float32")
    dev = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else
               {a: cp.asarray(b) for a, b in v.items()} if isinstance(v, dict) else v)
           for k, v in kw.items()}
    a = C.outputs_value_and_grad(R.multvae_value_and_grad(**dev), {})
    dev["X"] = csp.csr_matrix(dev["X"])
    b = C.outputs_value_and_grad(R.multvae_value_and_grad(**dev), {})
    for key in a:
        np.testing.assert_allclose(cp.asnumpy(b[key]), cp.asnumpy(a[key]), rtol=5e-4, atol=1e-5)


@pytest.mark.gpu
def test_gpu_metrics_at_the_gpu_size_equal_the_reference(cp):
    from backends.cupy import recsys_vae as R

    rng = np.random.default_rng(1)
    s, f, h = _metric_inputs(rng, 2000, 20_000)
    for name in ("recall_at_k", "ndcg_at_k"):
        want = _ref(name)(s, f, h, 100)
        got = cp.asnumpy(getattr(R, name)(cp.asarray(s), cp.asarray(f), cp.asarray(h), 100))
        np.testing.assert_array_equal(got, want)
