"""CuPy backend of the safety_ensembles family (``backends/cupy/safety_ensembles.py``: Antibody
and IBDR) on the CPU emulator of ``tests/cuda_emulator.py``: the real CUDA sources of the
``safety`` kernel module (and of ``preference``, whose streaming LSE the token ops reuse)
compiled with g++, the backend's glue running on NumPy in place of CuPy.

* every ``tiny`` registry case of the 13 ops, float32 and float64, through
  ``refimpl._harness.check_case`` (registry tolerances), with the fused kernels actually
  launched;
* the flat passes with several blocks (partials folded by ``se_flat_finish``, grid-stride
  apply), the IBDR row kernel with K = 8, two warps per row and blocks grid-striding over rows
  (code and paper, with gradient), K = 1 without the diversity term;
* one host read per call (flat ops, IBDR loss), output kinds and dtypes;
* bad inputs raise the reference's exception and message; Cholesky failure; K > 8 refused;
* signatures equal the reference's; the NVRTC compile covers the new module.

On a GPU the ``gpu`` tests below run the bench sizes against the reference.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import cuda_emulator
from cuda_emulator import bk, cp  # noqa: F401 (GPU fixtures)
from refimpl import _harness as Hn
from refimpl import _ops
from refimpl import safety_ensembles as ref

K = cuda_emulator.K
FUNCS = ("harmful_perturb", "antibody_lambda", "antibody_align_direction", "token_mean_nll",
         "antibody_weights", "weighted_token_ce", "weighted_token_ce_grad",
         "dpp_logdet_diversity", "ibdr_loss", "ibdr_loss_grad", "dro_ascent",
         "prediction_distance", "ibdr_dual_update")
TEMPLATES = ("se_flat_partial", "se_flat_finish", "se_align_apply", "se_axpy_apply",
             "se_ibdr_rows", "se_pred_dist")
KERNEL_OF = {"harmful_perturb": ("se_flat_partial", "se_flat_finish", "se_axpy_apply"),
             "dro_ascent": ("se_flat_partial", "se_flat_finish", "se_axpy_apply"),
             "antibody_lambda": ("se_flat_partial", "se_flat_finish"),
             "antibody_align_direction": ("se_flat_partial", "se_flat_finish", "se_align_apply"),
             "dpp_logdet_diversity": ("se_ibdr_rows",), "ibdr_loss": ("se_ibdr_rows",),
             "ibdr_loss_grad": ("se_ibdr_rows",), "prediction_distance": ("se_pred_dist",),
             "token_mean_nll": ("pref_lse_block",), "weighted_token_ce": ("pref_lse_block",),
             "weighted_token_ce_grad": ("pref_lse_block", "pref_grad_block")}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return cuda_emulator.build(tmp_path_factory)


@pytest.fixture
def emu(emulator, monkeypatch):
    """``backends.cupy`` with NumPy for CuPy; small blocks (few emulated threads); the read
    counter ``ns.reads`` and ``ns.bk`` of :func:`cuda_emulator.patch_backend`."""
    ns = cuda_emulator.patch_backend(monkeypatch, emulator)
    S = ns.se
    for name, v in (("FLAT_THREADS", 32), ("FINISH_THREADS", 32), ("FLAT_GRID_CAP", 3),
                    ("APPLY_GRID_CAP", 2), ("IBDR_WARPS", 2), ("IBDR_GRID_CAP", 2),
                    ("ROW_WARPS", 1), ("GRID_CAP", 2)):
        monkeypatch.setattr(S, name, v)
    monkeypatch.setattr(ns.pref, "ROW_WARPS", 1)
    monkeypatch.setattr(ns.pref, "GRID_CAP", 2)
    return ns


# =========================================================================== structure (CPU)


def test_signatures_match_the_reference():
    pytest.importorskip("cupy", reason="cupy is not installed")
    from backends.cupy import safety_ensembles as S

    for name in FUNCS:
        assert inspect.signature(getattr(S, name)) == inspect.signature(getattr(ref, name)), name
    assert set(S.__all__) == set(FUNCS) == set(ref.__all__)


def test_kernel_constants_match_the_source():
    pytest.importorskip("cupy", reason="cupy is not installed")
    from backends.cupy import safety_ensembles as S

    src = K.module_source("safety")
    assert f"#define SE_KMAX {S.SE_KMAX} " in src and f"#define SE_MAXW {S.SE_MAXW} " in src
    assert f"#define SE_NPART {S.NPART} " in src
    assert 32 * S.IBDR_WARPS <= 32 * S.SE_MAXW and S.FLAT_THREADS <= 32 * S.SE_MAXW
    assert S.FINISH_THREADS <= 32 * S.SE_MAXW


def test_safety_module_compiles_with_nvrtc_for_sm90():
    """The shared compile test walks ``K.kernel_sources()`` (the safety module is among them);
    here the module alone through NVRTC for compute_90: every instantiation is a PTX entry and
    the float32 IBDR kernel does its Gram in float64."""
    src = {s.module: s for s in K.kernel_sources()}
    assert "safety" in K.MODULES and "safety" in src
    want = {f"{t}_{sfx}" for t in TEMPLATES for sfx in ("f32", "f64")}
    assert set(src["safety"].names) == want
    import test_backend_cupy as T

    nvrtc = T._nvrtc()
    ks = src["safety"]
    options = tuple(ks.options) + tuple(K.CUPY_IMPLICIT_OPTIONS) + ("-arch=compute_90",)
    ok, log, ptx = T._compile_ptx(nvrtc, ks.source, ks.module, options)
    assert ok, log
    assert ".target sm_90" in ptx
    for name in want:
        assert f".entry {name}(" in ptx
    head = ".entry se_ibdr_rows_f32("
    body = ptx[ptx.index(head):]
    assert "fma.rn.f64" in body or "mul.f64" in body


# =================================================================== registry cases (emulated)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", FUNCS)
def test_emulated_registry_tiny_cases(emu, name, dtype):
    op = _ops.get(name)
    cases = Hn.cases(op, "tiny")
    assert cases
    rows = [row for case in cases for row in Hn.check_case(op, emu.bk, dtype, case)]
    launched = {c[0] for c in emu.calls}
    for t in KERNEL_OF.get(name, ()):
        assert K.kernel_name(t, dtype) in launched, t
    bad = [r for r in rows if not r.ok]
    assert rows and not bad, "\n".join(
        f"{r.case} {r.output}: max abs {r.max_abs:.3g} rel {r.max_rel:.3g} "
        f"tol {op.tolerance(dtype, r.output)} {r.note}" for r in bad)


# =========================================================================== kernels (emulated)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_emulated_flat_passes_several_blocks(emu, dtype, tol):
    """P = 1000 on 3 blocks of 32 threads (partials folded by one block), apply on 2 blocks
    grid-striding; both lambda variants, EMA from a number and from a 0-d array, Booster."""
    rng = np.random.default_rng(0)
    g = {k: rng.normal(size=1000) for k in ("g_s", "g_h", "g_p", "g_r", "theta")}
    gd = {k: v.astype(dtype) for k, v in g.items()}
    r64 = {k: v.astype(np.float64) for k, v in gd.items()}
    S = emu.se
    for kw in (dict(), dict(variant="kkt", lam_ema=2.0), dict(lam_ema=np.asarray(1.5, dtype)),
               dict(momentum=1.0, lam_ema=0.7, lam2=0.0)):
        got = S.antibody_align_direction(gd["g_s"], gd["g_h"], gd["g_p"], gd["g_r"], **kw)
        want = ref.antibody_align_direction(r64["g_s"], r64["g_h"], r64["g_p"], r64["g_r"],
                                            **{k: (float(v) if k == "lam_ema" else v)
                                               for k, v in kw.items()})
        assert got[0].dtype == dtype and got[1].shape == () and got[1].dtype == dtype
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    lam = S.antibody_lambda(gd["g_s"], gd["g_h"], variant="kkt")
    np.testing.assert_allclose(lam, ref.antibody_lambda(r64["g_s"], r64["g_h"], variant="kkt"),
                               rtol=tol, atol=tol)
    np.testing.assert_allclose(S.harmful_perturb(gd["theta"], gd["g_h"], 0.3),
                               ref.harmful_perturb(r64["theta"], r64["g_h"], 0.3), rtol=tol, atol=tol)
    for clip in (0.12, 1e3):                                   # clipped and not clipped
        np.testing.assert_allclose(S.dro_ascent(gd["theta"], gd["g_h"], np.asarray(2.5, dtype),
                                                clip=clip),
                                   ref.dro_ascent(r64["theta"], r64["g_h"], 2.5, clip=clip),
                                   rtol=tol, atol=tol)
    launched = [c for c in emu.calls if c[0].startswith("se_flat_partial")]
    assert launched and all(c[1][0] == 3 and c[2][0] == 32 for c in launched)


def test_emulated_flat_zero_gradient_and_one_read(emu):
    """g_h = 0 gives theta exactly; every flat op makes ONE host read (the finiteness flags)."""
    S = emu.se
    theta = np.arange(5.0)
    emu.reads.clear()
    out = S.harmful_perturb(theta, np.zeros(5))
    assert len(emu.reads) == 1
    np.testing.assert_array_equal(out, theta)
    rng = np.random.default_rng(1)
    gs, gh, gp, gr = (rng.normal(size=7) for _ in range(4))
    emu.reads.clear()
    S.antibody_align_direction(gs, gh, gp, gr)
    assert len(emu.reads) == 1
    emu.reads.clear()
    S.dro_ascent(theta, gs[:5], 3.0)
    assert len(emu.reads) == 1


def _ibdr_inputs(rng, K, B, C, dtype):
    F = (rng.normal(size=(1, B, C)) * 2 + rng.normal(size=(K, B, C))).astype(dtype)
    y = rng.integers(0, C, B).astype(np.int64)
    return F, y


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 5e-5)])
def test_emulated_ibdr_rows_k8_grid_stride(emu, dtype, tol):
    """K = 8 (the kernel's maximum), C = 40 (two warps per row), B = 5 rows on 2 blocks
    (grid-stride): loss and gradient of both variants and alpha in {0.02, 3}; LD on the
    softmaxes; K = 1 without the diversity term; one host read for the loss."""
    rng = np.random.default_rng(2)
    F, y = _ibdr_inputs(rng, 8, 5, 40, dtype)
    F64 = F.astype(np.float64)
    S = emu.se
    for variant in ("code", "paper"):
        for alpha in (0.02, 3.0):
            emu.reads.clear()
            loss, dF = S.ibdr_loss_grad(F, y, alpha_div=alpha, variant=variant)
            assert len(emu.reads) == 1
            wl, wd = ref.ibdr_loss_grad(F64, y, alpha_div=alpha, variant=variant)
            assert loss.shape == () and loss.dtype == dtype and dF.dtype == dtype
            np.testing.assert_allclose(loss, wl, rtol=tol, atol=tol)
            np.testing.assert_allclose(dF, wd, rtol=tol, atol=tol)
            np.testing.assert_allclose(S.ibdr_loss(F, y, alpha_div=alpha, variant=variant), wl,
                                       rtol=tol, atol=tol)
    P = np.exp(F64 - F64.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    np.testing.assert_allclose(S.dpp_logdet_diversity(P.astype(dtype), y),
                               ref.dpp_logdet_diversity(P.astype(dtype).astype(np.float64), y),
                               rtol=tol, atol=tol)
    calls = [c for c in emu.calls if c[0].startswith("se_ibdr_rows")]
    assert all(c[1][0] == 2 and c[2][0] == 64 for c in calls)
    loss, dF = S.ibdr_loss_grad(F[:1], y, alpha_div=0.0)
    wl, wd = ref.ibdr_loss_grad(F64[:1], y, alpha_div=0.0)
    np.testing.assert_allclose(loss, wl, rtol=tol, atol=tol)
    np.testing.assert_allclose(dF, wd, rtol=tol, atol=tol)


def test_emulated_ibdr_cholesky_failure_and_too_many_particles(emu):
    rng = np.random.default_rng(3)
    F, y = _ibdr_inputs(rng, 2, 3, 5, "float64")
    F[1] = F[0]                                   # identical particles: M = 11^T + j I
    for fn in ("ibdr_loss", "ibdr_loss_grad"):
        with pytest.raises(ValueError) as want:
            getattr(ref, fn)(F, y, jitter=1e-300)
        with pytest.raises(ValueError) as got:
            getattr(emu.se, fn)(F, y, jitter=1e-300)
        assert str(got.value) == str(want.value)
    F9, y9 = _ibdr_inputs(rng, 9, 2, 5, "float64")
    ref.ibdr_loss(F9, y9)                         # the reference takes any K
    with pytest.raises(ValueError, match="supports K <= 8 particles"):
        emu.se.ibdr_loss(F9, y9)


def test_emulated_token_ops_empty_row_and_kinds(emu):
    """A row without completion tokens (nll 0, n_tok 0), chunked == dense, no bias -> db None."""
    rng = np.random.default_rng(4)
    B, T, d, V = 3, 5, 8, 11
    H, W = rng.normal(size=(B, T, d)), rng.normal(size=(V, d))
    labels = rng.integers(0, V, (B, T))
    labels[:, :2] = -100
    labels[1] = -100
    S = emu.se
    nll, n = S.token_mean_nll(H, W, labels, token_chunk=4, vocab_chunk=3)
    wn, wc = ref.token_mean_nll(H, W, labels)
    assert n.dtype == np.int64 and list(n) == list(wc) and nll[1] == 0
    np.testing.assert_allclose(nll, wn, atol=1e-12)
    w = ref.antibody_weights(rng.normal(size=B), rng.normal(size=B))
    for variant in ("code", "paper"):
        got = S.weighted_token_ce_grad(H, W, labels, w, variant=variant, token_chunk=2,
                                       vocab_chunk=5)
        want = ref.weighted_token_ce_grad(H, W, labels, w, variant=variant)
        assert got[3] is None and got[0].shape == ()
        for a, b in zip(got[:3], want[:3]):
            np.testing.assert_allclose(a, b, atol=1e-12)


def test_emulated_prediction_distance_rows_grid_stride(emu):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(7, 40)), rng.normal(size=(7, 40))
    emu.reads.clear()
    got = emu.se.prediction_distance(a, b)
    assert len(emu.reads) == 1 and got.shape == ()
    np.testing.assert_allclose(got, ref.prediction_distance(a, b), atol=1e-14)
    assert isinstance(emu.se.ibdr_dual_update(np.asarray(3.0), np.asarray(0.05), 0.1), float)


# =========================================================================== errors


def _bad_calls():
    rng = np.random.default_rng(6)
    v = rng.normal(size=6)
    nan = v.copy()
    nan[2] = np.nan
    F, y = _ibdr_inputs(rng, 3, 4, 5, "float64")
    Fi = F.copy()
    Fi[1, 2, 3] = np.inf
    P = np.abs(F) / np.abs(F).sum(-1, keepdims=True)
    B, T, d, V = 2, 4, 3, 5
    H, W = rng.normal(size=(B, T, d)), rng.normal(size=(V, d))
    lab = rng.integers(0, V, (B, T))
    lab_bad = lab.copy()
    lab_bad[0, 1] = V
    w = np.array([0.3, 0.7])
    return [
        ("g_h nan", "harmful_perturb", dict(theta=v, g_h=nan)),
        ("alpha < 0", "harmful_perturb", dict(theta=v, g_h=v, alpha=-1.0)),
        ("eps 0", "harmful_perturb", dict(theta=v, g_h=v, eps=0.0)),
        ("shape", "harmful_perturb", dict(theta=v, g_h=v[:4])),
        ("dtype", "harmful_perturb", dict(theta=v, g_h=v.astype(np.float32))),
        ("empty", "harmful_perturb", dict(theta=v[:0], g_h=v[:0])),
        ("d nan", "antibody_lambda", dict(g_s=v, d=nan)),
        ("variant", "antibody_lambda", dict(g_s=v, d=v, variant="cos")),
        ("momentum", "antibody_lambda", dict(g_s=v, d=v, momentum=1.5)),
        ("lam_ema < 0", "antibody_lambda", dict(g_s=v, d=v, lam_ema=-1.0)),
        ("g_p nan", "antibody_align_direction", dict(g_s=v, g_h=v, g_p=nan, g_r=v)),
        ("g_r nan", "antibody_align_direction", dict(g_s=v, g_h=v, g_p=v, g_r=nan)),
        ("lam2", "antibody_align_direction", dict(g_s=v, g_h=v, g_p=v, g_r=v, lam2=-0.1)),
        ("tau", "antibody_weights", dict(nll_c=v, nll_r=v, tau=0.0)),
        ("nll_r nan", "antibody_weights", dict(nll_c=v, nll_r=nan)),
        ("labels", "token_mean_nll", dict(H=H, W=W, labels=lab_bad)),
        ("labels float", "token_mean_nll", dict(H=H, W=W, labels=lab * 1.0)),
        ("empty batch", "token_mean_nll", dict(H=H[:0], W=W, labels=lab[:0])),
        ("chunk", "weighted_token_ce", dict(H=H, W=W, labels=lab, w=w, token_chunk=0)),
        ("w < 0", "weighted_token_ce", dict(H=H, W=W, labels=lab, w=-w)),
        ("w shape", "weighted_token_ce_grad", dict(H=H, W=W, labels=lab, w=w[:1])),
        ("ce variant", "weighted_token_ce_grad", dict(H=H, W=W, labels=lab, w=w, variant="x")),
        ("logits inf", "ibdr_loss_grad", dict(logits=Fi, y=y)),
        ("y range", "ibdr_loss", dict(logits=F, y=y + 5)),
        ("K 1", "ibdr_loss", dict(logits=F[:1], y=y)),
        ("C 2", "ibdr_loss_grad", dict(logits=F[..., :2], y=y % 2)),
        ("alpha < 0", "ibdr_loss", dict(logits=F, y=y, alpha_div=-1.0)),
        ("ibdr variant", "ibdr_loss", dict(logits=F, y=y, variant="fisher")),
        ("probs < 0", "dpp_logdet_diversity", dict(probs=-P, y=y)),
        ("jitter", "dpp_logdet_diversity", dict(probs=P, y=y, jitter=0.0)),
        ("y float", "dpp_logdet_diversity", dict(probs=P, y=y * 1.0)),
        ("lam 0", "dro_ascent", dict(theta=v, g=v, lam=0.0)),
        ("g nan", "dro_ascent", dict(theta=v, g=nan, lam=1.0)),
        ("clip", "dro_ascent", dict(theta=v, g=v, lam=1.0, clip=0.0)),
        ("old nan", "prediction_distance", dict(logits_bar_new=F[0], logits_bar_old=Fi[1])),
        ("pred shape", "prediction_distance", dict(logits_bar_new=F[0], logits_bar_old=F[0, :2])),
        ("dual fisher", "ibdr_dual_update", dict(lam=1.0, distance=0.1, lr=0.1, variant="fisher")),
        ("dual distance", "ibdr_dual_update", dict(lam=1.0, distance=-0.1, lr=0.1)),
    ]


@pytest.mark.parametrize("what,name,kw", _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_emulated_bad_inputs_raise_like_the_reference(emu, what, name, kw):
    with pytest.raises(Exception) as want:
        getattr(ref, name)(**kw)
    with pytest.raises(type(want.value)) as got:
        getattr(emu.se, name)(**kw)
    assert str(got.value) == str(want.value), what


def test_numpy_inputs_refused_by_the_real_backend():
    pytest.importorskip("cupy", reason="cupy is not installed")
    from backends.cupy import safety_ensembles as S

    v = np.ones(3)
    with pytest.raises(TypeError, match="g_s is a numpy.ndarray; the cupy backend"):
        S.antibody_align_direction(v, v, v, v)
    with pytest.raises(TypeError, match="logits is a numpy.ndarray"):
        S.ibdr_loss_grad(np.ones((2, 3, 4)), np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="distance is a numpy.ndarray"):
        S.ibdr_dual_update(1.0, np.asarray(0.1), 0.1)


# =========================================================================== GPU


def _gpu_check(bk, name, dtype, kw, tol=None):
    op = _ops.get(name)
    ref_kw = {k: Hn.rounded(v, dtype) for k, v in kw.items()}
    want = op.named(op.ref(**ref_kw), ref_kw)
    got = op.named(Hn.to_host(bk, getattr(bk, name)(**{k: Hn.to_backend(bk, v, dtype)
                                                      for k, v in kw.items()})), ref_kw)
    for k, w in want.items():
        rtol, atol = tol or op.tolerance(dtype, k)
        np.testing.assert_allclose(got[k], w, rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_align_direction_bench_size(bk, dtype):
    """P = 25,165,824 (LoRA r = 32 on q, k, v of 32 layers): both lambda variants."""
    rng = np.random.default_rng(0)
    P = 25_165_824
    kw = {k: rng.normal(size=P).astype(np.float32) for k in ("g_s", "g_h", "g_p", "g_r")}
    for variant in ("cosine", "kkt"):
        _gpu_check(bk, "antibody_align_direction", dtype, dict(kw, variant=variant))
    _gpu_check(bk, "dro_ascent", dtype, dict(theta=kw["g_s"], g=kw["g_h"], lam=3.0))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["code", "paper"])
def test_gpu_ibdr_loss_grad_bench_size(bk, dtype, variant):
    """(K, B, C) = (4, 8192, 397) and (8, 24, 100): loss and dlogits vs the reference."""
    rng = np.random.default_rng(1)
    for K_, B, C in ((4, 8192, 397), (8, 24, 100)):
        F, y = _ibdr_inputs(rng, K_, B, C, "float64")
        _gpu_check(bk, "ibdr_loss_grad", dtype, dict(logits=F, y=y, variant=variant))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_weighted_token_ce_grad_chunked(bk, dtype):
    """(B, T, d, V) = (4, 64, 256, 8192) with chunks (96, 1536): every output."""
    from refimpl._cases import safety_ensembles as cs

    rng = np.random.default_rng(2)
    H, W, b, labels = cs.token_inputs(rng, 4, 64, 256, 8192)[:4]
    w = ref.antibody_weights(rng.normal(size=4), rng.normal(size=4))
    _gpu_check(bk, "weighted_token_ce_grad", dtype,
               dict(H=H, W=W, labels=labels, w=w, b=b, token_chunk=96, vocab_chunk=1536))
    _gpu_check(bk, "prediction_distance", dtype,
               dict(logits_bar_new=rng.normal(size=(8192, 397)),
                    logits_bar_old=rng.normal(size=(8192, 397))))
