"""Numba-CUDA safety_ensembles (Antibody, IBDR) beyond the registry cross-check.

(a) CPU: public signatures equal the reference's; every ``se_*`` kernel is in the signature
    table that tests/test_backend_numba.py compiles to PTX (cc 9.0), and only the float64
    IBDR passes are float64 by design.
(b) simulator (tiny sizes): every op vs the float64 reference in float32/float64 (IBDR code and
    paper, alpha in {0, 0.02, 3}, int32 labels; chunked weighted CE, both variants); bad input
    raises the reference's errors; one host read per call; every launch matches a compiled
    signature and every se_* kernel runs.
(c) ``gpu``: bench sizes (P = 25,165,824 align direction; IBDR (4, 8192, 397)).
"""

import inspect

import numpy as np
import pytest

from refimpl import _antibody as A
from refimpl import _ibdr as I
from refimpl._cases.preference import head_inputs

pytest.importorskip("numba")
from backends.numba_cuda import _kernels as K  # noqa: E402
from backends.numba_cuda import safety_ensembles as S  # noqa: E402

from numba_sim import assert_launches_conform, count_host_reads  # noqa: E402
from numba_sim import to_dev as _d  # noqa: E402
from numba_sim import to_host as _h  # noqa: E402
from numba_sim import GPU_REASON, ON_GPU, nb, sim_only  # noqa: E402,F401
from numba_sim import raises_like_reference  # noqa: E402
from numba_sim import rng_for as _rng  # noqa: E402

KERNELS = [n for n in K._SIGNATURES if n.startswith("se_")]
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=5e-4, atol=1e-5)}


def test_public_functions_have_the_reference_signatures():
    for name in S.__all__:
        ref = getattr(A, name, None) or getattr(I, name)
        assert inspect.signature(getattr(S, name)) == inspect.signature(ref), name
    assert set(S.__all__) == set(A.__all__) | set(I.__all__)


def test_se_kernels_are_listed_and_only_the_float64_ibdr_passes_use_float64():
    built = {n for n in K.functions("float64") if n.startswith("se_")}
    assert built == set(KERNELS) and len(KERNELS) >= 10
    ids = {name for name, _, _ in K.specs()}
    assert all(f"{n}[{dt}]" in ids for n in KERNELS for dt in K.DTYPES)
    assert {n for n in K.FP64_BY_DESIGN if n.startswith("se_")} == {
        "se_ibdr_fwd", "se_ibdr_chol", "se_ibdr_inv", "se_ibdr_coef"}


def _vectors(rng, P=10):
    return [rng.normal(size=P) for _ in range(5)]


def _tokens(rng):
    H, W, b, labels, mask = head_inputs(rng, 2, 5, 8, 11, bias=True)
    labels = np.where(mask, labels, -100)
    labels[1] = -100                                 # a row without completion tokens
    w = A.antibody_weights(rng.normal(size=H.shape[0]), rng.normal(size=H.shape[0]))
    return H, W, b, labels, w


@sim_only
@pytest.mark.parametrize("dt", ["float64", "float32"])
def test_sim_antibody_ops_match_the_reference(nb, dt):
    rng = _rng(1)
    gs, gh, gp, gr, th = _vectors(rng)
    d = lambda x: _d(nb, x, dt)  # noqa: E731
    tol = TOL[dt]
    for lam_ema, variant in ((None, "cosine"), (0.7, "kkt"), (d(np.array(0.3)), "cosine")):
        ref_ema = None if lam_ema is None else float(_h(nb, lam_ema)) if hasattr(
            lam_ema, "shape") else lam_ema
        got = S.antibody_align_direction(d(gs), d(gh), d(gp), d(gr), lam_ema, variant=variant)
        want = A.antibody_align_direction(gs, gh, gp, gr, ref_ema, variant=variant)
        for g, w in zip(got, want):
            np.testing.assert_allclose(_h(nb, g), w, **tol)
        assert got[1].shape == () and str(got[0].dtype) == dt
        got = S.antibody_lambda(d(gs), d(gh), lam_ema, variant=variant, momentum=0.5)
        want = A.antibody_lambda(gs, gh, ref_ema, variant=variant, momentum=0.5)
        np.testing.assert_allclose([float(_h(nb, x)) for x in got], want, **tol)
    np.testing.assert_allclose(_h(nb, S.harmful_perturb(d(th), d(gh), 0.3)),
                               A.harmful_perturb(th, gh, 0.3), **tol)
    np.testing.assert_allclose(_h(nb, S.harmful_perturb(d(th), d(0 * gh))), th, **tol)
    nc, nr = rng.normal(size=4), rng.normal(size=4)
    np.testing.assert_allclose(_h(nb, S.antibody_weights(d(nc), d(nr), tau=0.5)),
                               A.antibody_weights(nc, nr, tau=0.5), **tol)
    H, W, b, labels, w = _tokens(rng)
    for variant, chunks, bias in (("code", (4, 5), True), ("paper", (None, None), False)):
        bb = b if bias else None
        got = S.weighted_token_ce_grad(d(H), d(W), d(labels), d(w), None if bb is None else d(bb),
                                       variant=variant, token_chunk=chunks[0],
                                       vocab_chunk=chunks[1])
        want = A.weighted_token_ce_grad(H, W, labels, w, bb, variant=variant)
        assert (got[3] is None) == (bb is None)
        for g, x in zip(got, want):
            if x is not None:
                np.testing.assert_allclose(_h(nb, g), x, **tol)
        np.testing.assert_allclose(
            float(_h(nb, S.weighted_token_ce(d(H), d(W), d(labels), d(w), variant=variant))),
            A.weighted_token_ce(H, W, labels, w, variant=variant), **tol)
    nll, n_tok = S.token_mean_nll(d(H), d(W), d(labels.astype(np.int32)), d(b))
    want = A.token_mean_nll(H, W, labels, b)
    np.testing.assert_allclose(_h(nb, nll), want[0], **tol)
    assert str(n_tok.dtype) == "int64" and (nb.to_numpy(n_tok) == want[1]).all()


@sim_only
@pytest.mark.parametrize("dt", ["float64", "float32"])
def test_sim_ibdr_ops_match_the_reference(nb, dt):
    rng = _rng(2)
    d = lambda x: _d(nb, x, dt)  # noqa: E731
    tol = TOL[dt]
    L = rng.normal(size=(4, 3, 5))
    y = np.array([0, 4, 2])
    for variant in ("code", "paper"):
        for alpha in (0.0, 0.02, 3.0):
            got = S.ibdr_loss_grad(d(L), d(y.astype(np.int32)), alpha_div=alpha, variant=variant)
            want = I.ibdr_loss_grad(L, y, alpha_div=alpha, variant=variant)
            np.testing.assert_allclose(float(_h(nb, got[0])), want[0], **tol)
            np.testing.assert_allclose(_h(nb, got[1]), want[1], **tol)
    np.testing.assert_allclose(float(_h(nb, S.ibdr_loss(d(L[:1]), d(y), alpha_div=0.0))),
                               I.ibdr_loss(L[:1], y, alpha_div=0.0), **tol)
    Pr = I._softmax(rng.normal(size=(2, 3, 5)))
    Pr[1] = Pr[0]                                    # identical particles: log(K+j)+(K-1)log j
    np.testing.assert_allclose(float(_h(nb, S.dpp_logdet_diversity(d(Pr), d(y)))),
                               I.dpp_logdet_diversity(Pr, y), rtol=tol["rtol"], atol=1e-4)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    np.testing.assert_allclose(float(_h(nb, S.prediction_distance(d(a), d(b)))),
                               I.prediction_distance(a, b), **tol)
    th, g = rng.normal(size=10), rng.normal(size=10)
    for lam in (0.7, d(np.array(2.0))):
        ref_lam = lam if isinstance(lam, float) else 2.0
        np.testing.assert_allclose(_h(nb, S.dro_ascent(d(th), d(g), lam, clip=0.5)),
                                   I.dro_ascent(th, g, ref_lam, clip=0.5), **tol)
    got = S.ibdr_dual_update(3.0, d(np.array(0.05)), 0.1)
    assert isinstance(got, float)
    assert got == pytest.approx(I.ibdr_dual_update(3.0, float(np.array(0.05, dtype=dt)), 0.1))


@sim_only
def test_sim_bad_input_raises_the_reference_errors(nb):
    rng = _rng(3)
    gs, gh, gp, gr, th = _vectors(rng)
    d = lambda x: _d(nb, x)  # noqa: E731
    bad = gh.copy()
    bad[3] = np.nan
    raises_like_reference(lambda: A.antibody_align_direction(gs, bad, gp, gr),
                          lambda: S.antibody_align_direction(d(gs), d(bad), d(gp), d(gr)))
    raises_like_reference(lambda: A.antibody_align_direction(gs, gh, gp, bad),
                          lambda: S.antibody_align_direction(d(gs), d(gh), d(gp), d(bad)))
    raises_like_reference(lambda: A.antibody_lambda(gs, gh, momentum=2.0),
                          lambda: S.antibody_lambda(d(gs), d(gh), momentum=2.0))
    raises_like_reference(lambda: A.harmful_perturb(th, bad), lambda: S.harmful_perturb(d(th), d(bad)))
    raises_like_reference(lambda: A.harmful_perturb(th, gh[:5]),
                          lambda: S.harmful_perturb(d(th), d(gh[:5])))
    raises_like_reference(lambda: I.dro_ascent(th, bad, 1.0), lambda: S.dro_ascent(d(th), d(bad), 1.0))
    raises_like_reference(lambda: I.dro_ascent(th, gh, -1.0), lambda: S.dro_ascent(d(th), d(gh), -1.0))
    raises_like_reference(lambda: A.antibody_weights(gs[:3], bad[:4]),
                          lambda: S.antibody_weights(d(gs[:3]), d(bad[:4])))
    raises_like_reference(lambda: A.antibody_weights(gs[:4], bad[:4]),
                          lambda: S.antibody_weights(d(gs[:4]), d(bad[:4])))
    H, W, b, labels, w = _tokens(rng)
    lab = labels.copy()
    lab[0, -1] = 11
    raises_like_reference(lambda: A.token_mean_nll(H, W, lab),
                          lambda: S.token_mean_nll(d(H), d(W), d(lab)))
    raises_like_reference(lambda: A.weighted_token_ce(H, W, labels, -w),
                          lambda: S.weighted_token_ce(d(H), d(W), d(labels), d(-w)))
    raises_like_reference(lambda: A.weighted_token_ce(H[:0], W, labels[:0], w[:0]),
                          lambda: S.weighted_token_ce(d(H[:0]), d(W), d(labels[:0]), d(w[:0])))
    L = rng.normal(size=(2, 3, 5))
    y = np.array([0, 4, 2])
    Lb = L.copy()
    Lb[1, 2, 3] = np.inf
    for args in ((Lb, y), (L, np.array([0, 5, 2])), (L[:1], y), (L[:, :, :2], np.zeros(3, int))):
        raises_like_reference(lambda: I.ibdr_loss(*args), lambda: S.ibdr_loss(d(args[0]), d(args[1])))
    raises_like_reference(lambda: I.ibdr_loss(L, y.astype(float)),
                          lambda: S.ibdr_loss(d(L), d(y.astype(float))))
    raises_like_reference(lambda: I.ibdr_loss(L, y, variant="fisher"),
                          lambda: S.ibdr_loss(d(L), d(y), variant="fisher"))
    P = I._softmax(L)
    P[0, 0, 1] = -0.5
    raises_like_reference(lambda: I.dpp_logdet_diversity(P, y),
                          lambda: S.dpp_logdet_diversity(d(P), d(y)))
    raises_like_reference(lambda: I.dpp_logdet_diversity(np.abs(P), y, jitter=0.0),
                          lambda: S.dpp_logdet_diversity(d(np.abs(P)), d(y), jitter=0.0))
    raises_like_reference(lambda: I.prediction_distance(L[0], Lb[1]),
                          lambda: S.prediction_distance(d(L[0]), d(Lb[1])))
    raises_like_reference(lambda: I.ibdr_dual_update(1.0, -0.1, 0.1),
                          lambda: S.ibdr_dual_update(1.0, d(np.array(-0.1)), 0.1))
    with pytest.raises(ValueError, match="K <= 8"):
        S.ibdr_loss(d(rng.normal(size=(9, 2, 4))), d(np.zeros(2, int)))
    with pytest.raises(TypeError):
        S.antibody_align_direction(gs, d(gh), d(gp), d(gr))      # host arrays are refused


@sim_only
def test_sim_one_host_read_per_call(nb, monkeypatch):
    rng = _rng(4)
    gs, gh, gp, gr, th = (_d(nb, x) for x in _vectors(rng))
    L, y = _d(nb, rng.normal(size=(2, 3, 5))), _d(nb, np.array([0, 4, 2]))
    reads = count_host_reads(monkeypatch)
    S.antibody_align_direction(gs, gh, gp, gr, 0.5)
    S.harmful_perturb(th, gh)
    S.ibdr_loss_grad(L, y)
    S.prediction_distance(L[0], L[1])
    assert reads == [(11,), (11,), (7,), (7,)]


@sim_only
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_sim_every_launch_matches_a_compiled_signature(nb, monkeypatch, dt):

    monkeypatch.setattr(K, "RECORD", [])
    rng = _rng(5)
    d = lambda x: _d(nb, x, dt)  # noqa: E731
    gs, gh, gp, gr, th = (d(x) for x in _vectors(rng))
    S.antibody_align_direction(gs[::2], gh[::2], gp[::2], gr[::2])
    S.antibody_lambda(gs, gh, 0.2)
    S.harmful_perturb(th, gh)
    S.dro_ascent(th, gh, 1.0)
    S.antibody_weights(gs[:4], gh[:4])
    H, W, b, labels, w = _tokens(rng)
    S.weighted_token_ce_grad(d(H), d(W), d(labels), d(w), d(b), token_chunk=3)
    S.token_mean_nll(d(H), d(W), d(labels))
    L = d(rng.normal(size=(3, 2, 4)))
    S.ibdr_loss_grad(L, d(np.array([1, 3], dtype=np.int16)), variant="paper")
    S.dpp_logdet_diversity(d(I._softmax(rng.normal(size=(2, 2, 4)))), d(np.array([0, 1])))
    S.prediction_distance(L[0], L[1])
    ran = [rec for rec in K.RECORD if rec[0].startswith("se_")]
    assert_launches_conform(K.RECORD)
    assert {name for name, _, _ in ran} == set(KERNELS), "a listed se_* kernel never ran"


# --------------------------------------------------------------------------- (c) real device


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
def test_gpu_bench_sizes():
    import backends

    bk = backends.get("numba_cuda")
    rng = _rng(20)
    P = 25_165_824
    vs = [rng.normal(size=P).astype(np.float32) for _ in range(4)]
    got = bk.to_numpy(S.antibody_align_direction(*(bk.asarray(v) for v in vs))[0])
    want = A.antibody_align_direction(*(v.astype(np.float64) for v in vs))[0]
    np.testing.assert_allclose(got, want, rtol=5e-4, atol=1e-4)
    L = rng.normal(size=(4, 8192, 397)).astype(np.float32)
    y = rng.integers(0, 397, size=8192)
    loss, dL = S.ibdr_loss_grad(bk.asarray(L), bk.asarray(y))
    wl, wdl = I.ibdr_loss_grad(L.astype(np.float64), y)
    np.testing.assert_allclose(float(bk.to_numpy(loss)), wl, rtol=5e-4, atol=1e-5)
    np.testing.assert_allclose(bk.to_numpy(dL), wdl, rtol=5e-4, atol=1e-6)
