"""Numba-CUDA discrete-score causal discovery (``backends/numba_cuda/causal_discrete.py``).

(a) CPU, always: the public functions have the reference's signatures; the ``cd_*`` kernels are
    in the backend's one kernel table (``backends/numba_cuda/_kernels.py``), so the PTX compile
    for cc 9.0 and the float32-does-no-float64 checks of ``tests/test_backend_numba.py`` cover
    them.
(b) simulator (``NUMBA_ENABLE_CUDASIM=1``, tiny sizes; the registry's tiny cases run in
    ``tests/test_crosscheck.py``): the plug-in score on mixed cards, other integer dtypes, strided X, d = 1
    and with the column groups of the lexicographic sort forced small; the device radix sort
    against ``numpy`` (stable argsort, duplicates); the incomplete gamma against
    ``scipy.special.gammaincc`` to 1e-12; the Cholesky and the solves against ``numpy.linalg`` at
    n = 12 (and the failure flag); CI tests with sparse strata, both dof rules and chunked
    candidates; grid-stride loops with 2 threads and 1 block; bad input raises the reference's
    errors; the documented host reads; every launch matches a compiled signature and every
    listed ``cd_*`` kernel runs.
(c) ``gpu`` marker, real device: plug-in score, CI batch and Stein diagonal at moderate sizes
    against the reference.
"""

import inspect

import numpy as np
import pytest
from scipy import special

from refimpl import _causal_graph as RG
from refimpl import _causal_score as RS
from refimpl import _ops

pytest.importorskip("numba")
from backends.numba_cuda import _kernels as K  # noqa: E402
from backends.numba_cuda import causal_discrete as C  # noqa: E402

from numba_sim import assert_launches_conform, count_host_reads  # noqa: E402
from numba_sim import GPU_REASON, ON_GPU, nb, sim_only  # noqa: E402,F401
from numba_sim import raises_like_reference  # noqa: E402
from numba_sim import rng_for as _rng  # noqa: E402
from numba_sim import to_host as _h  # noqa: E402

PUBLIC = ("discrete_score_plugin", "gsm_marginal_loss", "leaf_statistic", "ci_test_batch",
          "stein_hessian_diag")
REF = {"discrete_score_plugin": RS, "gsm_marginal_loss": RS, "leaf_statistic": RS,
       "ci_test_batch": RG, "stein_hessian_diag": RG}
OPS = _ops.select(families=["causal_discrete"])
KERNELS = {name for name in K._SIGNATURES if name.startswith("cd_")}
TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=5e-4, atol=1e-5)}


def _dev(bk, a, dtype=None):
    a = np.asarray(a)
    return bk.asarray(a.astype(dtype) if dtype is not None and a.dtype.kind == "f" else a)


def _close(got, want, dtype, **kw):
    tol = dict(TOL[dtype])
    tol.update(kw)
    np.testing.assert_allclose(got, want, **tol)


def _same_nan_close(got, want, dtype="float64"):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    _close(np.nan_to_num(got), np.nan_to_num(want), dtype)


def _codes(rng, n, cards, dtype=np.int64):
    return np.stack([rng.integers(0, k, n) for k in cards], axis=1).astype(dtype)


# --------------------------------------------------------------------------- (a) CPU


def test_public_functions_have_the_reference_signatures():
    import backends.numba_cuda as bk

    for name in PUBLIC:
        assert name in bk.__all__, name
        # parameters, order, defaults (the reference annotates some return types)
        assert (inspect.signature(getattr(bk, name)).parameters
                == inspect.signature(getattr(REF[name], name)).parameters), name
    assert {op.name for op in OPS} <= set(PUBLIC)


def test_cd_kernels_live_in_the_shared_kernel_table():
    assert len(KERNELS) >= 30
    for attr in ("_SIGNATURES", "_build", "specs", "signature", "RECORD", "_launch"):
        assert not hasattr(C, attr), attr
    for dtype in K.DTYPES:
        funcs = K.functions(dtype)
        assert all(name in funcs for name in KERNELS)


# --------------------------------------------------------------------------- (b) simulator


@sim_only
def test_sim_plugin_mixed_cards_int_dtypes_strided_and_d1(nb):
    rng = _rng(1)
    cards = [2, 3, 4]
    X = _codes(rng, 40, cards)
    want = RS.discrete_score_plugin(X, cards)
    for dt in (np.int64, np.int32, np.uint8, np.int16):
        _same_nan_close(_h(nb, nb.discrete_score_plugin(nb.asarray(X.astype(dt)), cards)), want)
    wide = np.repeat(X, 2, axis=1)                                  # columns 0, 2, 4 = X
    got = nb.discrete_score_plugin(nb.asarray(wide)[:, ::2], np.array(cards))
    _same_nan_close(_h(nb, got), want)
    _same_nan_close(_h(nb, nb.discrete_score_plugin(nb.asarray(X), cards, 0.25, "concrete")),
                    RS.discrete_score_plugin(X, cards, 0.25, "concrete"))
    x1 = X[:, 1:2]
    _same_nan_close(_h(nb, nb.discrete_score_plugin(nb.asarray(x1), [3])),
                    RS.discrete_score_plugin(x1, [3]))


@sim_only
def test_sim_plugin_with_several_column_groups(nb, monkeypatch):
    """A cardinality product past the code limit: the lexicographic sort runs group by group
    (LSD over groups) and still groups the rows exactly."""
    monkeypatch.setattr(C, "CODE_LIMIT", 9)
    rng = _rng(2)
    cards = [3, 2, 3, 2, 3]
    X = _codes(rng, 48, cards)
    assert len(C._groups(range(5), np.array(cards))) >= 3
    _same_nan_close(_h(nb, nb.discrete_score_plugin(nb.asarray(X), cards)),
                    RS.discrete_score_plugin(X, cards))
    got = nb.ci_test_batch(nb.asarray(X), cards, 0, [1], (2, 3, 4))
    for g, w in zip(got, RG.ci_test_batch(X, cards, 0, [1], (2, 3, 4))):
        np.testing.assert_allclose(_h(nb, g), w, rtol=1e-10, atol=1e-10)


@sim_only
def test_sim_radix_sort_is_numpys_stable_sort(nb):
    rng = _rng(3)
    for n, hi in ((100, 37), (75, 1 << 20), (1, 5), (33, 1)):
        keys = rng.integers(0, hi, n).astype(np.int64)
        keys[: n // 3] = keys[-(n // 3):] if n > 3 else keys[: n // 3]   # duplicates
        k, p = C.radix_sort(nb.asarray(keys), C._iota(n), int(hi - 1).bit_length())
        np.testing.assert_array_equal(nb.to_numpy(k), np.sort(keys))
        np.testing.assert_array_equal(nb.to_numpy(p), np.argsort(keys, kind="stable"))
    big = rng.integers(0, 1 << 62, 50).astype(np.int64)               # 8 passes
    k, p = C.radix_sort(nb.asarray(big), C._iota(50), 62)
    np.testing.assert_array_equal(nb.to_numpy(k), np.sort(big))
    np.testing.assert_array_equal(nb.to_numpy(p), np.argsort(big, kind="stable"))


@sim_only
def test_sim_incomplete_gamma_matches_scipy(nb):
    a = np.array([0.5, 1.0, 1.5, 2.0, 4.5, 10.0, 18.0, 40.0, 0.5, 3.0, 12.5, 60.0])
    xs = np.array([0.0, 1e-3, 0.3, 1.0, 2.5, 5.0, 9.0, 20.0, 45.0, 80.0])
    A, Xg = (v.ravel() for v in np.meshgrid(a, xs))
    got = nb.to_numpy(C.gammaincc(nb.asarray(A), nb.asarray(Xg)))
    want = special.gammaincc(A, Xg)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    assert np.all(got[Xg == 0] == 1.0)


@sim_only
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sim_cholesky_and_solves_match_numpy(nb, dtype):
    rng = _rng(4)
    n, d = 12, 3
    M = rng.normal(size=(n, n))
    A = M @ M.T + n * np.eye(n)
    B = rng.normal(size=(n, d))
    Ad, Bd = _dev(nb, A, dtype), _dev(nb, B, dtype)
    status = nb.asarray(np.zeros(3, dtype=dtype))
    C._cholesky(Ad, status, 1, dtype)
    C._solve(Ad, Bd, dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    L = np.tril(nb.to_numpy(Ad).astype(np.float64))
    np.testing.assert_allclose(L, np.linalg.cholesky(A), **tol)
    np.testing.assert_allclose(nb.to_numpy(Bd), np.linalg.solve(A, B), **tol)
    assert list(nb.to_numpy(status)) == [0, 0, 0]
    bad = A.copy()
    bad[5, 5] = -1.0                                               # not positive definite
    C._cholesky(_dev(nb, bad, dtype), status, 2, dtype)
    assert list(nb.to_numpy(status)) == [0, 0, 1]


@sim_only
def test_sim_ci_sparse_strata_both_rules_and_chunks(nb, monkeypatch):
    monkeypatch.setattr(C, "CI_CELLS", 40)                           # one candidate per chunk
    rng = _rng(5)
    cards = [2, 3, 4, 5, 3]
    X = _codes(rng, 30, cards)                                     # many empty strata
    for test in ("g2", "chi2"):
        for df in ("adjusted", "full"):
            got = nb.ci_test_batch(nb.asarray(X), nb.asarray(np.array(cards)), 0,
                                   nb.asarray(np.array([1, 4])), (2, 3), test, df)
            want = RG.ci_test_batch(X, cards, 0, np.array([1, 4]), (2, 3), test, df)
            assert str(got[1].dtype) == "int64"
            np.testing.assert_array_equal(nb.to_numpy(got[1]), want[1])
            for g, w in zip(got[::2], want[::2]):
                np.testing.assert_allclose(_h(nb, g), w, rtol=1e-10, atol=1e-12)
    Xc = X.copy()
    Xc[:, 1] = Xc[:, 0]                                            # dependence: p ~ 0
    Xc[:, 4] = 0                                                   # constant: dof 0, p = 1
    got = [nb.to_numpy(g) for g in nb.ci_test_batch(nb.asarray(Xc), cards, 0, [1, 4])]
    want = RG.ci_test_batch(Xc, cards, 0, [1, 4])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-300)
    assert got[1][1] == 0 and got[2][1] == 1.0
    empty = nb.ci_test_batch(nb.asarray(X), cards, 0, np.zeros(0, dtype=np.int64))
    assert [tuple(e.shape) for e in empty] == [(0,)] * 3


@sim_only
def test_sim_grid_stride_with_few_threads(nb, monkeypatch):
    """One block of 2 threads for the grid-stride kernels: every thread loops."""
    monkeypatch.setattr(C, "MAX_BLOCKS", 1)
    monkeypatch.setattr(C, "RED_BLOCKS", 1)
    monkeypatch.setattr(K, "SIM_MAX_THREADS", 2)
    rng = _rng(6)
    cards = [2, 3, 2]
    X = _codes(rng, 37, cards)
    S = RS.discrete_score_plugin(X, cards)
    _same_nan_close(_h(nb, nb.discrete_score_plugin(nb.asarray(X), cards)), S)
    Sd = nb.asarray(S)
    _close(_h(nb, nb.gsm_marginal_loss(Sd, nb.asarray(X), cards)),
           RS.gsm_marginal_loss(S, X, cards), "float64")
    w = rng.random(37)
    _close(_h(nb, nb.leaf_statistic(Sd, nb.asarray(X), cards, "invariance_entropy",
                                    nb.asarray(w))),
           RS.leaf_statistic(S, X, cards, "invariance_entropy", w), "float64")
    for g, w_ in zip(nb.ci_test_batch(nb.asarray(X), cards, 0, [1], (2,)),
                     RG.ci_test_batch(X, cards, 0, [1], (2,))):
        _close(_h(nb, g), w_, "float64")
    Xf = rng.normal(size=(9, 2))
    np.testing.assert_allclose(_h(nb, nb.stein_hessian_diag(nb.asarray(Xf), 1e-2, 1e-1)),
                               RG.stein_hessian_diag(Xf, 1e-2, 1e-1), rtol=1e-9, atol=1e-9)


@sim_only
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # s = 0 divides by zero in the simulator
def test_sim_bad_input_raises_the_reference_errors(nb):
    rng = _rng(7)
    cards = [2, 3, 2]
    X = _codes(rng, 12, cards)
    S = RS.discrete_score_plugin(X, cards)
    big = X.copy()
    big[3, 1] = 3
    neg = X.copy()
    neg[0, 2] = -1
    d = lambda a: nb.asarray(np.asarray(a))  # noqa: E731
    for args, kw in (((X.astype(float), cards), {}), ((X.astype(bool), cards), {}),
                     ((X, cards[:2]), {}), ((X, [2, 1, 2]), {}), ((big, cards), {}),
                     ((neg, cards), {}), ((X, cards), {"alpha": 0.0}),
                     ((X, cards), {"kind": "joint"}), ((X[:, 0], cards[:1]), {}),
                     ((X, np.array([2.0, 3.0, 2.0])), {})):
        raises_like_reference(
            lambda: RS.discrete_score_plugin(*args, **kw),
            lambda: nb.discrete_score_plugin(d(args[0]), args[1], **kw))
    # the constant column is fine for the plug-in score (allow_constant=True)
    w = rng.random(12)
    for S_, X_, kw in ((S[:, :2], X, {}), (S, big, {}), (S.astype(np.float32), X,
                                                        {"weights": w}),
                       (S, X, {"criterion": "median"}), (S, X, {"weights": -w}),
                       (S, X, {"weights": w * np.nan}), (S, X, {"weights": w[:5]}),
                       (S, X, {"weights": 0 * w})):
        raises_like_reference(lambda: RS.leaf_statistic(S_, X_, cards, **kw),
                              lambda: nb.leaf_statistic(d(S_), d(X_), cards,
                                                        **{k: d(v) for k, v in kw.items()
                                                           if k == "weights"},
                                                        **{k: v for k, v in kw.items()
                                                           if k != "weights"}))
        if not kw:
            raises_like_reference(lambda: RS.gsm_marginal_loss(S_, X_, cards),
                                  lambda: nb.gsm_marginal_loss(d(S_), d(X_), cards))
    for args in ((0, [0, 1], ()), (0, [1], (1,)), (0, [1, 1], ()), (0, [1], (2,), "lr"),
                 (0, [1], (2,), "g2", "exact"), (5, [1], ()), (0, [1.5], ()), (0, [1], (0,))):
        raises_like_reference(lambda: RG.ci_test_batch(X, cards, *args),
                              lambda: nb.ci_test_batch(d(X), cards, *args))
    raises_like_reference(lambda: RG.ci_test_batch(X[:1], cards, 0, [1]),
                          lambda: nb.ci_test_batch(d(X[:1]), cards, 0, [1]))
    Xf = rng.normal(size=(6, 2))
    nan_x = Xf.copy()
    nan_x[2, 1] = np.nan
    same = np.zeros((6, 2))
    same[0] = 1.0                                                  # median distance 0
    for Xs, eg, eh in ((nan_x, 1e-3, 1e-3), (Xf[:1], 1e-3, 1e-3), (Xf, 0.0, 1e-3),
                       (Xf, 1e-3, -1.0), (Xf.astype(np.int64), 1e-3, 1e-3),
                       (same, 1e-3, 1e-3)):
        raises_like_reference(lambda: RG.stein_hessian_diag(Xs, eg, eh),
                              lambda: nb.stein_hessian_diag(d(Xs), eg, eh))
    # host arrays are refused (no silent host round-trip)
    with pytest.raises(TypeError, match="numba_cuda backend takes CUDA arrays"):
        nb.discrete_score_plugin(X, cards)
    with pytest.raises(TypeError, match="S_all"):
        nb.gsm_marginal_loss(S, d(X), cards)


@sim_only
def test_sim_failed_factorisation_raises_the_reference_error(nb, monkeypatch):
    """A pivot that is not > 0 (the device flag) raises the reference's message."""
    Xf = _rng(8).normal(size=(6, 2))
    orig = C._cholesky

    def broken(A, status, slot, dt):
        K.launch("cd_add_diag", dt, (1,), (1,), 0, A, A, np.dtype(dt).type(-1e9))
        orig(A, status, slot, dt)

    monkeypatch.setattr(C, "_cholesky", broken)
    with pytest.raises(ValueError, match=r"K \+ eta_G I is not numerically positive definite"):
        nb.stein_hessian_diag(nb.asarray(Xf), 1e-3, 1e-3)
    msg = str(RG.V.stein_not_positive_definite("eta_G", 1e-3))
    with pytest.raises(ValueError) as exc:
        nb.stein_hessian_diag(nb.asarray(Xf), 1e-3, 2e-3)
    assert str(exc.value) == msg


@sim_only
def test_sim_host_reads_are_the_documented_ones(nb, monkeypatch):
    rng = _rng(9)
    cards = [2, 3, 2]
    X = _codes(rng, 10, cards)
    S = RS.discrete_score_plugin(X, cards)
    Xd, Sd, wd = nb.asarray(X), nb.asarray(S), nb.asarray(rng.random(10))
    cd, kd = nb.asarray(np.array(cards)), nb.asarray(np.array([1, 2]))
    Xf = nb.asarray(rng.normal(size=(5, 2)))
    reads = count_host_reads(monkeypatch)
    nb.discrete_score_plugin(Xd, cards)
    nb.gsm_marginal_loss(Sd, Xd, cards)
    nb.leaf_statistic(Sd, Xd, cards)
    assert reads == [(2, 3)] * 3                     # colrange: one read of 2 d integers
    reads.clear()
    nb.leaf_statistic(Sd, Xd, cards, weights=wd)
    assert reads == [(2, 3), (3,)]                   # + (finite, min, sum) of the weights
    reads.clear()
    nb.ci_test_batch(Xd, cards, 0, [1, 2])
    assert reads == [(2, 3)]
    reads.clear()
    nb.ci_test_batch(Xd, cd, 0, kd, (), "chi2", "full")
    assert reads == [(3,), (2, 3), (2,)]             # cards, colrange, candidates
    reads.clear()
    nb.stein_hessian_diag(Xf)
    assert reads == [(3,), (3,)]                     # finiteness; (s, factorisation flags)


@sim_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sim_every_launch_matches_a_compiled_signature(nb, monkeypatch, dtype):

    monkeypatch.setattr(K, "RECORD", [])
    rng = _rng(10)
    cards = [2, 3, 2]
    X = _codes(rng, 9, cards)
    for dt in (np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32, np.uint64):
        nb.discrete_score_plugin(nb.asarray(X.astype(dt)), cards, kind="concrete")
    Xd = nb.asarray(X)
    S = _dev(nb, RS.discrete_score_plugin(X, cards), dtype)
    nb.gsm_marginal_loss(S, Xd, cards)
    nb.leaf_statistic(S, Xd, cards, "var_score", _dev(nb, rng.random(9), dtype))
    nb.ci_test_batch(Xd, cards, 0, [1], (2,))
    nb.ci_test_batch(Xd, cards, 0, [1, 2])
    C.gammaincc(nb.asarray(np.array([1.0])), nb.asarray(np.array([2.0])))
    nb.stein_hessian_diag(_dev(nb, rng.normal(size=(5, 2)), dtype), 1e-2, 1e-1)
    ran = [rec for rec in K.RECORD if rec[0].startswith("cd_")]
    assert ran
    assert_launches_conform(ran)
    assert {name for name, _, _ in ran} == KERNELS, "a listed kernel never ran"


# --------------------------------------------------------------------------- (c) real device


@pytest.fixture(scope="module")
def gpu_nb():
    if not ON_GPU:
        pytest.skip(GPU_REASON)
    import backends

    return backends.get("numba_cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason=GPU_REASON)
def test_gpu_plugin_ci_and_stein_against_the_reference(gpu_nb):
    bk = gpu_nb
    rng = _rng(20)
    cards = [3] * 8 + [2, 4]
    X = _codes(rng, 100_000, cards)
    got = bk.to_numpy(bk.discrete_score_plugin(bk.asarray(X), cards))
    _same_nan_close(got, RS.discrete_score_plugin(X, cards))
    S = RS.discrete_score_plugin(X[:20000], cards)
    for dtype in ("float64", "float32"):
        Sd = bk.asarray(S.astype(dtype))
        _close(bk.to_numpy(bk.leaf_statistic(Sd, bk.asarray(X[:20000]), cards)),
               RS.leaf_statistic(S.astype(dtype), X[:20000], cards), dtype)
    got = bk.ci_test_batch(bk.asarray(X), cards, 0, list(range(3, 10)), (1, 2))
    for g, w in zip(got, RG.ci_test_batch(X, cards, 0, list(range(3, 10)), (1, 2))):
        np.testing.assert_allclose(bk.to_numpy(g), w, rtol=1e-10, atol=1e-10)
    Xf = rng.normal(size=(1000, 5))
    np.testing.assert_allclose(bk.to_numpy(bk.stein_hessian_diag(bk.asarray(Xf))),
                               RG.stein_hessian_diag(Xf), rtol=1e-8, atol=1e-8)
