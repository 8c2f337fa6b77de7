"""Numba-CUDA recsys_vae (Mult-VAE arXiv 1802.05814, PIA arXiv 2511.06781) beyond the registry.

(a) CPU: public signatures equal the reference's; every ``rv_*`` kernel is in the signature
    table that tests/test_backend_numba.py compiles to PTX (cc 9.0), and only rv_topk (the
    float64 assembly of the metric value) is float64 by design.
(b) simulator (tiny sizes): every function vs the float64 reference (refimpl._multvae,
    refimpl._recsys_eval) in float32/float64, dense and CSR X (CSR == dense; int64 CSR indices),
    both mask modes, PIA; metrics exactly equal to the reference (fp64) on tie-free scores with
    bool / int / CSR interaction inputs, k > I, |T| = 0; bad input raises the reference's
    errors; one host read per call; every launch matches a compiled signature and every rv_*
    kernel runs.
(c) ``gpu``: the registry's GPU sizes (U = 500, I = 20,108 fp32 forward+backward; metrics
    10,000 x 20,000, k = 100).
"""

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from refimpl import _multvae as R
from refimpl import _recsys_eval as RE

pytest.importorskip("numba")
from backends.numba_cuda import _kernels as K  # noqa: E402
from backends.numba_cuda import recsys_vae as S  # noqa: E402

from numba_sim import assert_launches_conform, count_host_reads  # noqa: E402
from numba_sim import GPU_REASON, ON_GPU, nb, sim_only  # noqa: E402,F401
from numba_sim import raises_like_reference  # noqa: E402
from numba_sim import rng_for as _rng  # noqa: E402

KERNELS = [n for n in K._SIGNATURES if n.startswith("rv_")]
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=5e-4, atol=1e-5)}
U, I, D, H = 4, 12, 3, 5          # the registry's tiny scale


def _d(bk, a, dt="float64"):
    a = np.asarray(a)
    return bk.asarray(a.astype(dt) if a.dtype.kind == "f" else a)


def _h(bk, x):
    return np.asarray(bk.to_numpy(x), dtype=np.float64)


def _csr(bk, A, dt="float64", idx="int32"):
    """A duck-typed device CSR (``shape``, ``data``, ``indices``, ``indptr``)."""
    M = sp.csr_matrix(np.asarray(A))
    return SimpleNamespace(shape=M.shape, data=_d(bk, M.data, dt),
                           indices=bk.asarray(M.indices.astype(idx)),
                           indptr=bk.asarray(M.indptr.astype(idx)))


def _model(seed=0, empty_row=2):
    rng = _rng(seed)
    X = (rng.random((U, I)) < 0.4).astype(np.float64)
    X[0, 0] = 1.0
    if empty_row is not None:
        X[empty_row] = 0.0
    P = R.multvae_init(I, rng, hidden=H, latent=D)
    P = {k: v + 0.3 * rng.normal(size=v.shape) for k, v in P.items()}   # non-trivial biases
    mask, eps = R.multvae_draw(rng, U, I, latent=D)
    E = 0.5 * rng.normal(size=(I, D))
    return rng, X, P, mask, eps, E


def _pd(bk, P, dt):
    return {k: _d(bk, v, dt) for k, v in P.items()}


def _cast(a, dt):
    """What the backend sees of a float64 input (the reference gets the same rounded values)."""
    return None if a is None else np.asarray(a, dtype=dt).astype(np.float64)


# --------------------------------------------------------------------------- (a) CPU


def test_public_functions_have_the_reference_signatures():
    for name in S.__all__:
        ref = getattr(R, name, None) or getattr(RE, name)
        assert inspect.signature(getattr(S, name)) == inspect.signature(ref), name
    want = (set(R.__all__) - {"multvae_init", "multvae_draw"}) | {"recall_at_k", "ndcg_at_k"}
    assert set(S.__all__) == want


def test_rv_kernels_are_listed_and_only_rv_topk_uses_float64():
    built = {n for n in K.functions("float64") if n.startswith("rv_")}
    assert built == set(KERNELS) and len(KERNELS) >= 20
    ids = {name for name, _, _ in K.specs()}
    assert all(f"{n}[{dt}]" in ids for n in KERNELS for dt in K.DTYPES)
    assert {n for n in K.FP64_BY_DESIGN if n.startswith("rv_")} == {"rv_topk"}


def test_anneal_beta_is_the_reference_schedule():
    for t in (0, 100_000, 200_000, 300_000):
        assert S.anneal_beta(t) == R.anneal_beta(t) == min(0.2, t / 200_000)


# --------------------------------------------------------------------------- (b) simulator


@sim_only
@pytest.mark.parametrize("dt", ["float64", "float32"])
def test_sim_forward_and_loss_match_the_reference(nb, dt):
    _, X, P, mask, eps, _ = _model(1)
    Pr = {k: _cast(v, dt) for k, v in P.items()}
    tol = TOL[dt]
    for mode, m, e in (("dropout", mask, eps), ("bernoulli", mask, eps), ("dropout", None, None),
                       ("bernoulli", None, eps)):
        ref = R.multvae_forward(X, Pr, _cast(m, dt), _cast(e, dt), 0.5, mode)
        for Xd in (_d(nb, X, dt), _csr(nb, X, dt))[:2 if m is not None else 1]:
            got = S.multvae_forward(Xd, _pd(nb, P, dt), None if m is None else _d(nb, m, dt),
                                    None if e is None else _d(nb, e, dt), 0.5, mode)
            for g, r in zip(got, ref):
                assert g.dtype == np.dtype(dt)
                np.testing.assert_allclose(_h(nb, g), r, **tol)
    logits, mu, lv = (_cast(a, dt) for a in R.multvae_forward(X, P, mask, eps))
    ref = R.multvae_loss(X, logits, mu, lv, 0.3)
    for Xd in (_d(nb, X, dt), _csr(nb, X, dt)):
        got = S.multvae_loss(Xd, *(_d(nb, a, dt) for a in (logits, mu, lv)), 0.3)
        assert all(g.shape == () and g.dtype == np.dtype(dt) for g in got)
        np.testing.assert_allclose([float(_h(nb, g)) for g in got], ref, **tol)


@sim_only
@pytest.mark.parametrize("dt", ["float64", "float32"])
def test_sim_value_and_grad_matches_the_explicit_reference_backward(nb, dt):
    _, X, P, mask, eps, E = _model(2)
    Pr = {k: _cast(v, dt) for k, v in P.items()}
    tol = TOL[dt]
    for mode, m, e, EE, lam in (("dropout", mask, eps, None, 0.0),
                                ("bernoulli", mask, eps, E, 0.7),
                                ("dropout", None, None, E, 2.0)):
        loss_r, g_r = R.multvae_value_and_grad(X, Pr, 0.2, _cast(m, dt), _cast(e, dt), 0.5, mode,
                                               _cast(EE, dt), lam)
        results = []
        for Xd in (_d(nb, X, dt), _csr(nb, X, dt, idx="int64"))[:2 if EE is not None else 1]:
            loss, g = S.multvae_value_and_grad(
                Xd, _pd(nb, P, dt), 0.2, None if m is None else _d(nb, m, dt),
                None if e is None else _d(nb, e, dt), 0.5, mode,
                None if EE is None else _d(nb, EE, dt), lam)
            assert list(g) == list(g_r)
            np.testing.assert_allclose(float(_h(nb, loss)), loss_r, **tol)
            for k in g_r:
                assert g[k].dtype == np.dtype(dt)
                np.testing.assert_allclose(_h(nb, g[k]), g_r[k], err_msg=k, **tol)
            results.append({k: _h(nb, v) for k, v in g.items()})
        for k in (g_r if len(results) == 2 else ()):    # CSR == dense (atomics: rounding only)
            np.testing.assert_allclose(results[1][k], results[0][k], err_msg=k, **tol)


@sim_only
@pytest.mark.parametrize("dt", ["float64", "float32"])
def test_sim_pia_centroids_and_w2_match_the_reference(nb, dt):
    rng, X, _, _, _, E = _model(3)
    mu, lv = rng.normal(size=(U, D)), 0.3 * rng.normal(size=(U, D))
    z = rng.normal(size=(3, U, D))
    mu_, lv_, E_, z_ = (_cast(a, dt) for a in (mu, lv, E, z))
    tol = TOL[dt]
    dev = lambda a: _d(nb, a, dt)  # noqa: E731
    for Xd in (dev(X), _csr(nb, X, dt)):
        for red in ("mean", "sum", "none"):
            for zz in (None, z):
                ref = R.pia_anchor_loss(mu_, lv_, X, E_, red, None if zz is None else z_)
                got = _h(nb, S.pia_anchor_loss(dev(mu), dev(lv), Xd, dev(E), red,
                                               None if zz is None else dev(zz)))
                np.testing.assert_allclose(got, ref, **tol)        # NaN where n_u = 0
        for g, r in zip(S.pia_anchor_grad(dev(mu), dev(lv), Xd, dev(E)),
                        R.pia_anchor_grad(mu_, lv_, X, E_)):
            np.testing.assert_allclose(_h(nb, g), r, **tol)
        np.testing.assert_allclose(_h(nb, S.item_centroids(Xd, dev(E))),
                                   R.item_centroids(X, E_), **tol)
    s1, s2 = np.abs(rng.normal(size=(2, U, D)))
    np.testing.assert_allclose(
        _h(nb, S.gaussian_w2(dev(mu), dev(s1), dev(lv), dev(s2))),
        R.gaussian_w2(mu_, _cast(s1, dt), lv_, _cast(s2, dt)), **tol)


def _metric_data(seed, Us=6, Is=30):
    rng = _rng(seed)
    scores = (rng.permuted(np.tile(np.arange(Is), (Us, 1)), axis=1) - Is // 2) * 2.0 ** -4
    fold = rng.random((Us, Is)) < 0.3
    held = (rng.random((Us, Is)) < 0.3) & ~fold
    held[1] = False                                   # |T| = 0 -> NaN
    fold[2, :-3] = True                               # user 2: only 3 candidates
    fold[2, -3:] = False
    held[2] = False
    held[2, -1] = True
    scores[3, 5] = -np.inf                            # not ranked
    held[3, 5] = True
    fold[3, 5] = False
    return scores, fold, held


@sim_only
@pytest.mark.parametrize("dt", ["float64", "float32"])
def test_sim_metrics_equal_the_reference(nb, dt):
    scores, fold, held = _metric_data(6)
    ins = ((nb.asarray(fold), nb.asarray(held.astype(np.int32))),
           (_d(nb, fold.astype(np.float64), dt), nb.asarray(held.astype(np.uint8))),
           (_csr(nb, fold, dt), _csr(nb, held, dt, idx="int64")))
    for j, k in enumerate((1, 4, 10, 40)):             # 40 > I
        for q, fn in enumerate(("recall_at_k", "ndcg_at_k")):
            ref = getattr(RE, fn)(scores, fold, held, k)
            for f, h in (ins[(2 * j + q) % 3],):        # every input kind, a few k each
                got = getattr(S, fn)(_d(nb, scores, dt), f, h, k)
                assert got.dtype == np.dtype(dt)
                if dt == "float64":
                    np.testing.assert_array_equal(_h(nb, got), ref)     # bit-equal, NaN alike
                else:
                    np.testing.assert_array_equal(_h(nb, got), ref.astype(np.float32))
    perfect = np.where(held, 10.0, 0.0) - np.arange(held.shape[1]) * 1e-3
    for fn in ("recall_at_k", "ndcg_at_k"):
        got = _h(nb, getattr(S, fn)(_d(nb, perfect), nb.asarray(np.zeros_like(fold)),
                                    nb.asarray(held), 3))
        ok = held.sum(axis=1) > 0
        assert np.all(got[ok] == 1.0) and np.all(np.isnan(got[~ok]))


@sim_only
def test_sim_bad_input_raises_the_reference_errors(nb):
    _, X, P, mask, eps, E = _model(4)
    d = lambda a: _d(nb, a)  # noqa: E731
    Pd = _pd(nb, P, "float64")
    Xb = X.copy()
    Xb[1, 3] = 2.0
    raises_like_reference(lambda: R.multvae_forward(Xb, P), lambda: S.multvae_forward(d(Xb), Pd))
    Xc = sp.csr_matrix(X)
    Xc.data[0] = 3.0
    raises_like_reference(lambda: R.multvae_forward(Xc, P),
                          lambda: S.multvae_forward(_csr(nb, Xc.toarray()), Pd))
    P2 = dict(P, W4=P["W4"][:, :-1])
    raises_like_reference(lambda: R.multvae_forward(X, P2),
                          lambda: S.multvae_forward(d(X), _pd(nb, P2, "float64")))
    raises_like_reference(lambda: R.multvae_forward(X, P, mask, eps, keep_prob=1.5),
                          lambda: S.multvae_forward(d(X), Pd, d(mask), d(eps), keep_prob=1.5))
    mb = mask.copy()
    mb[0, 0] = 0.5
    raises_like_reference(lambda: R.multvae_forward(X, P, mb),
                          lambda: S.multvae_forward(d(X), Pd, d(mb)))
    raises_like_reference(lambda: R.multvae_value_and_grad(X, P, -1.0, mask, eps),
                          lambda: S.multvae_value_and_grad(d(X), Pd, -1.0, d(mask), d(eps)))
    Z = np.zeros_like(X)
    raises_like_reference(lambda: R.multvae_value_and_grad(Z, P, 0.1, mask, eps, E=E),
                          lambda: S.multvae_value_and_grad(d(Z), Pd, 0.1, d(mask), d(eps),
                                                           E=d(E)))
    mu, lv = eps, eps
    raises_like_reference(lambda: R.pia_anchor_loss(mu, lv, Z, E),
                          lambda: S.pia_anchor_loss(d(mu), d(lv), d(Z), d(E)))
    eb = eps.copy()
    eb[0, 0] = np.nan
    raises_like_reference(lambda: R.multvae_loss(X, X, eb, lv, 0.1),
                          lambda: S.multvae_loss(d(X), d(X), d(eb), d(lv), 0.1))
    raises_like_reference(lambda: R.gaussian_w2(mu, -np.abs(lv), mu, lv),
                          lambda: S.gaussian_w2(d(mu), d(-np.abs(lv)), d(mu), d(lv)))
    scores, fold, held = _metric_data(7)
    both = held.copy()
    both[0] |= fold[0]
    raises_like_reference(lambda: RE.recall_at_k(scores, fold, both, 3),
                          lambda: S.recall_at_k(d(scores), nb.asarray(fold), nb.asarray(both), 3))
    raises_like_reference(lambda: RE.ndcg_at_k(scores, fold, held, 0),
                          lambda: S.ndcg_at_k(d(scores), nb.asarray(fold), nb.asarray(held), 0))
    sn = scores.copy()
    sn[0, 0] = np.nan
    raises_like_reference(lambda: RE.ndcg_at_k(sn, fold, held, 3),
                          lambda: S.ndcg_at_k(d(sn), nb.asarray(fold), nb.asarray(held), 3))
    with pytest.raises(ValueError, match="k <= 128"):
        S.recall_at_k(d(scores), nb.asarray(fold), nb.asarray(held), 129)
    with pytest.raises(TypeError):
        S.multvae_forward(X, Pd)                                     # host arrays are refused


@sim_only
def test_sim_one_host_read_per_call(nb, monkeypatch):
    _, X, P, mask, eps, E = _model(5)
    d = lambda a: _d(nb, a)  # noqa: E731
    args = (d(X), _pd(nb, P, "float64"), 0.1, d(mask), d(eps))
    scores, fold, held = (nb.asarray(a) for a in _metric_data(8))
    reads = count_host_reads(monkeypatch)
    S.multvae_value_and_grad(*args, E=d(E), lam_A=0.5)     # X, mask, eps, E, X nonempty
    S.pia_anchor_loss(d(eps), d(eps), d(X), d(E))            # mu, logvar, X, E, nonempty
    S.ndcg_at_k(scores, fold, held, 5)
    assert reads == [(5,), (5,), (4,)]


@sim_only
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_sim_every_launch_matches_a_compiled_signature(nb, monkeypatch, dt):

    monkeypatch.setattr(K, "RECORD", [])
    rng, X, P, mask, eps, E = _model(9)
    d = lambda a: _d(nb, a, dt)  # noqa: E731
    Pd = _pd(nb, P, dt)
    Xc = _csr(nb, X, dt, idx="int64")
    S.multvae_value_and_grad(d(X), Pd, 0.1, d(mask), d(eps), E=d(E), lam_A=0.5)
    S.multvae_value_and_grad(Xc, Pd, 0.1, d(mask), d(eps), 0.5, "bernoulli", d(E), 0.5)
    S.multvae_loss(Xc, d(rng.normal(size=(U, I))), d(eps), d(eps), 0.1)
    S.pia_anchor_loss(d(eps), d(eps), d(X), d(E), "none", d(rng.normal(size=(2, U, D))))
    S.item_centroids(d(X), d(E))
    S.gaussian_w2(d(eps), d(np.abs(eps)), d(eps), d(np.abs(eps)))
    scores, fold, held = _metric_data(10, Us=4, Is=10)
    other = "float32" if dt == "float64" else "float64"
    for fa in (fold, fold.astype(np.int8), fold.astype(np.int16), fold.astype(np.int32),
               fold.astype(np.int64), fold.astype(np.uint8), fold.astype(np.uint16),
               fold.astype(np.uint32), fold.astype(np.uint64), fold.astype(other)):
        S.recall_at_k(d(scores), nb.asarray(fa), _csr(nb, held.astype(np.int8), dt), 2)
    ran = {rec[0] for rec in K.RECORD if rec[0].startswith("rv_")}
    assert_launches_conform(K.RECORD)
    assert ran == set(KERNELS), f"rv_* kernels that never ran: {set(KERNELS) - ran}"


# --------------------------------------------------------------------------- (c) real device


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
def test_gpu_registry_sizes():
    import backends

    bk = backends.get("numba_cuda")
    rng = _rng(20)
    Ug, Ig, Hg, Dg = 500, 20_108, 600, 200
    X = (rng.random((Ug, Ig)) < 0.004).astype(np.float32)
    X[:, 0] = 1.0
    P = {k: v.astype(np.float32) for k, v in R.multvae_init(Ig, rng, Hg, Dg).items()}
    mask, eps = (a.astype(np.float32) for a in R.multvae_draw(rng, Ug, Ig, Dg))
    loss, g = S.multvae_value_and_grad(bk.asarray(X), {k: bk.asarray(v) for k, v in P.items()},
                                       0.2, bk.asarray(mask), bk.asarray(eps))
    loss_r, g_r = R.multvae_value_and_grad(X, P, 0.2, mask, eps)
    np.testing.assert_allclose(float(bk.to_numpy(loss)), loss_r, rtol=5e-4)
    for k in g_r:
        np.testing.assert_allclose(bk.to_numpy(g[k]), g_r[k], rtol=5e-3,
                                   atol=5e-4 * np.abs(g_r[k]).max(), err_msg=k)
    Um, Im = 10_000, 20_000
    scores = ((rng.permuted(np.tile(np.arange(Im, dtype=np.int32), (Um, 1)), axis=1) - Im // 2)
              * 2.0 ** -6).astype(np.float32)
    fold = rng.random((Um, Im)) < 0.004
    held = (rng.random((Um, Im)) < 0.002) & ~fold
    for fn in ("recall_at_k", "ndcg_at_k"):
        got = bk.to_numpy(getattr(S, fn)(bk.asarray(scores), bk.asarray(fold),
                                         bk.asarray(held), 100))
        ref = getattr(RE, fn)(scores, fold, held, 100)
        np.testing.assert_array_equal(got, ref.astype(np.float32))
