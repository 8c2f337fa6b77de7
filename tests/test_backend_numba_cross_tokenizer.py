"""Numba-CUDA cross-tokenizer family (DWA-KD pieces, CTPD, TIS-DPO) beyond the registry run.

(a) CPU, always: every ``ct_*`` kernel is in the signature table (so the PTX compile test of
    ``tests/test_backend_numba.py -k compile`` covers it: cc 9.0, float32 and float64, no
    float64 arithmetic in float32 kernels); the public functions have the reference's
    signatures; the three ops the spec leaves out are absent.
(b) simulator (``NUMBA_ENABLE_CUDASIM=1``, tiny sizes; the registry's tiny cases run in
    ``tests/test_crosscheck.py``): edge cases (infinite logits, adaptive ties and alpha 0/1, 1-D and
    4-D logits, strided inputs, shared / 1-D segment ids, ``padded_mean``, all-empty DTW pairs,
    ``prefix`` positions, ``A`` of the other dtype, a scalar ``mu``, ``decimals=0``); bad input
    raises the reference's errors; every ``ct_*`` kernel is launched in both dtypes with the
    argument types of its compiled signature; outputs are device arrays of the input dtype.
"""

import inspect

import numpy as np
import pytest

from refimpl import _ops
from refimpl import cross_tokenizer as R

pytest.importorskip("numba")
from backends.numba_cuda import _kernels as K  # noqa: E402

from numba_sim import assert_launches_conform, nb, sim_only  # noqa: E402,F401
from numba_sim import raises_like_reference  # noqa: E402
from numba_sim import rng_for as _rng  # noqa: E402
from numba_sim import to_host as _h  # noqa: E402

OPS = [op for op in _ops.select(families=["cross_tokenizer"])]
PUBLIC = ("kd_divergence", "kd_divergence_grad", "entropy_weights", "certainty_weights",
          "kd_gate", "cma_band_penalty", "dwa_dtw_loss", "dwa_dtw_loss_grad", "span_sum",
          "span_weights", "ctpd_loss", "ctpd_loss_grad", "tis_dpo_loss", "tis_dpo_loss_grad")
LEFT_OUT = ("span_align", "cma_align", "dwa_kd_loss")
CT_KERNELS = sorted(name for name in K._SIGNATURES if name.startswith("ct_"))
F64 = dict(rtol=1e-10, atol=1e-10)


def _d(bk, a, dtype="float64"):
    a = np.asarray(a)
    return bk.asarray(a.astype(dtype) if a.dtype.kind == "f" else a)


# --------------------------------------------------------------------------- (a) CPU


def test_every_ct_kernel_is_listed_for_the_ptx_compile_test():
    funcs = K.functions("float64")
    expected = {"ct_kd", "ct_rowstat", "ct_rownorm", "ct_band", "ct_gather_rows",
                "ct_gather_block", "ct_scatter_rows", "ct_sum", "ct_span_sum", "ct_span_scale",
                "ct_span_weights", "ct_ctpd_rows", "ct_row_scale", "ct_tis_tok", "ct_tis_rows",
                "ct_tis_grad"}
    assert set(CT_KERNELS) == expected
    assert expected <= set(funcs)
    listed = {name for name, _, _ in K.specs()}
    for dt in K.DTYPES:
        assert {f"{n}[{dt}]" for n in expected} <= listed


def test_public_functions_have_the_reference_signatures():
    import backends.numba_cuda as bk

    for name in PUBLIC:
        assert name in bk.__all__, name
        assert inspect.signature(getattr(bk, name)) == inspect.signature(getattr(R, name)), name
    for name in LEFT_OUT:
        assert not hasattr(bk, name), name
    assert {op.name for op in OPS} <= set(PUBLIC)


# --------------------------------------------------------------------------- (b) simulator


def _close(got, want, rtol=1e-10, atol=1e-10):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@sim_only
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # 0 * inf in the simulator, as numpy
def test_sim_kd_edge_cases(nb):
    rng = _rng(1)
    z_s, z_t = rng.normal(size=(3, 7)) * 2, rng.normal(size=(3, 7)) * 2
    z_s[0, 2] = -np.inf                               # a -inf student entry adds 0
    z_t[1, 4] = -np.inf                               # a -inf teacher entry (both-mask kinds)
    for kind in ("forward_kl", "reverse_kl", "js"):
        want = R.kd_divergence(z_s, z_t, kind=kind, tau=1.5)
        got = nb.kd_divergence(_d(nb, z_s), _d(nb, z_t), kind=kind, tau=1.5)
        _close(_h(nb, got), want)
    # adaptive: ties in q (equal teacher logits) and alpha at both ends; 1-D and 4-D logits
    zt = np.array([0.5, 0.5, 0.5, -1.0, 2.0, 0.5])
    zs = rng.normal(size=6)
    for alpha in (0.0, 0.3, 1.0):
        want = R.kd_divergence_grad(zs, zt, kind="adaptive_kl", adaptive_alpha=alpha, tau=1.0)
        got = nb.kd_divergence_grad(_d(nb, zs), _d(nb, zt), kind="adaptive_kl",
                                    adaptive_alpha=alpha, tau=1.0)
        assert tuple(got[0].shape) == () and tuple(got[1].shape) == (6,)
        for g, w in zip(got, want):
            _close(_h(nb, g), w)
    # the tail cut falls inside a group of equal q (index order decides: 3 of the 8 zeros,
    # cumsum 0.3 <= 0.35), and on 300-entry rows at several alpha (every key bit searched);
    # float32 as well (its keys leave the low 29 fraction bits unset)
    zt = np.concatenate([np.zeros(8), [np.log(2.0)]])
    zs = rng.normal(size=9)
    want = R.kd_divergence_grad(zs, zt, kind="adaptive_kl", adaptive_alpha=0.35, tau=1.0)
    got = nb.kd_divergence_grad(_d(nb, zs), _d(nb, zt), kind="adaptive_kl",
                                adaptive_alpha=0.35, tau=1.0)
    for g, w in zip(got, want):
        _close(_h(nb, g), w)
    # float32: q = (0.4 + 5 ulps, 0.4, 0.2), the cut between the first two (equal keys would
    # put index 0 first; their keys differ in bits 29..33 only)
    zt = np.array([np.log(2.0) + 2.4e-7, np.log(2.0), 0.0], dtype=np.float32)
    zs = rng.normal(size=3)
    want = R.kd_divergence_grad(zs.astype(np.float32), zt, kind="adaptive_kl",
                                adaptive_alpha=0.65, tau=1.0)
    got = nb.kd_divergence_grad(_d(nb, zs, "float32"), _d(nb, zt, "float32"),
                                kind="adaptive_kl", adaptive_alpha=0.65, tau=1.0)
    for g, w in zip(got, want):
        _close(_h(nb, g), w, rtol=1e-5, atol=1e-6)
    zs, zt = 2.0 * rng.normal(size=(2, 2, 300))
    for alpha, dt, tol in ((0.02, "float64", 1e-10), (0.5, "float64", 1e-10),
                           (0.97, "float64", 1e-10), (0.5, "float32", 1e-5)):
        want = R.kd_divergence_grad(zs, zt, kind="adaptive_kl", adaptive_alpha=alpha, tau=2.0)
        got = nb.kd_divergence_grad(_d(nb, zs, dt), _d(nb, zt, dt), kind="adaptive_kl",
                                    adaptive_alpha=alpha, tau=2.0)
        for g, w in zip(got, want):
            _close(_h(nb, g), w, rtol=tol, atol=tol)
    z4s, z4t = rng.normal(size=(2, 1, 2, 5)), rng.normal(size=(2, 1, 2, 5))
    want = R.kd_divergence_grad(z4s, z4t, kind="skewed_forward_kl", skew=0.4,
                                use_tea_temp=True, tea_temp=0.7)
    got = nb.kd_divergence_grad(_d(nb, z4s), _d(nb, z4t), kind="skewed_forward_kl", skew=0.4,
                                use_tea_temp=True, tea_temp=0.7)
    for g, w in zip(got, want):
        _close(_h(nb, g), w)
    # strided (non-contiguous) logits along the vocabulary
    zs_w, zt_w = rng.normal(size=(2, 3, 10)), rng.normal(size=(2, 3, 10))
    want = R.kd_divergence(zs_w[..., ::2], zt_w[..., ::2], kind="reverse_kl")
    got = nb.kd_divergence(_d(nb, zs_w)[..., ::2], _d(nb, zt_w)[..., ::2], kind="reverse_kl")
    _close(_h(nb, got), want)


@sim_only
def test_sim_weights_gate_band_edges(nb):
    rng = _rng(2)
    z = rng.normal(size=(2, 4, 6)) * 3
    mask = np.array([[0, 1, 1, 0], [0, 0, 0, 0]], dtype=np.int32)     # int mask, empty row
    fmask = mask.astype(np.float32)
    for fn in ("entropy_weights", "certainty_weights"):
        _close(_h(nb, getattr(nb, fn)(_d(nb, z), _d(nb, mask))), getattr(R, fn)(z, mask))
        _close(_h(nb, getattr(nb, fn)(_d(nb, z), _d(nb, fmask))), getattr(R, fn)(z, fmask))
    _close(_h(nb, nb.kd_gate(_d(nb, z), _d(nb, mask.astype(bool)), 3, warmup=10)),
           R.kd_gate(z, mask.astype(bool), 3, warmup=10))
    A = rng.random((2, 3, 5, 4))                                      # batched (..., n, m)
    want = R.cma_band_penalty(A, alpha=0.2, w0=0.3, kappa=0.1, rho=3.0)
    got = nb.cma_band_penalty(_d(nb, A), alpha=0.2, w0=0.3, kappa=0.1, rho=3.0)
    assert tuple(got.shape) == A.shape
    _close(_h(nb, got), want)


@sim_only
def test_sim_dwa_dtw_edges(nb):
    rng = _rng(3)
    B, N, M, d = 2, 4, 3, 3
    X, Y = rng.normal(size=(B, N, d)), rng.normal(size=(B, M, d))
    A = rng.random((B, N, M))
    ms = np.array([[1, 1, 0, 1], [0, 1, 1, 0]], dtype=bool)
    mt = np.array([[0, 1, 1], [1, 1, 0]], dtype=bool)
    kw = dict(gamma=0.5, w0=0.4, kappa=0.2)
    # A of the other float dtype (converted on the device), "prefix" positions
    for positions in ("mask", "prefix"):
        want = R.dwa_dtw_loss_grad(X, Y, ms, mt, A=A, positions=positions, **kw)
        got = nb.dwa_dtw_loss_grad(_d(nb, X), _d(nb, Y), _d(nb, ms), _d(nb, mt),
                                   A=_d(nb, A, "float32"), positions=positions, **kw)
        assert tuple(got[0].shape) == ()
        for g, w in zip(got, want):
            _close(_h(nb, g), w, rtol=1e-6, atol=1e-6)            # A rounded to float32 both
    # every pair empty: value 0, zero gradients, nothing launched for the Soft-DTW
    none_t = np.zeros((B, M), dtype=bool)
    v, dX, dY = nb.dwa_dtw_loss_grad(_d(nb, X), _d(nb, Y), _d(nb, ms), _d(nb, none_t), 0.5)
    assert float(_h(nb, v)) == 0.0 and not _h(nb, dX).any() and not _h(nb, dY).any()
    # no band (A None), float32
    want = R.dwa_dtw_loss(X.astype(np.float32), Y.astype(np.float32), ms, mt, 0.7)
    got = nb.dwa_dtw_loss(_d(nb, X, "float32"), _d(nb, Y, "float32"), _d(nb, ms), _d(nb, mt),
                          0.7)
    assert np.dtype(got.dtype) == np.float32
    _close(_h(nb, got), want, rtol=5e-4, atol=1e-5)


@sim_only
def test_sim_span_edges(nb):
    rng = _rng(4)
    x = -np.abs(rng.normal(size=(2, 3, 6)))
    seg = np.array([0, 0, -1, 1, 3, 3], dtype=np.int32)              # shared, int32, empty span 2
    for reduce in ("sum", "mean", "padded_mean"):
        want = R.span_sum(x, seg, 4, reduce=reduce)
        got = nb.span_sum(_d(nb, x), _d(nb, seg), 4, reduce=reduce)
        assert tuple(got.shape) == (2, 3, 4)
        _close(_h(nb, got), want)
    x1 = x[0, 0]                                                      # 1-D token log-probs
    _close(_h(nb, nb.span_sum(_d(nb, x1), _d(nb, seg), 4)), R.span_sum(x1, seg, 4))
    allneg = np.full(6, -1, dtype=np.int64)
    _close(_h(nb, nb.span_sum(_d(nb, x1), _d(nb, allneg), 2, reduce="padded_mean")),
           R.span_sum(x1, allneg, 2, reduce="padded_mean"))
    lp_pos = -np.abs(rng.normal(size=(4, 5))) * 3
    lp_neg = lp_pos + rng.normal(size=(4, 5))
    for mu, dec in ((-1.0, 2), (1, 0), (np.array([1.0, -1.0, 1.0, -1.0, 1.0]), 1)):
        want = R.span_weights(lp_pos, lp_neg, mu, decimals=dec, k=1.3)
        mu_nb = _d(nb, mu) if isinstance(mu, np.ndarray) else mu
        got = nb.span_weights(_d(nb, lp_pos), _d(nb, lp_neg), mu_nb, decimals=dec, k=1.3)
        _close(_h(nb, got), want)
    # lp_neg of the other float dtype (the reference has no dtype rule: converted)
    want = R.span_weights(lp_pos, lp_neg.astype(np.float32), 1.0)
    got = nb.span_weights(_d(nb, lp_pos), _d(nb, lp_neg, "float32"), 1.0)
    _close(_h(nb, got), want)
    # exact halves (lp_pos = lp_neg: w = k) round half to even, as numpy.round
    for k, dec, w in ((2.5, 0, 2.0), (3.5, 0, 4.0), (0.125, 2, 0.12), (0.375, 2, 0.38)):
        for dt in ("float64", "float32"):
            got = _h(nb, nb.span_weights(_d(nb, lp_pos, dt), _d(nb, lp_pos, dt), 1.0, k=k,
                                         decimals=dec))
            want = R.span_weights(lp_pos, lp_pos, 1.0, k=k, decimals=dec)
            assert np.all(want == w)
            np.testing.assert_allclose(got, want, rtol=1e-7, atol=0)


@sim_only
def test_sim_tis_weights_of_the_other_dtype_and_full_mask(nb):
    from refimpl._cases.ctpd import tis_inputs

    kw = tis_inputs(_rng(5), 1, 3, 5, 0.3, 0.7, True, full=True)
    want = R.tis_dpo_loss_grad(**kw)
    dev = {k: (_d(nb, v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    dev["weights"] = _d(nb, kw["weights"], "float32")
    got = nb.tis_dpo_loss_grad(**dev)
    w32 = dict(kw, weights=kw["weights"].astype(np.float32).astype(np.float64))
    want = R.tis_dpo_loss_grad(**w32)
    for g, w in zip(got, want):
        _close(_h(nb, g), w)


@sim_only
def test_sim_bad_input_raises_the_reference_errors(nb):
    from refimpl._cases.ctpd import ctpd_inputs, tis_inputs

    rng = _rng(6)
    d = lambda a, dt="float64": _d(nb, a, dt)  # noqa: E731
    zs, zt = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    mask = np.ones((2, 3), dtype=bool)
    X, Y, A = rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 4, 2)), rng.random((2, 3, 4))
    mt = np.ones((2, 4), dtype=bool)
    x, seg = rng.normal(size=(2, 6)), np.zeros((2, 6), dtype=np.int64)
    c = ctpd_inputs(rng, 2, 3, 0.1)
    t = tis_inputs(rng, 1, 3, 4, 0.5, 0.5, True)
    tbad = t["labels"].copy()
    tbad[t["mask"]] = 4
    cases = [
        (lambda: R.kd_divergence(zs, zt, kind="kl"),
         lambda: nb.kd_divergence(d(zs), d(zt), kind="kl")),
        (lambda: R.kd_divergence(zs, zt[:, :2]), lambda: nb.kd_divergence(d(zs), d(zt[:, :2]))),
        (lambda: R.kd_divergence(zs, zt.astype(np.float32)),
         lambda: nb.kd_divergence(d(zs), d(zt, "float32"))),
        (lambda: R.kd_divergence_grad(zs, zt, kind="adaptive_kl"),
         lambda: nb.kd_divergence_grad(d(zs), d(zt), kind="adaptive_kl")),
        (lambda: R.kd_divergence(zs, zt, tau=0.0),
         lambda: nb.kd_divergence(d(zs), d(zt), tau=0.0)),
        (lambda: R.kd_divergence(zs, zt, skew=1.5),
         lambda: nb.kd_divergence(d(zs), d(zt), skew=1.5)),
        (lambda: R.entropy_weights(zs[0], mask), lambda: nb.entropy_weights(d(zs[0]), d(mask))),
        (lambda: R.certainty_weights(zt, mask[:, :2]),
         lambda: nb.certainty_weights(d(zt), d(mask[:, :2]))),
        (lambda: R.entropy_weights(zs, mask * 2),
         lambda: nb.entropy_weights(d(zs), d(mask * 2))),
        (lambda: R.kd_gate(zs, mask, -1), lambda: nb.kd_gate(d(zs), d(mask), -1)),
        (lambda: R.kd_gate(zs, mask, 1, warmup=-2),
         lambda: nb.kd_gate(d(zs), d(mask), 1, warmup=-2)),
        (lambda: R.cma_band_penalty(-A), lambda: nb.cma_band_penalty(d(-A))),
        (lambda: R.cma_band_penalty(A[0, 0]), lambda: nb.cma_band_penalty(d(A[0, 0]))),
        (lambda: R.cma_band_penalty(A, alpha=2.0), lambda: nb.cma_band_penalty(d(A), alpha=2.0)),
        (lambda: R.dwa_dtw_loss(X, Y, mask, mt, 0.0, A),
         lambda: nb.dwa_dtw_loss(d(X), d(Y), d(mask), d(mt), 0.0, d(A))),
        (lambda: R.dwa_dtw_loss(X, Y, mask, mt, 1.0, A[:, :, :3]),
         lambda: nb.dwa_dtw_loss(d(X), d(Y), d(mask), d(mt), 1.0, d(A[:, :, :3]))),
        (lambda: R.dwa_dtw_loss_grad(X, Y, mask, mt, 1.0, A, positions="all"),
         lambda: nb.dwa_dtw_loss_grad(d(X), d(Y), d(mask), d(mt), 1.0, d(A), positions="all")),
        (lambda: R.dwa_dtw_loss(X[0], Y[0], mask, mt, 1.0),
         lambda: nb.dwa_dtw_loss(d(X[0]), d(Y[0]), d(mask), d(mt), 1.0)),
        (lambda: R.dwa_dtw_loss(X, Y, mt, mt, 1.0),
         lambda: nb.dwa_dtw_loss(d(X), d(Y), d(mt), d(mt), 1.0)),
        (lambda: R.span_sum(x, seg, 0), lambda: nb.span_sum(d(x), d(seg), 0)),
        (lambda: R.span_sum(x, seg, 2, reduce="max"),
         lambda: nb.span_sum(d(x), d(seg), 2, reduce="max")),
        (lambda: R.span_sum(x, seg[:, :3], 2), lambda: nb.span_sum(d(x), d(seg[:, :3]), 2)),
        (lambda: R.span_sum(x, seg - 2, 2), lambda: nb.span_sum(d(x), d(seg - 2), 2)),
        (lambda: R.span_sum(x, seg.astype(np.float64), 2),
         lambda: nb.span_sum(d(x), d(seg.astype(np.float64)), 2)),
        (lambda: R.span_weights(x, x[:, :3], 1.0),
         lambda: nb.span_weights(d(x), d(x[:, :3]), 1.0)),
        (lambda: R.span_weights(x, x, np.ones(3)),
         lambda: nb.span_weights(d(x), d(x), d(np.ones(3)))),
        (lambda: R.span_weights(x, x, 1.0, lo=1.0, hi=0.0),
         lambda: nb.span_weights(d(x), d(x), 1.0, lo=1.0, hi=0.0)),
        (lambda: R.span_weights(x, x, 1.0, k=0.0),
         lambda: nb.span_weights(d(x), d(x), 1.0, k=0.0)),
        (lambda: R.ctpd_loss(c["ellS"][:3], c["ellT"][:3], c["w"][:3]),
         lambda: nb.ctpd_loss(d(c["ellS"][:3]), d(c["ellT"][:3]), d(c["w"][:3]))),
        (lambda: R.ctpd_loss(c["ellS"], c["ellT"][:, :2], c["w"]),
         lambda: nb.ctpd_loss(d(c["ellS"]), d(c["ellT"][:, :2]), d(c["w"]))),
        (lambda: R.ctpd_loss_grad(c["ellS"], c["ellT"], c["w"].astype(np.float32)),
         lambda: nb.ctpd_loss_grad(d(c["ellS"]), d(c["ellT"]), d(c["w"], "float32"))),
        (lambda: R.ctpd_loss(c["ellS"], c["ellT"], c["w"], beta=-1.0),
         lambda: nb.ctpd_loss(d(c["ellS"]), d(c["ellT"]), d(c["w"]), beta=-1.0)),
        (lambda: R.tis_dpo_loss(**dict(t, labels=tbad)),
         lambda: nb.tis_dpo_loss(d(t["logits"]), d(t["ref_logits"]), d(tbad), d(t["mask"]),
                                 d(t["weights"]), 0.5)),
        (lambda: R.tis_dpo_loss(**dict(t, logits=t["logits"][:1], ref_logits=t["ref_logits"][:1])),
         lambda: nb.tis_dpo_loss(d(t["logits"][:1]), d(t["ref_logits"][:1]), d(t["labels"]),
                                 d(t["mask"]), d(t["weights"]), 0.5)),
        (lambda: R.tis_dpo_loss_grad(**dict(t, alpha=-0.1)),
         lambda: nb.tis_dpo_loss_grad(d(t["logits"]), d(t["ref_logits"]), d(t["labels"]),
                                      d(t["mask"]), d(t["weights"]), 0.5, alpha=-0.1)),
        (lambda: R.tis_dpo_loss(**dict(t, mask=t["mask"] * 3)),
         lambda: nb.tis_dpo_loss(d(t["logits"]), d(t["ref_logits"]), d(t["labels"]),
                                 d(t["mask"] * 3), d(t["weights"]), 0.5)),
    ]
    for ref_call, nb_call in cases:
        raises_like_reference(ref_call, nb_call)
    # host NumPy arrays are refused (no silent host round-trips), naming the argument
    with pytest.raises(TypeError, match="z_s is a numpy.ndarray; the numba_cuda backend"):
        nb.kd_divergence(zs, d(zt))
    with pytest.raises(TypeError, match="mask is a numpy.ndarray"):
        nb.entropy_weights(d(zs), mask)
    with pytest.raises(TypeError, match="seg is a numpy.ndarray"):
        nb.span_sum(d(x), seg, 2)
    with pytest.raises(TypeError, match="mu is a numpy.ndarray"):
        nb.span_weights(d(x), d(x), np.ones((2, 1)))
    with pytest.raises(TypeError, match="labels is a numpy.ndarray"):
        nb.tis_dpo_loss(d(t["logits"]), d(t["ref_logits"]), t["labels"], d(t["mask"]),
                        d(t["weights"]), 0.5)
    with pytest.raises(TypeError, match="A is a numpy.ndarray"):
        nb.dwa_dtw_loss(d(X), d(Y), d(mask), d(mt), 1.0, A)
    with pytest.raises(TypeError, match="z_s must have dtype float32 or float64"):
        nb.kd_divergence(d(zs, "float16"), d(zt, "float16"))


@sim_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sim_every_ct_launch_matches_a_compiled_signature(nb, monkeypatch, dtype):

    from refimpl._cases.ctpd import ctpd_inputs, tis_inputs

    monkeypatch.setattr(K, "RECORD", [])
    rng = _rng(7)
    d = lambda a: _d(nb, a, dtype)  # noqa: E731
    zs, zt = rng.normal(size=(1, 2, 3)), rng.normal(size=(1, 2, 3))
    mask = np.array([[True, False]])
    outs = [nb.kd_divergence_grad(d(zs), d(zt), kind="adaptive_kl", adaptive_alpha=0.5),
            nb.entropy_weights(d(zs), d(mask)), nb.kd_gate(d(zs), d(mask), 0)]
    X, Y, A = rng.normal(size=(1, 2, 2)), rng.normal(size=(1, 2, 2)), rng.random((1, 2, 2))
    outs.append(nb.dwa_dtw_loss_grad(d(X), d(Y), d(np.ones((1, 2), bool)),
                                     d(np.ones((1, 2), bool)), 1.0, d(A), w0=0.5, kappa=0.1))
    seg = np.array([0, -1, 1])
    outs.append(nb.span_sum(d(rng.normal(size=(2, 3))), d(seg), 2, reduce="mean"))
    outs.append(nb.span_sum(d(rng.normal(size=(2, 3))), d(seg), 2, reduce="padded_mean"))
    outs.append(nb.span_weights(d(rng.normal(size=(2, 3))), d(rng.normal(size=(2, 3))),
                                d(np.array([[1.0], [-1.0]]))))
    c = ctpd_inputs(rng, 1, 2, 0.1)
    outs.append(nb.ctpd_loss_grad(d(c["ellS"]), d(c["ellT"]), d(c["w"])))
    t = tis_inputs(rng, 1, 2, 3, 0.5, 0.5, True)
    outs.append(nb.tis_dpo_loss_grad(*(d(t[k]) for k in ("logits", "ref_logits", "labels",
                                                         "mask", "weights")), 0.5))
    for out in outs:                          # results are device arrays of the input dtype
        for o in (out if isinstance(out, tuple) else (out,)):
            assert nb.is_native(o) and np.dtype(o.dtype) == np.dtype(dtype)
    assert K.RECORD, "nothing was launched"
    assert_launches_conform(K.RECORD)
    ran = {name for name, _, _ in K.RECORD if name.startswith("ct_")}
    assert ran == set(CT_KERNELS)
