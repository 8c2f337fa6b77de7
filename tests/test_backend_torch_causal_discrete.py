"""Torch backend of the discrete-score causal-discovery family (causal_discrete.md sec. 1, 2, 4,
7, 8): ``discrete_score_plugin``, ``gsm_marginal_loss``, ``leaf_statistic``, ``ci_test_batch``,
``stein_hessian_diag``.

Oracles: the float64 NumPy/SciPy reference (:mod:`refimpl._causal_score`,
:mod:`refimpl._causal_graph`) on the registry's tiny/small cases and on hand-made ones (mixed
cards and NaN padding, weights, both tests and df rules, empty strata, |cond| 0..3, dof = 0,
the beyond-int64 grouping fallback); ``scipy.stats.chi2.sf`` for the p-values (including the
region where ``torch.special.gammaincc`` is off by up to 4e-10); direct counting for the
plug-in; the reference's error messages; the documented host reads (counted); CUDA (``gpu``
marker) against the CPU."""

import re

import numpy as np
import pytest

import backends

torch = pytest.importorskip("torch")
if backends.reason("torch") is not None:
    pytest.skip(f"backend torch: {backends.reason('torch')}", allow_module_level=True)

from scipy import stats

from backends.torch import causal_discrete as T
from refimpl import _causal_graph as RG
from refimpl import _causal_score as RS
from refimpl._cases import causal_graph as CG
from refimpl._cases import causal_score as CS

F64, F32 = torch.float64, torch.float32
TOL = {F64: (1e-10, 1e-10), F32: (1e-5, 5e-4)}           # (atol, rtol)
STEIN_TOL = {F64: (1e-8, 1e-8), F32: (1e-2, 1e-2)}      # the registry's (conditioning: cases)
MIXED = [2, 3, 4, 3, 2, 5]


def npy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def conv(v, dtype=F64):
    """NumPy arrays -> CPU tensors (float ones cast to ``dtype``, integers kept)."""
    if isinstance(v, np.ndarray):
        t = torch.as_tensor(v)
        return t.to(dtype) if t.is_floating_point() else t
    return v


def assert_close(got, want, atol, rtol):
    got, want = np.asarray(npy(got), dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


def anm(seed, n, cards, degree=2.0):
    rng = np.random.default_rng(seed)
    A = RS.random_dag(len(cards), degree, rng)
    X, _ = RS.sample_discrete_anm(A, np.asarray(cards), n, rng)
    return X


def chain(seed, n, cards, noise=0.3):
    return CG.chain_codes(np.random.default_rng(seed), n, cards, noise)


# --------------------------------------------------------------------------- registry cases


def _cases(builder, scales=("tiny", "small")):
    out = []
    for scale in scales:
        for c in builder(np.random.default_rng(0), scale):
            out.append((f"{scale}-{c.label}", c))
    return out


OPS = {
    "discrete_score_plugin": (RS.discrete_score_plugin, CS.cases_discrete_score_plugin, False),
    "gsm_marginal_loss": (RS.gsm_marginal_loss, CS.cases_gsm_marginal_loss, True),
    "leaf_statistic": (RS.leaf_statistic, CS.cases_leaf_statistic, True),
    "ci_test_batch": (RG.ci_test_batch, CG.cases_ci_test_batch, False),
    "stein_hessian_diag": (RG.stein_hessian_diag, CG.cases_stein_hessian_diag, True),
}
PARAMS = [pytest.param(op, dt, c, id=f"{op}-{str(dt)[6:]}-{cid}")
          for op, (_, builder, fl) in OPS.items()
          for dt in ((F64, F32) if fl else (F64,))
          for cid, c in _cases(builder)]


@pytest.mark.parametrize("op,dtype,case", PARAMS)
def test_registry_cases_match_reference(op, dtype, case):
    ref, _, floating = OPS[op]
    if case.dtypes and str(dtype)[6:] not in case.dtypes:
        pytest.skip(f"case runs in {case.dtypes} only")
    kw = case.kwargs
    # the reference sees the inputs the backend sees (float32-rounded for float32 runs)
    ref_kw = {k: (v.astype(np.float32) if dtype == F32 and isinstance(v, np.ndarray)
                  and v.dtype.kind == "f" else v) for k, v in kw.items()}
    want = ref(**ref_kw)
    got = getattr(T, op)(**{k: conv(v, dtype) for k, v in kw.items()})
    gots, wants = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    tol = STEIN_TOL[dtype] if op == "stein_hessian_diag" else TOL[dtype]
    for g, w in zip(gots, wants):
        want_dtype = (torch.int64 if np.asarray(w).dtype.kind == "i"
                      else (dtype if floating else F64))
        assert g.dtype == want_dtype
        if g.dtype == torch.int64:
            np.testing.assert_array_equal(npy(g), w)
        else:
            assert_close(g, w, *tol)


# --------------------------------------------------------------------------- plug-in


def _plugin_by_counting(X, cards, alpha):
    """S[r, i, y] by direct counting over all rows (O(n^2 d)), independent of the grouping."""
    n, d = X.shape
    S = np.full((n, d, max(cards)), np.nan)
    for r in range(n):
        for i in range(d):
            same = np.all(np.delete(X, i, 1) == np.delete(X[r], i), axis=1)
            for y in range(cards[i]):
                S[r, i, y] = (same.sum() + alpha * cards[i]) / ((same & (X[:, i] == y)).sum() + alpha)
    return S


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.int16])
def test_plugin_direct_counting_mixed_cards(dtype):
    X = anm(1, 120, MIXED)
    S = T.discrete_score_plugin(torch.as_tensor(X).to(dtype), MIXED, alpha=0.7)
    assert S.dtype == F64 and S.shape == (120, 6, 5)
    assert_close(S, _plugin_by_counting(X, MIXED, 0.7), 1e-12, 1e-12)


def test_plugin_beyond_int64_codes_fallback():
    """prod K = 2^40 * 3^20 > 2^62: the prefix/suffix dense-rank keys (reference: np.unique
    over rows) give the same groups."""
    cards = [2] * 40 + [3] * 20
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, (30, 60))
    X = np.vstack([base, base[:20], base[:5]])          # repeated patterns: groups of size > 1
    X[:, 40:] %= 3
    X[25:, 3] = 1 - X[25:, 3]                           # differ in one column only
    for kind in ("marginal", "concrete"):
        got = T.discrete_score_plugin(torch.as_tensor(X), cards, 1.0, kind)
        assert_close(got, RS.discrete_score_plugin(X, cards, 1.0, kind), 1e-12, 1e-12)


def test_plugin_cards_tensor_or_list_and_identity():
    """cards as a list or an int tensor; E over the rows of the observed-category score of a
    pattern with many rows is the smoothed count identity sum_y (N + a) / (N(x_-i) + a K) = 1."""
    X = anm(3, 500, [3, 3, 3, 3])
    a = T.discrete_score_plugin(torch.as_tensor(X), [3, 3, 3, 3])
    b = T.discrete_score_plugin(torch.as_tensor(X), torch.tensor([3, 3, 3, 3], dtype=torch.int32))
    assert torch.equal(a, b)
    assert_close((1.0 / a).sum(-1), np.ones((500, 4)), 1e-12, 1e-12)   # p_hat sums to one


# --------------------------------------------------------------------------- loss / leaf


def _score_case(seed, n=300, cards=MIXED, alpha=0.5):
    X = anm(seed, n, cards)
    return X, RS.discrete_score_plugin(X, cards, alpha)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("criterion", ["invariance_sum", "invariance_entropy", "var_score"])
@pytest.mark.parametrize("weighted", [False, True])
def test_leaf_statistic_padding_and_weights(dtype, criterion, weighted):
    X, S = _score_case(4)
    S_garbage = S.copy()
    S_garbage[np.isnan(S)] = 1e30                        # padding is never read, NaN or not
    w = np.random.default_rng(5).uniform(0.0, 2.0, X.shape[0]) if weighted else None
    want = RS.leaf_statistic(S.astype(np.float32) if dtype == F32 else S, X, MIXED, criterion,
                             None if w is None else w.astype(S.dtype if dtype == F64 else np.float32))
    got = T.leaf_statistic(torch.as_tensor(S_garbage).to(dtype), torch.as_tensor(X), MIXED,
                           criterion, None if w is None else torch.as_tensor(w).to(dtype))
    assert got.dtype == dtype and got.shape == (6,)
    assert_close(got, want, *TOL[dtype])


def test_leaf_statistic_weights_equal_repeated_rows():
    """Integer weights = repeating rows (independent of the reference)."""
    X, S = _score_case(6, n=80)
    reps = np.random.default_rng(7).integers(1, 4, 80)
    rep = np.repeat(np.arange(80), reps)
    a = T.leaf_statistic(torch.as_tensor(S), torch.as_tensor(X), MIXED,
                         weights=torch.as_tensor(reps.astype(np.float64)))
    b = T.leaf_statistic(torch.as_tensor(S[rep]), torch.as_tensor(X[rep]), MIXED)
    assert_close(a, npy(b), 1e-12, 1e-12)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_gsm_loss_padding_and_minimiser(dtype):
    X, S = _score_case(8)
    S_garbage = S.copy()
    S_garbage[np.isnan(S)] = -7.0
    J = T.gsm_marginal_loss(torch.as_tensor(S_garbage).to(dtype), torch.as_tensor(X), MIXED)
    assert J.dtype == dtype and J.shape == ()
    ref_S = S.astype(np.float32) if dtype == F32 else S
    assert_close(J, RS.gsm_marginal_loss(ref_S, X, MIXED), *TOL[dtype])
    # the empirical score 1 / p_emp(y | x_-i) minimises J over per-pattern tables (sec. 1) when
    # every (y, x_-i) cell is observed: perturbations per pattern only increase J
    c3 = [2, 3, 2]
    X3 = chain(9, 3000, c3)
    S0 = RS.discrete_score_plugin(X3, c3, 1e-12)
    assert np.nanmax(S0) < 1e3                          # every cell observed
    keys = X3 @ np.array([6, 2, 1])
    J0 = float(T.gsm_marginal_loss(torch.as_tensor(S0), torch.as_tensor(X3), c3))
    rng = np.random.default_rng(9)
    for _ in range(5):
        f = np.stack([rng.uniform(0.9, 1.1, (12, 3))[keys - st * X3[:, i]]   # per (x_-i, y)
                      for i, st in enumerate((6, 2, 1))], axis=1)
        J1 = T.gsm_marginal_loss(torch.as_tensor(S0 * f), torch.as_tensor(X3), c3)
        assert float(J1) > J0


# --------------------------------------------------------------------------- CI tests


CI_HAND = [
    # (label, X builder, cards, i, candidates, cond)
    ("uncond_mixed", lambda: anm(10, 400, MIXED), MIXED, 0, [1, 2, 3, 4, 5], ()),
    ("cond1", lambda: chain(11, 400, MIXED), MIXED, 2, [0, 4, 5], (1,)),
    ("cond2", lambda: chain(12, 400, MIXED), MIXED, 5, [0, 1, 2], (3, 4)),
    ("cond3_sparse", lambda: chain(13, 60, MIXED), MIXED, 0, [4, 5], (1, 2, 3)),   # empty strata
    ("cond3_dof0", lambda: chain(14, 12, MIXED), MIXED, 1, [0], (2, 3, 5)),
]


@pytest.mark.parametrize("test", ["g2", "chi2"])
@pytest.mark.parametrize("df", ["adjusted", "full"])
@pytest.mark.parametrize("label,build,cards,i,cand,cond", CI_HAND, ids=[c[0] for c in CI_HAND])
def test_ci_hand_cases(test, df, label, build, cards, i, cand, cond):
    X = build()
    want = RG.ci_test_batch(X, cards, i, np.array(cand), cond, test, df)
    for cand_arg, cond_arg in ((cand, cond), (torch.tensor(cand), torch.tensor(cond,
                                                                          dtype=torch.int64))):
        stat, dof, p = T.ci_test_batch(torch.as_tensor(X), torch.tensor(cards), i, cand_arg,
                                       cond_arg, test, df)
        assert stat.dtype == F64 and dof.dtype == torch.int64 and p.dtype == F64
        assert_close(stat, want[0], 1e-10, 1e-10)
        np.testing.assert_array_equal(npy(dof), want[1])
        assert_close(p, want[2], 1e-10, 1e-10)
    # each candidate alone: the scalar reference test (loop over strata)
    for t, c in enumerate(cand):
        s1, d1, p1 = RG.ci_test(X, cards, i, c, cond, test, df)
        assert abs(float(stat[t]) - s1) <= 1e-10 * max(1.0, abs(s1)) and int(dof[t]) == d1
        assert abs(float(p[t]) - p1) <= 1e-10


def test_ci_dof_zero_gives_p_one():
    X = np.zeros((20, 3), dtype=np.int64)
    X[:, 1] = np.arange(20) % 2                             # X_0 constant: nothing to test
    X[:, 2] = np.arange(20) % 3
    stat, dof, p = T.ci_test_batch(torch.as_tensor(X), [2, 2, 3], 0, [1, 2])
    assert npy(dof).tolist() == [0, 0] and npy(p).tolist() == [1.0, 1.0]
    assert np.all(np.abs(npy(stat)) < 1e-12)


def test_ci_strata_beyond_int64_fallback():
    """prod K_Z >= 2^62 (cond of 63 binary columns): dense-rank stratum codes."""
    rng = np.random.default_rng(15)
    X = rng.integers(0, 2, (200, 66))
    X[100:, 2:] = X[:100, 2:]                               # repeated strata
    cards = [2] * 66
    cond = tuple(range(2, 65))
    want = RG.ci_test_batch(X, cards, 0, np.array([1, 65]), cond)
    got = T.ci_test_batch(torch.as_tensor(X), cards, 0, [1, 65], cond)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-10, 1e-10)


def test_ci_chunked_sweep(monkeypatch):
    X = chain(16, 500, [3] * 8)
    full = T.ci_test_batch(torch.as_tensor(X), [3] * 8, 0, list(range(3, 8)), (1, 2))
    monkeypatch.setattr(T, "_CHUNK_ELEMS", 700)             # one candidate per chunk
    part = T.ci_test_batch(torch.as_tensor(X), [3] * 8, 0, list(range(3, 8)), (1, 2))
    for a, b in zip(full, part):
        assert torch.equal(a, b)


def test_chi2_sf_matches_scipy_everywhere():
    """Including a ~ x > 20, where torch.special.gammaincc's asymptotic branch is ~4e-10 off
    scipy (hence _gammaincc_central); dof up to 2e5."""
    rng = np.random.default_rng(17)
    dof = np.concatenate([rng.integers(1, 60, 3000), rng.integers(40, 2000, 3000),
                          rng.integers(2000, 200_000, 1000), [0, 1, 2, 41, 42]])
    x = np.concatenate([dof[:7000] + rng.normal(size=7000) * np.sqrt(2 * dof[:7000]) * 4,
                        rng.uniform(0, 100, 5)])
    x = np.maximum(x, 0)
    x[:200] = rng.uniform(0, 5, 200)
    got = npy(T._chi2_sf(torch.as_tensor(x), torch.as_tensor(dof), int(dof.max())))
    want = np.where(dof == 0, 1.0, stats.chi2.sf(x, np.maximum(dof, 1)))
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)
    # negative rounding-level statistics: p = 1 as scipy
    assert npy(T._chi2_sf(torch.tensor([-1e-14], dtype=F64), torch.tensor([3]), 3)).tolist() == [1.0]


# --------------------------------------------------------------------------- SCORE


@pytest.mark.parametrize("dtype", [F64, F32])
def test_stein_gaussian_hessian_and_reference(dtype):
    """True Hessian diagonal of log N(0, diag(sigma^2)) is -1/sigma^2 (median within 20%)."""
    rng = np.random.default_rng(18)
    sig = np.array([0.7, 1.0, 1.5])
    X = rng.normal(size=(600, 3)) * sig
    H = T.stein_hessian_diag(torch.as_tensor(X).to(dtype), 1e-2, 1e-2)
    assert H.dtype == dtype and H.shape == (600, 3)
    med = np.median(npy(H), axis=0)
    np.testing.assert_allclose(med, -1.0 / sig**2, rtol=0.2)
    if dtype == F64:
        assert_close(H, RG.stein_hessian_diag(X, 1e-2, 1e-2), *STEIN_TOL[F64])
        H2 = T.stein_hessian_diag(torch.as_tensor(X), 1e-2, 3e-2)      # separate factorisations
        assert_close(H2, RG.stein_hessian_diag(X, 1e-2, 3e-2), *STEIN_TOL[F64])


def test_stein_median_even_and_odd_pair_counts():
    for n in (4, 5):                                    # 6 and 10 pairs (even counts)
        X = np.random.default_rng(n).normal(size=(n, 2))
        assert_close(T.stein_hessian_diag(torch.as_tensor(X)), RG.stein_hessian_diag(X),
                     1e-9, 1e-9)
    X = np.random.default_rng(3).normal(size=(3, 2))    # 3 pairs (odd)
    assert_close(T.stein_hessian_diag(torch.as_tensor(X), 0.1, 0.1),
                 RG.stein_hessian_diag(X, 0.1, 0.1), 1e-9, 1e-9)


# --------------------------------------------------------------------------- errors


def _ref_message(fn, *args, **kw):
    with pytest.raises(Exception) as e:
        fn(*args, **kw)
    return type(e.value), str(e.value)


def _same_error(ref_call, torch_call):
    typ, msg = _ref_message(*ref_call)
    with pytest.raises(typ, match=re.escape(msg)):
        torch_call[0](*torch_call[1:])


Xg = anm(19, 40, [2, 3, 2])
Sg = RS.discrete_score_plugin(Xg, [2, 3, 2])


def _bad_discrete():
    Xf = Xg.astype(np.float64)
    neg = Xg.copy()
    neg[3, 1] = -1
    big = Xg.copy()
    big[5, 2] = 2
    return [
        ("float X", Xf, [2, 3, 2]), ("bool X", Xg.astype(bool), [2, 3, 2]),
        ("1-D X", Xg[:, 0], [2]), ("cards length", Xg, [2, 3]), ("cards < 2", Xg, [2, 1, 2]),
        ("cards float", Xg, np.array([2.0, 3.0, 2.0])), ("negative", neg, [2, 3, 2]),
        ("too large", big, [2, 3, 2]), ("empty", Xg[:0], [2, 3, 2]),
    ]


@pytest.mark.parametrize("label,X,cards", _bad_discrete(), ids=[b[0] for b in _bad_discrete()])
def test_bad_discrete_data_messages(label, X, cards):
    tc = torch.as_tensor(cards) if isinstance(cards, np.ndarray) else cards
    _same_error((RS.discrete_score_plugin, X, cards), (T.discrete_score_plugin, torch.as_tensor(X), tc))
    _same_error((RG.ci_test_batch, X, cards, 0, [1]), (T.ci_test_batch, torch.as_tensor(X), tc, 0, [1]))


def test_bad_argument_messages():
    tX, tS = torch.as_tensor(Xg), torch.as_tensor(Sg)
    c = [2, 3, 2]
    for a in (0.0, -1.0, "x"):
        _same_error((RS.discrete_score_plugin, Xg, c, a), (T.discrete_score_plugin, tX, c, a))
    _same_error((RS.discrete_score_plugin, Xg, c, 1.0, "bad"),
                (T.discrete_score_plugin, tX, c, 1.0, "bad"))
    _same_error((RS.gsm_marginal_loss, Sg[:, :2], Xg, c), (T.gsm_marginal_loss, tS[:, :2], tX, c))
    _same_error((RS.leaf_statistic, np.nan_to_num(Sg).astype(np.int64), Xg, c),
                (T.leaf_statistic, tS.to(torch.int64), tX, c))
    _same_error((RS.leaf_statistic, Sg, Xg, c, "nope"), (T.leaf_statistic, tS, tX, c, "nope"))
    n = Xg.shape[0]
    for w in (-np.ones(n), np.full(n, np.nan), np.zeros(n), np.ones(n - 1),
              np.ones(n, dtype=np.float32)):
        _same_error((RS.leaf_statistic, Sg, Xg, c, "invariance_sum", w),
                    (T.leaf_statistic, tS, tX, c, "invariance_sum", torch.as_tensor(w)))
    for args in ((0, [0]), (0, [1], (1,)), (0, [1, 1]), (0, [1], (), "g3"), (0, [1], (), "g2", "x"),
                 (3, [1]), (0, [1.5]), (0, [2], (1, 1))):
        _same_error((RG.ci_test_batch, Xg, c, *args), (T.ci_test_batch, tX, c, *args))
    _same_error((RG.ci_test_batch, Xg[:1], c, 0, [1]), (T.ci_test_batch, tX[:1], c, 0, [1]))
    Xc = np.random.default_rng(0).normal(size=(10, 2))
    Xnan = Xc.copy()
    Xnan[2, 1] = np.nan
    for args in ((Xc[:1],), (Xnan,), (Xc, 0.0), (Xc, 1e-3, -1.0), (Xc.astype(np.int64),),
                 (np.ones((10, 2)),)):                     # last: bandwidth 0
        _same_error((RG.stein_hessian_diag, *args),
                    (T.stein_hessian_diag, torch.as_tensor(args[0]), *args[1:]))


def test_full_dof_overflow_message():
    X = np.random.default_rng(1).integers(0, 2, (30, 68))
    X[:, 2:] = X[:, 2:] * 0 + (np.arange(30)[:, None] % 2)
    cards = [2, 2] + [2**3] * 66
    _same_error((RG.ci_test_batch, X, cards, 0, [1], tuple(range(2, 68)), "g2", "full"),
                (T.ci_test_batch, torch.as_tensor(X), cards, 0, [1], tuple(range(2, 68)), "g2",
                 "full"))


def test_numpy_refused():
    tX, tS = torch.as_tensor(Xg), torch.as_tensor(Sg)
    c = [2, 3, 2]
    with pytest.raises(TypeError, match="X is a numpy.ndarray"):
        T.discrete_score_plugin(Xg, c)
    with pytest.raises(TypeError, match="cards is a numpy.ndarray"):
        T.discrete_score_plugin(tX, np.array(c))
    with pytest.raises(TypeError, match="S_all is a numpy.ndarray"):
        T.gsm_marginal_loss(Sg, tX, c)
    with pytest.raises(TypeError, match="weights is a numpy.ndarray"):
        T.leaf_statistic(tS, tX, c, weights=np.ones(40))
    with pytest.raises(TypeError, match="candidates is a numpy.ndarray"):
        T.ci_test_batch(tX, c, 0, np.array([1, 2]))
    with pytest.raises(TypeError, match="X is a numpy.ndarray"):
        T.stein_hessian_diag(np.ones((5, 2)))


# --------------------------------------------------------------------------- host reads


def test_one_host_read_per_discrete_call(monkeypatch):
    """The module docstring's read budget: one .cpu() per discrete op call (X ranges, tensor
    cards, tensor candidates and the weight statistics together), no .item()/.tolist()."""
    calls = []
    real_cpu = torch.Tensor.cpu

    def counting(self, *a, **k):
        calls.append(tuple(self.shape))
        return real_cpu(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", counting)
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("unexpected .item()"))
    tX, tS, tc = torch.as_tensor(Xg), torch.as_tensor(Sg), torch.tensor([2, 3, 2])
    T.discrete_score_plugin(tX, tc)
    T.leaf_statistic(tS, tX, tc, weights=torch.ones(40, dtype=F64))
    T.gsm_marginal_loss(tS, tX, [2, 3, 2])
    T.ci_test_batch(tX, tc, 0, torch.tensor([1]), torch.tensor([2]), "g2", "adjusted")
    assert calls == [(9,), (12,), (6,), (11,)]


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    dev = torch.device("cuda")
    X = anm(20, 3000, MIXED)
    S_cpu = T.discrete_score_plugin(torch.as_tensor(X), MIXED)
    S_gpu = T.discrete_score_plugin(torch.as_tensor(X).to(dev), torch.tensor(MIXED, device=dev))
    assert S_gpu.device.type == "cuda"
    assert_close(S_gpu, npy(S_cpu), 1e-12, 1e-12)
    for dtype in (F32, F64):
        Sd, Xd = S_cpu.to(dtype), torch.as_tensor(X)
        w = torch.rand(3000, dtype=dtype)
        for crit in ("invariance_sum", "invariance_entropy", "var_score"):
            a = T.leaf_statistic(Sd.to(dev), Xd.to(dev), MIXED, crit, w.to(dev))
            assert a.device.type == "cuda" and a.dtype == dtype
            assert_close(a, npy(T.leaf_statistic(Sd, Xd, MIXED, crit, w)), *TOL[dtype])
        J = T.gsm_marginal_loss(Sd.to(dev), Xd.to(dev), MIXED)
        assert_close(J, npy(T.gsm_marginal_loss(Sd, Xd, MIXED)), *TOL[dtype])
        Xs = torch.as_tensor(CG.anm_continuous(np.random.default_rng(21), 400, 5)).to(dtype)
        H = T.stein_hessian_diag(Xs.to(dev), 1e-1, 1e-1)
        assert H.device.type == "cuda" and H.dtype == dtype
        assert_close(H, npy(T.stein_hessian_diag(Xs, 1e-1, 1e-1)), *STEIN_TOL[dtype])
    for test in ("g2", "chi2"):
        for df in ("adjusted", "full"):
            g = T.ci_test_batch(torch.as_tensor(X).to(dev), MIXED, 0, [1, 2, 3], (4, 5), test, df)
            c = T.ci_test_batch(torch.as_tensor(X), MIXED, 0, [1, 2, 3], (4, 5), test, df)
            for a, b in zip(g, c):
                assert a.device.type == "cuda"
                assert_close(a, npy(b), 1e-10, 1e-10)
