"""Numba-CUDA CRPL (arXiv 2506.11493) beyond the registry cross-check.

(a) CPU: public signatures equal the reference's; every ``crpl_*`` kernel is in the signature
    table that tests/test_backend_numba.py compiles to PTX (cc 9.0), none float64 by design.
(b) simulator (tiny sizes): every op vs the float64 reference (float64 and float32), including
    the step where the last centroid becomes available (n_pseudo 2 -> 3), source-combined mode,
    the baseline (integer pseudo-label) branch and the explicit gradient; bad input raises the
    reference's errors; one host read per call for validation (plus the documented OT transfer
    of C); every launch matches a compiled signature.
(c) ``gpu``: the paper's sizes (B = 30, K = 345, D = 1024, S = 3).
"""

import inspect

import numpy as np
import pytest

from refimpl import _crpl as R

pytest.importorskip("numba")
from backends.numba_cuda import _kernels as K  # noqa: E402
from backends.numba_cuda import crpl as C  # noqa: E402

from numba_sim import assert_launches_conform, count_host_reads  # noqa: E402
from numba_sim import to_dev as _d  # noqa: E402
from numba_sim import to_host as _h  # noqa: E402
from numba_sim import GPU_REASON, ON_GPU, nb, sim_only  # noqa: E402,F401
from numba_sim import raises_like_reference  # noqa: E402
from numba_sim import rng_for as _rng  # noqa: E402

KERNELS = [n for n in K._SIGNATURES if n.startswith("crpl_")]
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=5e-4, atol=1e-5)}


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _inputs(rng, B=4, Kc=3, D=5, S=2, N=8):
    """Tie-free tiny inputs: target/source embeddings, prompts, centroids with one (i, k) unseen."""
    mu = _unit(rng.normal(size=(Kc, D)))
    u = 2.0 * mu[rng.integers(0, Kc, B)] + 0.5 * rng.normal(size=(B, D))
    T = {n: _unit(mu + 0.3 * rng.normal(size=(Kc, D))) for n in ("T_base", "T_S", "T_T")}
    T["T_Si"] = _unit(mu[None] + 0.3 * rng.normal(size=(S, Kc, D)))
    y = np.arange(N) % Kc
    dom = (np.arange(N) // Kc) % S
    zs = _unit(mu[y] + 0.4 * rng.normal(size=(N, D)))
    cen = rng.normal(size=(S, Kc, D))
    cnt = rng.integers(1, 4, size=(S, Kc)).astype(float)
    cnt[S - 1, Kc - 1] = 0.0
    cen[S - 1, Kc - 1] = 0.0
    return dict(u=u, z=_unit(u), zs=zs, y=y, dom=dom, cen=cen, cnt=cnt, **T)


def test_public_functions_have_the_reference_signatures():
    assert set(C.__all__) == set(R.__all__)
    for name in C.__all__:
        assert inspect.signature(getattr(C, name)) == inspect.signature(getattr(R, name)), name


def test_crpl_kernels_are_listed_and_none_is_float64_by_design():
    built = {n for n in K.functions("float64") if n.startswith("crpl_")}
    assert built == set(KERNELS) and len(KERNELS) >= 15
    ids = {name for name, _, _ in K.specs()}
    assert all(f"{n}[{dt}]" in ids for n in KERNELS for dt in K.DTYPES)
    assert not {n for n in K.FP64_BY_DESIGN if n.startswith("crpl_")}


@sim_only
@pytest.mark.parametrize("dt", ["float64", "float32"])
def test_sim_probs_and_centroids_match_the_reference(nb, dt):
    rng = _rng(1)
    x = _inputs(rng)
    d = lambda a: _d(nb, a, dt)  # noqa: E731
    tol = TOL[dt]
    # the step where the last centroid becomes available: counts[S-1, K-1] goes 0 -> 1
    feats = rng.normal(size=(3, 5))
    lab, dom = np.array([2, 0, 2]), np.array([1, 0, 0])
    gm, gc = C.update_class_centroids(d(x["cen"]), d(x["cnt"]), d(feats), d(lab.astype(np.int32)),
                                      d(dom))
    wm, wc = R.update_class_centroids(x["cen"], x["cnt"], feats, lab, dom)
    np.testing.assert_allclose(_h(nb, gm), wm, **tol)
    np.testing.assert_array_equal(_h(nb, gc), wc)
    assert (wc > 0).all() and not (x["cnt"] > 0).all()
    for cen, cnt in ((x["cen"], x["cnt"]), (wm, wc)):
        for variant in ("code", "paper"):
            got = C.crpl_reference_probs(d(x["z"]), d(x["u"]), d(x["T_base"]), d(x["T_S"]),
                                         d(x["T_Si"]), d(cen), d(cnt), gamma=0.7,
                                         variant=variant, scale=20.0)
            want = R.crpl_reference_probs(x["z"], x["u"], x["T_base"], x["T_S"], x["T_Si"],
                                          cen, cnt, gamma=0.7, variant=variant, scale=20.0)
            np.testing.assert_allclose(_h(nb, got), want, **tol)
            assert str(got.dtype) == dt
    got = C.crpl_reference_probs(d(x["z"]), d(x["u"]), d(x["T_base"]), d(x["T_S"]))
    np.testing.assert_allclose(_h(nb, got), R.crpl_reference_probs(
        x["z"], x["u"], x["T_base"], x["T_S"]), **tol)


@sim_only
@pytest.mark.parametrize("dt", ["float64", "float32"])
def test_sim_losses_match_the_reference(nb, dt):
    rng = _rng(2)
    x = _inputs(rng)
    d = lambda a: _d(nb, a, dt)  # noqa: E731
    tol = TOL[dt]
    logits = rng.normal(size=(4, 3)) * 3
    p = rng.random((4, 3))                          # rows NOT on the simplex: rowsum(p) term
    np.testing.assert_allclose(float(_h(nb, C.soft_cross_entropy(d(logits), d(p)))),
                               R.soft_cross_entropy(logits, p), **tol)
    np.testing.assert_allclose(_h(nb, C.soft_cross_entropy_grad(d(logits), d(p))),
                               R.soft_cross_entropy_grad(logits, p), **tol)
    L, P, dT, dZ = C.ot_cluster_loss(d(x["z"]), d(x["T_T"]))
    for g, w in zip((L, P, dT, dZ), R.ot_cluster_loss(x["z"], x["T_T"])):
        np.testing.assert_allclose(_h(nb, g), w, **tol)
    ps = R.crpl_reference_probs(x["z"], x["u"], x["T_base"], x["T_S"])
    pl = R.clip_pseudo_labels(x["z"], x["T_base"], threshold=0.6, scale=1.0)
    got_pl = C.clip_pseudo_labels(d(x["z"]), d(x["T_base"]), threshold=0.6, scale=1.0)
    np.testing.assert_array_equal(nb.to_numpy(got_pl), pl)
    assert str(got_pl.dtype) == "int64" and (pl == -1).any() and (pl >= 0).any()
    for pv in (ps, pl):
        for use_ot in (True, False):
            lt, hard = C.crpl_target_loss(d(x["z"]), d(x["T_T"]), d(pv), use_ot=use_ot)
            wl, wh = R.crpl_target_loss(x["z"], x["T_T"], pv, use_ot=use_ot)
            np.testing.assert_allclose(float(_h(nb, lt)), wl, **tol)
            np.testing.assert_array_equal(nb.to_numpy(hard), wh)
            for T_Si in (x["T_Si"], None):
                args = (x["zs"], x["y"], x["dom"], x["z"], x["T_S"], T_Si, x["T_T"], pv)
                got = C.crpl_loss_grad(*(None if a is None else d(a) for a in args),
                                       scale=30.0, lam_W=0.7, use_ot=use_ot)
                want = R.crpl_loss_grad(*args, scale=30.0, lam_W=0.7, use_ot=use_ot)
                np.testing.assert_allclose(float(_h(nb, got[0])), want[0], **tol)
                for k in want[1]:
                    np.testing.assert_allclose(float(_h(nb, got[1][k])), want[1][k], **tol)
                assert set(got[2]) == set(want[2])
                for k in want[2]:
                    np.testing.assert_allclose(_h(nb, got[2][k]), want[2][k], **tol)
    L, parts = C.crpl_loss(d(x["zs"]), d(x["y"]), d(x["dom"]), d(x["z"]), d(x["T_S"]),
                           d(x["T_Si"]), d(x["T_T"]), d(ps))
    wL, wparts = R.crpl_loss(x["zs"], x["y"], x["dom"], x["z"], x["T_S"], x["T_Si"], x["T_T"], ps)
    np.testing.assert_allclose(float(_h(nb, L)), wL, **tol)
    # accuracy: list, stack and single matrix; code undercount vs exact
    zz = _unit(rng.normal(size=(31, 5)))
    labels = rng.integers(0, 3, 31)
    Ts = [x["T_T"], x["T_S"], x["T_base"]]
    for variant in ("code", "exact"):
        for Tl, Td in ((Ts, [d(t) for t in Ts]), (np.stack(Ts), d(np.stack(Ts))),
                       (x["T_T"], d(x["T_T"]))):
            got = C.target_accuracy(d(zz), Td, d(labels), batch_size=30, variant=variant)
            np.testing.assert_allclose(float(_h(nb, got)),
                                       R.target_accuracy(zz, Tl, labels, 30, variant), **tol)


@sim_only
def test_sim_bad_input_raises_like_the_reference(nb):
    rng = _rng(3)
    x = _inputs(rng)
    d = lambda a: _d(nb, a)  # noqa: E731
    bad_z = x["z"].copy()
    bad_z[1] *= 1.3
    raises_like_reference(lambda: R.ot_cluster_loss(bad_z, x["T_T"]),
                          lambda: C.ot_cluster_loss(d(bad_z), d(x["T_T"])))
    raises_like_reference(lambda: R.ot_cluster_loss(x["z"][:0], x["T_T"]),
                          lambda: C.ot_cluster_loss(d(x["z"][:0]), d(x["T_T"])))
    raises_like_reference(lambda: R.crpl_target_loss(x["z"], x["T_T"][:2], np.ones((4, 3)) / 3),
                          lambda: C.crpl_target_loss(d(x["z"]), d(x["T_T"][:2]),
                                                     d(np.ones((4, 3)) / 3)))
    dom1 = np.zeros_like(x["dom"])
    args = [x["zs"], x["y"], dom1, x["z"], x["T_S"], x["T_Si"], x["T_T"], np.full(4, -1)]
    raises_like_reference(lambda: R.crpl_loss(*args), lambda: C.crpl_loss(*map(d, args)))
    y_bad = x["y"].copy()
    y_bad[0] = 7
    args[1], args[2] = y_bad, x["dom"]
    raises_like_reference(lambda: R.crpl_loss(*args), lambda: C.crpl_loss(*map(d, args)))
    cnt = x["cnt"].copy()
    cnt[0, 0] = -1
    raises_like_reference(
        lambda: R.update_class_centroids(x["cen"], cnt, x["u"], np.zeros(4, int), np.zeros(4, int)),
        lambda: C.update_class_centroids(d(x["cen"]), d(cnt), d(x["u"]), d(np.zeros(4, int)),
                                         d(np.zeros(4, int))))
    u_bad = x["u"].copy()
    u_bad[0, 0] = np.nan
    raises_like_reference(
        lambda: R.crpl_reference_probs(x["z"], u_bad, x["T_base"], x["T_S"], x["T_Si"], x["cen"],
                                       x["cnt"]),
        lambda: C.crpl_reference_probs(d(x["z"]), d(u_bad), d(x["T_base"]), d(x["T_S"]),
                                       d(x["T_Si"]), d(x["cen"]), d(x["cnt"])))
    raises_like_reference(lambda: R.crpl_reference_probs(x["z"], x["u"], x["T_base"], x["T_S"],
                                                         gamma=-1.0),
                          lambda: C.crpl_reference_probs(d(x["z"]), d(x["u"]), d(x["T_base"]),
                                                         d(x["T_S"]), gamma=-1.0))
    with pytest.raises(TypeError, match="Z is a numpy.ndarray"):
        C.ot_cluster_loss(x["z"], d(x["T_T"]))


@sim_only
def test_sim_one_host_read_per_call_and_launches_conform(nb, monkeypatch):
    rng = _rng(4)
    x = _inputs(rng)
    d = lambda a: _d(nb, a)  # noqa: E731
    dev = {k: d(v) for k, v in x.items()}
    p = C.crpl_reference_probs(dev["z"], dev["u"], dev["T_base"], dev["T_S"], dev["T_Si"],
                               dev["cen"], dev["cnt"])
    pl = d(np.array([0, -1, 2, 1]))
    K.RECORD = []
    try:
        reads = count_host_reads(monkeypatch)
        calls = [
            (lambda: C.crpl_reference_probs(dev["z"], dev["u"], dev["T_base"], dev["T_S"],
                                            dev["T_Si"], dev["cen"], dev["cnt"]), 1),
            (lambda: C.update_class_centroids(dev["cen"], dev["cnt"], dev["u"],
                                              d(np.array([0, 1, 2, 0])), d(np.array([0, 1, 1, 0]))),
             1),
            (lambda: C.soft_cross_entropy_grad(p, p), 1),
            (lambda: C.soft_cross_entropy(p, p), 1),
            (lambda: C.crpl_target_loss(dev["z"], dev["T_T"], p, use_ot=True), 1),
            (lambda: C.clip_pseudo_labels(dev["z"], dev["T_base"]), 1),
            (lambda: C.target_accuracy(dev["z"], [dev["T_T"], dev["T_S"]], d(np.arange(4) % 3)),
             1),
            (lambda: C.crpl_loss(dev["zs"], dev["y"], dev["dom"], dev["z"], dev["T_S"],
                                 dev["T_Si"], dev["T_T"], pl, use_ot=False), 1),
            (lambda: C.ot_cluster_loss(dev["z"], dev["T_T"]), 2),
            (lambda: C.crpl_loss_grad(dev["zs"], dev["y"], dev["dom"], dev["z"], dev["T_S"],
                                      dev["T_Si"], dev["T_T"], p), 2),
        ]
        for call, n in calls:
            reads.clear()
            call()
            assert len(reads) == n, (reads, n)
            if n == 2:
                assert reads[1] == (4, 3)            # the OT host solve reads C (B, K) only
        assert_launches_conform(K.RECORD)
        ran = {name for name, _, _ in K.RECORD if name.startswith("crpl_")}
        assert ran == set(KERNELS), set(KERNELS) - ran
    finally:
        K.RECORD = None


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
@pytest.mark.parametrize("dt", ["float64", "float32"])
def test_gpu_paper_sizes_match_the_reference(dt):
    import backends

    bk = backends.get("numba_cuda")
    rng = _rng(5)
    x = _inputs(rng, B=30, Kc=345, D=1024, S=3, N=30 * 3)
    d = lambda a: _d(bk, a, dt)  # noqa: E731
    tol = TOL[dt]
    got = C.crpl_reference_probs(d(x["z"]), d(x["u"]), d(x["T_base"]), d(x["T_S"]), d(x["T_Si"]),
                                 d(x["cen"]), d(x["cnt"] + 1))
    want = R.crpl_reference_probs(x["z"], x["u"], x["T_base"], x["T_S"], x["T_Si"], x["cen"],
                                  x["cnt"] + 1)
    np.testing.assert_allclose(_h(bk, got), want, **tol)
    args = (x["zs"], x["y"], x["dom"], x["z"], x["T_S"], x["T_Si"], x["T_T"], want)
    g = C.crpl_loss_grad(*(d(a) for a in args))
    w = R.crpl_loss_grad(*args)
    np.testing.assert_allclose(float(_h(bk, g[0])), w[0], **tol)
    for k in w[2]:
        np.testing.assert_allclose(_h(bk, g[2][k]), w[2][k], **tol)
