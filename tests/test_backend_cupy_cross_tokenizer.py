"""CuPy backend of the cross-tokenizer family (``backends/cupy/cross_tokenizer.py``,
cross_tokenizer.md sec. 3-5, 8-11) on the CPU emulator of ``tests/cuda_emulator.py``: the real
CUDA sources of the ``cross_tokenizer`` kernel module compiled with g++, the backend's glue
running on NumPy in place of CuPy.

* the kernels alone (``ct_kd_rows`` every kind with and without gradient, ``ct_row_stat``,
  ``ct_tis_fwd``/``ct_tis_grad``, ``ct_span_sum``) against NumPy, with several warps per block
  and blocks grid-striding over the rows;
* every ``tiny`` registry case of the fourteen ops and a subset of ``small``, float32 and
  float64, through ``refimpl._harness.check_case`` (the cross-check's comparison and the
  registry tolerances);
* the per-entry infinite-logit rule of ``kd_divergence``, output kinds and dtypes;
* bad inputs raise the reference's exception and message; other array kinds are a TypeError;
* the NVRTC compile test covers the new module (its source and names).

On a GPU the registry cross-check of these ops runs in ``tests/test_crosscheck.py``.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import cuda_emulator
from refimpl import _harness as Hn
from refimpl import _ops
from refimpl import cross_tokenizer as ref
from refimpl._cases import ctpd as ct_cases
from refimpl._cases import dwa_kd as dk_cases

K = cuda_emulator.K
FUNCS = ("kd_divergence", "kd_divergence_grad", "entropy_weights", "certainty_weights",
         "kd_gate", "cma_band_penalty", "dwa_dtw_loss", "dwa_dtw_loss_grad", "span_sum",
         "span_weights", "ctpd_loss", "ctpd_loss_grad", "tis_dpo_loss", "tis_dpo_loss_grad")
TEMPLATES = ("ct_kd_rows", "ct_row_stat", "ct_tis_fwd", "ct_tis_grad", "ct_span_sum")
KINDS = {"forward_kl": 0, "reverse_kl": 1, "skewed_forward_kl": 2, "skewed_reverse_kl": 3,
         "js": 4, "adaptive_kl": 5}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return cuda_emulator.build(tmp_path_factory)


@pytest.fixture
def emu(emulator, monkeypatch):
    """``backends.cupy`` with NumPy for CuPy; one warp per row block and at most three blocks
    (few emulated threads; blocks grid-stride over the rows)."""
    ns = cuda_emulator.patch_backend(monkeypatch, emulator)
    monkeypatch.setattr(ns.ct, "ROW_THREADS", 32)
    monkeypatch.setattr(ns.ct, "SCATTER_THREADS", 32)
    monkeypatch.setattr(ns.ct, "GRID_CAP", 3)
    import backends.cupy as package

    ns.bk = package
    return ns


# =========================================================================== structure (CPU)


def test_signatures_and_exports_match_the_reference():
    pytest.importorskip("cupy", reason="cupy is not installed")
    import backends.cupy as bk
    from backends.cupy import cross_tokenizer as C

    for name in FUNCS:
        assert inspect.signature(getattr(C, name)) == inspect.signature(getattr(ref, name)), name
        fn = getattr(bk, name)                 # bf16 ops: wrapped by backends._bf16
        assert getattr(fn, "__wrapped__", fn) is getattr(C, name) and name in bk.__all__
    assert set(C.__all__) == set(FUNCS)
    for name in ("span_align", "cma_align", "dwa_kd_loss"):     # not offered (see docstring)
        assert not hasattr(bk, name)


def test_compile_test_covers_the_cross_tokenizer_kernels():
    """``test_every_kernel_source_compiles_to_ptx_for_sm90`` iterates ``K.kernel_sources()``:
    the new module and both instantiations of its five kernels are among them."""
    src = {s.module: s for s in K.kernel_sources()}
    assert "cross_tokenizer" in K.MODULES and "cross_tokenizer" in src
    want = {f"{t}_{sfx}" for t in TEMPLATES for sfx in ("f32", "f64")}
    assert set(src["cross_tokenizer"].names) == want
    for name in want:
        assert f'extern "C" __global__ void {name}(' in src["cross_tokenizer"].source


def test_cross_tokenizer_module_compiles_with_nvrtc():
    """The new module alone through NVRTC for compute_90 (the shared compile test's helper)."""
    import test_backend_cupy as T

    nvrtc = T._nvrtc()
    ks = {s.module: s for s in K.kernel_sources()}["cross_tokenizer"]
    options = tuple(ks.options) + tuple(K.CUPY_IMPLICIT_OPTIONS) + ("-arch=compute_90",)
    ok, log, ptx = T._compile_ptx(nvrtc, ks.source, ks.module, options)
    assert ok, log
    for name in ks.names:
        assert f".entry {name}(" in ptx


# ==================================================================== kernels alone (emulated)


def _lsm(z):
    from scipy.special import log_softmax

    return log_softmax(z, axis=-1)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("threads,cap", [(32, 2), (64, 5)])
def test_emulated_kd_rows_kernel(emulator, dtype, tol, threads, cap):
    """``ct_kd_rows`` for every kind: the divergence and ``p (g - <p,g>)/tau`` against the
    float64 reference formulas (tea_temp on, skew 0.3, adaptive weights given)."""
    from refimpl import _dwa_kd as R

    rng = np.random.default_rng(1)
    rows, Vn, tau, tea, skew = 7, 45, 1.7, 1.3, 0.3
    zs = (2 * rng.normal(size=(rows, Vn))).astype(dtype)
    zt = (2 * rng.normal(size=(rows, Vn))).astype(dtype)
    wh = rng.random(rows).astype(dtype)
    wt = (1 - wh).astype(dtype)
    a = R.V.KdArgs("x", tau, tea, True, skew, 0.5)
    _, _, p, lp, q, lq = R._dists(zs.astype(np.float64), zt.astype(np.float64), a)
    for kind, code in KINDS.items():
        div = np.empty(rows, dtype)
        dz = np.empty((rows, Vn), dtype)
        emulator.launch(K.kernel_name("ct_kd_rows", dtype), (cap,), (threads,),
                        (zs, zt, np.int64(rows), np.int32(Vn), np.int32(code),
                         np.dtype(dtype).type(tau), np.dtype(dtype).type(tea),
                         np.dtype(dtype).type(skew), wh, wt, np.int32(1), div, dz))
        if kind == "adaptive_kl":
            w1, w2 = wh.astype(np.float64), wt.astype(np.float64)
            want = (w1 * (q * (lq - lp)).sum(-1) + w2 * (p * (lp - lq)).sum(-1))
            want_dz = (w1[:, None] * R._dz("forward_kl", p, lp, q, lq, skew, tau)
                       + w2[:, None] * R._dz("reverse_kl", p, lp, q, lq, skew, tau))
        else:
            zsc, ztc = zs / tau, zt / tau / tea
            want = R._masked_sum(*R._div_terms(kind, zsc, ztc, p, lp, q, lq, skew))
            want_dz = R._dz(kind, p, lp, q, lq, skew, tau)
        np.testing.assert_allclose(div, want, rtol=tol, atol=tol, err_msg=kind)
        np.testing.assert_allclose(dz, want_dz, rtol=tol, atol=tol, err_msg=kind)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_emulated_row_stat_and_tis_kernels(emulator, dtype, tol):
    rng = np.random.default_rng(2)
    rows, Vn = 6, 70
    z = (3 * rng.normal(size=(rows, Vn))).astype(dtype)
    zr = (z + rng.normal(size=(rows, Vn))).astype(dtype)
    z64, zr64 = z.astype(np.float64), zr.astype(np.float64)
    lp, lq = _lsm(z64), _lsm(zr64)
    p = np.exp(lp)
    for mode, want in ((0, -(p * np.log(p + 1e-9)).sum(-1)), (1, p.max(-1))):
        out = np.empty(rows, dtype)
        emulator.launch(K.kernel_name("ct_row_stat", dtype), (4,), (64,),
                        (z, np.int64(rows), np.int32(Vn), np.int32(mode), out))
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    y = rng.integers(0, Vn, rows).astype(np.int64)
    outs = [np.empty(rows, dtype) for _ in range(4)]
    emulator.launch(K.kernel_name("ct_tis_fwd", dtype), (2,), (32,),
                    (z, zr, y, np.int64(rows), np.int32(Vn), *outs))
    a_tok, K_tok, lsep, lseq = outs
    kl = (p * (lp - lq)).sum(-1)
    np.testing.assert_allclose(a_tok, (lp - lq)[np.arange(rows), y], rtol=tol, atol=tol)
    np.testing.assert_allclose(K_tok, kl, rtol=tol, atol=tol)
    c = rng.normal(size=rows).astype(dtype)
    dz = np.empty((rows, Vn), dtype)
    emulator.launch(K.kernel_name("ct_tis_grad", dtype), (3,), (32,),
                    (z, zr, y, np.int64(rows), np.int32(Vn), lsep, lseq, K_tok, c,
                     np.dtype(dtype).type(0.7), dz))
    onehot = np.eye(Vn)[y]
    want = c.astype(np.float64)[:, None] * ((onehot - p) - 0.7 * p * (lp - lq - kl[:, None]))
    np.testing.assert_allclose(dz, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shared", [0, 1])
def test_emulated_span_sum_kernel(emulator, dtype, shared):
    rng = np.random.default_rng(3)
    rows, Kn, R = 5, 23, 6
    x = rng.normal(size=(rows, Kn)).astype(dtype)
    seg = rng.integers(-1, R, size=(Kn,) if shared else (rows, Kn)).astype(np.int64)
    out, cnt = np.zeros((rows, R)), np.zeros((rows, R))
    emulator.launch(K.kernel_name("ct_span_sum", dtype), (3,), (32,),
                    (x, seg, np.int64(rows), np.int32(Kn), np.int32(R), np.int32(shared),
                     np.int32(1), out, cnt))
    sg = np.broadcast_to(seg, (rows, Kn))
    want, wc = np.zeros((rows, R)), np.zeros((rows, R))
    r, k = np.nonzero(sg >= 0)
    np.add.at(want, (r, sg[r, k]), x[r, k].astype(np.float64))
    np.add.at(wc, (r, sg[r, k]), 1.0)
    np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(cnt, wc)


# =================================================================== registry cases (emulated)


def _check(emu, op, dtype, cases):
    rows = [row for case in cases for row in Hn.check_case(op, emu.bk, dtype, case)]
    bad = [r for r in rows if not r.ok]
    assert rows and not bad, "\n".join(
        f"{r.case} {r.output}: max abs {r.max_abs:.3g} rel {r.max_rel:.3g} "
        f"tol {op.tolerance(dtype, r.output)} {r.note}" for r in bad)
    return rows


_LAUNCHES = {"kd_divergence": "ct_kd_rows", "kd_divergence_grad": "ct_kd_rows",
             "entropy_weights": "ct_row_stat", "certainty_weights": "ct_row_stat",
             "kd_gate": "ct_row_stat", "dwa_dtw_loss": "sdtw_fwd", "dwa_dtw_loss_grad": "sdtw_bwd",
             "span_sum": "ct_span_sum", "tis_dpo_loss": "ct_tis_fwd",
             "tis_dpo_loss_grad": "ct_tis_grad"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", FUNCS)
def test_emulated_registry_tiny_cases(emu, name, dtype):
    """Every ``tiny`` registry case of the op within the registry tolerances (the emulated
    kernels did the work where the op has one)."""
    op = _ops.get(name)
    cases = [c for c in Hn.cases(op, "tiny") if c.runs_in(dtype)]
    _check(emu, op, dtype, cases)
    if name in _LAUNCHES:
        assert K.kernel_name(_LAUNCHES[name], dtype) in {c[0] for c in emu.calls}


def _small_subset(op):
    cases = Hn.cases(op, "small")
    if op.name.startswith("kd_divergence"):
        return [c for c in cases if "tau2.0" in c.label][:4] + cases[-1:]
    if op.name.startswith("tis_dpo"):
        return cases[:1] + cases[-1:]
    if op.name.startswith("dwa_dtw"):
        return cases[:1] + cases[2:3]
    return cases[:2]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["kd_divergence_grad", "entropy_weights", "kd_gate",
                                  "dwa_dtw_loss_grad", "span_sum", "ctpd_loss_grad",
                                  "tis_dpo_loss_grad", "cma_band_penalty"])
def test_emulated_registry_small_cases(emu, name, dtype):
    op = _ops.get(name)
    cases = [c for c in _small_subset(op) if c.runs_in(dtype)]
    assert cases
    _check(emu, op, dtype, cases)


# =========================================================================== properties (emulated)


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # NumPy standing in for CuPy
@pytest.mark.parametrize("kind", list(KINDS))
def test_emulated_infinite_logits_follow_the_reference(emu, kind):
    """-inf entries (a masked vocabulary) in the student and/or teacher contribute 0 per entry,
    as the reference; a +inf student logit gives what the reference gives (inf or NaN)."""
    rng = np.random.default_rng(5)
    z_s, z_t = rng.normal(size=(4, 9)), rng.normal(size=(4, 9))
    z_s[0, 2] = z_t[0, 2] = -np.inf
    z_s[1, 5] = -np.inf
    z_t[2, 1] = -np.inf
    z_s[3, 4] = np.inf
    kw = dict(kind=kind, tau=1.5, adaptive_alpha=0.5 if kind == "adaptive_kl" else None)
    want = ref.kd_divergence(z_s, z_t, **kw)
    got = emu.ct.kd_divergence(z_s, z_t, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_output_kinds_and_dtypes(emu, dtype):
    rng = np.random.default_rng(6)
    C = emu.ct
    f = lambda a: np.asarray(a, dtype=dtype)          # noqa: E731
    z_s, z_t = f(rng.normal(size=(2, 3, 7))), f(rng.normal(size=(2, 3, 7)))
    mask = np.array([[True, True, False], [False, True, True]])
    div, dz = C.kd_divergence_grad(z_s, z_t, kind="js")
    assert div.shape == (2, 3) and dz.shape == z_s.shape and div.dtype == dz.dtype == dtype
    for w in (C.entropy_weights(z_s, mask), C.certainty_weights(z_t, mask),
              C.kd_gate(z_s, mask, 3)):
        assert w.shape == (2, 3) and w.dtype == dtype and not w[~mask].any()
    kw = dk_cases._dtw_inputs(rng, 2, 6, 5, 4, "mask", (0.5, 0.5))
    kw = {k: (f(v) if v.dtype.kind == "f" else v) for k, v in kw.items()}
    v, dX, dY = C.dwa_dtw_loss_grad(**kw, gamma=0.5, w0=0.5, kappa=0.5)
    assert isinstance(v, np.ndarray) and v.shape == () and v.dtype == dtype
    assert dX.dtype == dY.dtype == dtype and not dX[~kw["mask_s"]].any()
    assert not dY[~kw["mask_t"]].any()
    assert C.dwa_dtw_loss(**kw, gamma=0.5).shape == ()
    kc = {k: (f(v) if isinstance(v, np.ndarray) else v)
          for k, v in ct_cases.ctpd_inputs(rng, 2, 4, 0.1).items()}
    loss, rw, rl = C.ctpd_loss(**kc)
    assert loss.shape == () and loss.dtype == rw.dtype == rl.dtype == dtype and rw.shape == (2,)
    kt = {k: (f(v) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
          for k, v in ct_cases.tis_inputs(rng, 1, 4, 6, 0.5, 0.5, True).items()}
    loss, d = C.tis_dpo_loss_grad(**kt)
    assert loss.shape == () and loss.dtype == d.dtype == dtype and not d[~kt["mask"]].any()
    s = C.span_sum(f(rng.normal(size=(3, 5))), np.array([0, 0, -1, 1, 1]), 2, reduce="mean")
    assert s.shape == (3, 2) and s.dtype == dtype
    w = C.span_weights(f(rng.normal(size=(2, 3))), f(rng.normal(size=(2, 3))), -1.0)
    assert w.dtype == dtype


def test_emulated_dtw_prefix_and_mask_gather_the_right_blocks(emu):
    """With left padding the "mask" rule and the "prefix" rule use different positions; both
    equal the reference (value and gradients) with a band."""
    rng = np.random.default_rng(8)
    kw = dk_cases._dtw_inputs(rng, 3, 7, 6, 3, "mask", (0.5, 0.5))
    for positions in ("mask", "prefix"):
        want = ref.dwa_dtw_loss_grad(**kw, gamma=0.3, positions=positions, w0=0.5, kappa=0.5,
                                     rho=3.0)
        got = emu.ct.dwa_dtw_loss_grad(**kw, gamma=0.3, positions=positions, w0=0.5,
                                       kappa=0.5, rho=3.0)
        for g, w_ in zip(got, want):
            np.testing.assert_allclose(g, w_, rtol=1e-10, atol=1e-10)


# =========================================================================== errors


def _bad_calls():
    rng = np.random.default_rng(4)
    z_s, z_t = rng.normal(size=(2, 3, 7)), rng.normal(size=(2, 3, 7))
    mask = np.array([[True, True, False], [False, True, True]])
    dtw = dk_cases._dtw_inputs(rng, 2, 6, 5, 4, "mask", (0.5, 0.5))
    A = dtw["A"][0]
    A_neg = A.copy()
    A_neg[0, 0] = -0.1
    kc = ct_cases.ctpd_inputs(rng, 2, 4, 0.1)
    kt = ct_cases.tis_inputs(rng, 1, 4, 6, 0.5, 0.5, True)
    lab_oob = kt["labels"].copy()
    lab_oob[kt["mask"]] = 6
    x = rng.normal(size=(3, 5))
    seg = np.array([0, 0, -1, 1, 1])
    return [
        ("kd kind", "kd_divergence", dict(z_s=z_s, z_t=z_t, kind="kl")),
        ("kd shape", "kd_divergence_grad", dict(z_s=z_s, z_t=z_t[:, :2])),
        ("kd dtype", "kd_divergence", dict(z_s=z_s, z_t=z_t.astype(np.float32))),
        ("kd tau", "kd_divergence", dict(z_s=z_s, z_t=z_t, tau=0.0)),
        ("kd skew", "kd_divergence", dict(z_s=z_s, z_t=z_t, skew=1.5)),
        ("adaptive alpha", "kd_divergence", dict(z_s=z_s, z_t=z_t, kind="adaptive_kl")),
        ("entropy mask shape", "entropy_weights", dict(z_s=z_s, mask=mask[:, :2])),
        ("entropy mask values", "entropy_weights", dict(z_s=z_s, mask=2 * mask.astype(int))),
        ("certainty 2-D", "certainty_weights", dict(z_t=z_t[0], mask=mask)),
        ("gate step", "kd_gate", dict(z_t2s=z_s, mask=mask, step=-1)),
        ("gate warmup", "kd_gate", dict(z_t2s=z_s, mask=mask, step=1, warmup=1.5)),
        ("band negative A", "cma_band_penalty", dict(A=A_neg)),
        ("band 1-D", "cma_band_penalty", dict(A=A[0])),
        ("band alpha", "cma_band_penalty", dict(A=A, alpha=1.5)),
        ("dtw gamma", "dwa_dtw_loss", dict(dtw, gamma=0.0)),
        ("dtw positions", "dwa_dtw_loss_grad", dict(dtw, gamma=0.5, positions="all")),
        ("dtw A shape", "dwa_dtw_loss", dict(dtw, gamma=0.5, A=dtw["A"][:, :-1])),
        ("dtw mask shape", "dwa_dtw_loss", dict(dtw, gamma=0.5, mask_t=dtw["mask_t"][:, :-1])),
        ("dtw w0", "dwa_dtw_loss", dict(dtw, gamma=0.5, w0=-1.0)),
        ("span reduce", "span_sum", dict(token_logps=x, seg=seg, num_spans=2, reduce="max")),
        ("span seg range", "span_sum", dict(token_logps=x, seg=seg + 2, num_spans=2)),
        ("span seg shape", "span_sum", dict(token_logps=x, seg=seg[:-1], num_spans=2)),
        ("span seg float", "span_sum", dict(token_logps=x, seg=seg * 1.0, num_spans=2)),
        ("weights shape", "span_weights", dict(lp_pos=x, lp_neg=x[:, :-1], mu=1.0)),
        ("weights mu", "span_weights", dict(lp_pos=x, lp_neg=x, mu=np.ones((2, 1)))),
        ("weights lo hi", "span_weights", dict(lp_pos=x, lp_neg=x, mu=1.0, lo=2.0, hi=1.0)),
        ("weights decimals", "span_weights", dict(lp_pos=x, lp_neg=x, mu=1.0, decimals=-1)),
        ("ctpd odd", "ctpd_loss", dict(kc, ellS=kc["ellS"][:3], ellT=kc["ellT"][:3],
                                       w=kc["w"][:3])),
        ("ctpd w shape", "ctpd_loss_grad", dict(kc, w=kc["w"][:, :-1])),
        ("ctpd beta", "ctpd_loss", dict(kc, beta=-1.0)),
        ("tis labels", "tis_dpo_loss", dict(kt, labels=lab_oob)),
        ("tis mask", "tis_dpo_loss_grad", dict(kt, mask=2 * kt["mask"].astype(int))),
        ("tis odd", "tis_dpo_loss", dict(kt, logits=kt["logits"][:1],
                                         ref_logits=kt["ref_logits"][:1])),
        ("tis alpha", "tis_dpo_loss_grad", dict(kt, alpha=-0.5)),
        ("tis ref shape", "tis_dpo_loss", dict(kt, ref_logits=kt["ref_logits"][:, :, :-1])),
    ]


@pytest.mark.parametrize("what,name,kw", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_emulated_bad_inputs_raise_like_the_reference(emu, what, name, kw):
    with pytest.raises(Exception) as want:
        getattr(ref, name)(**kw)
    with pytest.raises(type(want.value)) as got:
        getattr(emu.ct, name)(**kw)
    assert str(got.value) == str(want.value), what


def test_emulated_other_array_kinds_are_refused(emu):
    """Under the emulator NumPy arrays are the native kind: a list is a TypeError naming it."""
    rng = np.random.default_rng(9)
    z = rng.normal(size=(2, 3, 5))
    mask = np.ones((2, 3), dtype=bool)
    with pytest.raises(TypeError, match="mask is a builtins.list; the cupy backend"):
        emu.ct.entropy_weights(z, mask.tolist())
    with pytest.raises(TypeError, match="z_t is a builtins.list"):
        emu.ct.kd_divergence(z, z.tolist())
    with pytest.raises(TypeError, match="mu is a builtins.list"):
        emu.ct.span_weights(z[0], z[0], [[1.0], [-1.0]])
    with pytest.raises(TypeError, match="seg is a builtins.list"):
        emu.ct.span_sum(z[0], [0, 0, 1, 1, -1], 2)


def test_numpy_inputs_refused_by_the_real_backend():
    """The real module (CuPy imported, no device touched): NumPy arrays are refused before
    any device work, naming the first foreign argument."""
    pytest.importorskip("cupy", reason="cupy is not installed")
    from backends.cupy import cross_tokenizer as C

    z = np.zeros((2, 3, 5))
    with pytest.raises(TypeError, match="z_s is a numpy.ndarray; the cupy backend"):
        C.kd_divergence_grad(z, z)
    with pytest.raises(TypeError, match="logits is a numpy.ndarray"):
        C.tis_dpo_loss(z, z, np.zeros((2, 3), int), np.ones((2, 3), bool), np.ones((2, 3)), 0.1)
